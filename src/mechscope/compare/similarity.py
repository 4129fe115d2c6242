"""Representation similarity between two sets of activations of the same inputs.

Every metric takes X [n, d_x] and Y [n, d_y] (row i of both: the same token, e.g. two models'
residual streams on positions aligned by :mod:`mechscope.compare.align`) and returns a
*similarity* (1: the same representation up to the metric's invariances), except
:func:`procrustes_distance`, a *distance* (0: the same up to rotation and scale).

- :func:`linear_cka` / :func:`rbf_cka`: centred kernel alignment with the **unbiased** HSIC
  estimator (Song et al. 2012): the biased one gives about 0.2 for independent data at small n.
  Invariant to rotation and isotropic scaling.
- :func:`svcca`: each side reduced to the top singular directions holding ``variance`` of its
  variance, then the mean canonical correlation.
- :func:`pwcca`: canonical correlations weighted by how much of X each canonical direction
  accounts for (Morcos et al. 2018).
- :func:`procrustes_distance`: after centring and scaling to unit Frobenius norm, the squared
  distance left by the best rotation, 2 - 2 ||X^T Y||_* (Ding et al. 2021); 0 to 2.
- :func:`mutual_knn`: the mean overlap of each row's ``k`` nearest neighbours in X and in Y.

:func:`compare_representations` adds a permutation null (the rows of Y shuffled) and a
bootstrap interval to any of them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Literal

import torch

from mechscope.errors import ConfigError
from mechscope.validate import check_choice, check_int, check_number

Metric = Literal["linear_cka", "rbf_cka", "svcca", "pwcca", "procrustes", "mutual_knn"]


def _check_pair(x: torch.Tensor, y: torch.Tensor, minimum: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    for name, value in (("X", x), ("Y", y)):
        if not isinstance(value, torch.Tensor) or value.dim() != 2 or not value.is_floating_point():
            raise ConfigError(f"{name} must be a floating tensor [n, d]; got "
                              f"{getattr(value, 'shape', type(value).__name__)}")
    if x.shape[0] != y.shape[0]:
        raise ConfigError(f"X and Y must hold the same inputs row for row; got {x.shape[0]} and {y.shape[0]} rows")
    if x.shape[0] < minimum:
        raise ConfigError(f"at least {minimum} rows are needed; got {x.shape[0]}")
    if not (torch.isfinite(x).all() and torch.isfinite(y).all()):
        raise ConfigError("X and Y must be finite (NaN or inf found)")
    return x.double(), y.double()


def unbiased_hsic(k: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """The unbiased HSIC estimator of two [n, n] kernel matrices ``k`` and ``m`` (their
    diagonals are ignored)."""
    n = k.shape[0]
    k = k - torch.diag(torch.diag(k))
    m = m - torch.diag(torch.diag(m))
    trace = (k * m).sum()
    sums = k.sum() * m.sum() / ((n - 1) * (n - 2))
    cross = 2 * (k.sum(0) @ m.sum(1)) / (n - 2)
    return (trace + sums - cross) / (n * (n - 3))


def _cka(k: torch.Tensor, m: torch.Tensor) -> float:
    denominator = (unbiased_hsic(k, k) * unbiased_hsic(m, m)).clamp_min(0).sqrt()
    if float(denominator) == 0:
        return 0.0
    return float(unbiased_hsic(k, m) / denominator)


def linear_hsic(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """:func:`unbiased_hsic` of the linear kernels X X^T and Y Y^T, from the features in
    O(n d_x d_y) time and O(d_x d_y) memory (no [n, n] Gram matrix: 20k tokens fit). With
    k_i = |x_i|², s = sum_i x_i: the off-diagonal trace is ||X^T Y||² - sum_i k_i m_i, the
    off-diagonal sum |s_x|² - sum_i k_i, and row i's off-diagonal sum x_i . s_x - k_i."""
    n = x.shape[0]
    k, m = x.pow(2).sum(1), y.pow(2).sum(1)
    sum_x, sum_y = x.sum(0), y.sum(0)
    trace = (x.T @ y).pow(2).sum() - (k * m).sum()
    rows_k, rows_m = x @ sum_x - k, y @ sum_y - m
    total_k, total_m = sum_x.pow(2).sum() - k.sum(), sum_y.pow(2).sum() - m.sum()
    return (trace + total_k * total_m / ((n - 1) * (n - 2)) - 2 * (rows_k @ rows_m) / (n - 2)) / (n * (n - 3))


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Linear CKA with the unbiased HSIC estimator (computed from the features: see
    :func:`linear_hsic`); needs n >= 4."""
    x, y = _check_pair(x, y)
    # Centring changes no U-statistic of a linear kernel but keeps the sums small in float64.
    x, y = x - x.mean(0), y - y.mean(0)
    denominator = (linear_hsic(x, x) * linear_hsic(y, y)).clamp_min(0).sqrt()
    if float(denominator) == 0:
        return 0.0
    return float(linear_hsic(x, y) / denominator)


def _rbf(x: torch.Tensor, fraction: float) -> torch.Tensor:
    squared = torch.cdist(x, x).pow(2)
    off_diagonal = squared[~torch.eye(len(x), dtype=torch.bool)]
    bandwidth = fraction * off_diagonal.sqrt().median()
    if float(bandwidth) == 0:
        return torch.ones_like(squared)
    return torch.exp(-squared / (2 * bandwidth**2))


def rbf_cka(x: torch.Tensor, y: torch.Tensor, fraction: float = 0.8) -> float:
    """RBF-kernel CKA (unbiased HSIC); each kernel's bandwidth is ``fraction`` x the median
    distance between its rows, so isotropic scaling leaves it unchanged."""
    check_number("fraction", fraction, 0, strict_minimum=True)
    x, y = _check_pair(x, y)
    return _cka(_rbf(x, fraction), _rbf(y, fraction))


def _top_directions(x: torch.Tensor, variance: float) -> torch.Tensor:
    """x [n, d] centred and projected onto its top singular directions holding ``variance``."""
    x = x - x.mean(0)
    u, s, _ = torch.linalg.svd(x, full_matrices=False)
    share = (s**2).cumsum(0) / (s**2).sum().clamp_min(1e-300)
    keep = int((share < variance).sum()) + 1
    return u[:, :keep] * s[:keep]


def _cca(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(canonical correlations [m], X's canonical directions as [n, m] scores, Q_x [n, r]) of centred x, y."""
    qx, rx = torch.linalg.qr(x - x.mean(0))
    qy, _ = torch.linalg.qr(y - y.mean(0))
    # Drop directions of (numerically) zero variance before the correlations.
    qx = qx[:, torch.diag(rx).abs() > 1e-10 * torch.diag(rx).abs().max()]
    u, s, _ = torch.linalg.svd(qx.T @ qy, full_matrices=False)
    return s.clamp(0, 1), qx @ u, qx


def svcca(x: torch.Tensor, y: torch.Tensor, variance: float = 0.99) -> float:
    """Mean canonical correlation after keeping each side's top singular directions that hold
    ``variance`` of its variance."""
    check_number("variance", variance, 0, 1, strict_minimum=True)
    x, y = _check_pair(x, y)
    correlations, _, _ = _cca(_top_directions(x, variance), _top_directions(y, variance))
    return float(correlations.mean())


def pwcca(x: torch.Tensor, y: torch.Tensor) -> float:
    """Projection-weighted CCA: each canonical correlation weighted by how much of X's
    (centred) activations its canonical direction accounts for."""
    x, y = _check_pair(x, y)
    correlations, scores, _ = _cca(x, y)
    centred = x - x.mean(0)
    weights = (scores.T @ centred).abs().sum(1)
    return float((weights * correlations).sum() / weights.sum().clamp_min(1e-300))


def procrustes_distance(x: torch.Tensor, y: torch.Tensor) -> float:
    """2 - 2 ||X^T Y||_* after centring and unit Frobenius norm: 0 when Y is a rotated, scaled X."""
    x, y = _check_pair(x, y)
    x = x - x.mean(0)
    y = y - y.mean(0)
    x = x / x.norm().clamp_min(1e-300)
    y = y / y.norm().clamp_min(1e-300)
    return float((2 - 2 * torch.linalg.svdvals(x.T @ y).sum()).clamp_min(0))


def mutual_knn(x: torch.Tensor, y: torch.Tensor, k: int = 10) -> float:
    """The mean share of each row's ``k`` nearest neighbours (cosine) that X and Y agree on."""
    x, y = _check_pair(x, y)
    check_int("k", k, 1, x.shape[0] - 1)

    def neighbours(z: torch.Tensor) -> torch.Tensor:
        z = torch.nn.functional.normalize(z - z.mean(0), dim=1)
        similarity = z @ z.T
        similarity.fill_diagonal_(-float("inf"))
        return similarity.topk(k, dim=1).indices

    a, b = neighbours(x), neighbours(y)
    shared = (a[:, :, None] == b[:, None, :]).any(-1).double().mean(1)
    return float(shared.mean())


METRICS: dict[str, Callable[[torch.Tensor, torch.Tensor], float]] = {
    "linear_cka": linear_cka, "rbf_cka": rbf_cka, "svcca": svcca, "pwcca": pwcca,
    "procrustes": procrustes_distance, "mutual_knn": mutual_knn}


@dataclass(frozen=True)
class Similarity:
    """``value`` of ``metric`` on the data; ``null_mean`` / ``null_high`` the mean and 95th
    percentile over ``permutations`` row shuffles of Y (for CCA-type metrics the null is far from
    0: with many dimensions and few rows, canonical correlations are large by chance);
    ``p_value`` the share of shuffles at least as similar (as close, for the distance);
    [``low``, ``high``] a 95% bootstrap interval."""

    metric: str
    value: float
    null_mean: float
    null_high: float
    p_value: float
    low: float
    high: float
    n: int

    def to_json(self) -> dict:
        return asdict(self)


def compare_representations(x: torch.Tensor, y: torch.Tensor, metric: Metric = "linear_cka", permutations: int = 100,
                            bootstraps: int = 100, seed: int = 0) -> Similarity:
    """``metric`` on (X, Y) with its permutation null and bootstrap interval (see the module
    docstring). Bootstrap resamples keep one copy of each drawn row (duplicated rows would be
    their own nearest neighbours and inflate kernel statistics); the interval is their spread
    around the value (bias-corrected: fewer distinct rows shift the metrics that depend on n)."""
    check_choice("metric", metric, Metric)
    check_int("permutations", permutations, 1)
    check_int("bootstraps", bootstraps, 1)
    _check_pair(x, y)
    function = METRICS[metric]
    generator = torch.Generator().manual_seed(seed)
    value = function(x, y)
    null = torch.tensor([function(x, y[torch.randperm(len(y), generator=generator)]) for _ in range(permutations)])
    closer = null <= value if metric == "procrustes" else null >= value
    p_value = float((closer.sum() + 1) / (permutations + 1))
    draws = []
    for _ in range(bootstraps):
        rows = torch.randint(len(x), (len(x),), generator=generator).unique()
        if len(rows) >= 4:
            draws.append(function(x[rows], y[rows]))
    # A resample holds about 63% distinct rows, which moves the metrics that depend on n (CCA on
    # fewer rows finds higher correlations): the interval is the resamples' spread around the value.
    spread = torch.tensor(draws)
    spread = spread - (spread.mean() - value)
    return Similarity(metric, value, float(null.mean()), float(null.quantile(0.95)), p_value,
                      float(spread.quantile(0.025)), float(spread.quantile(0.975)), len(x))


__all__ = ["METRICS", "Metric", "Similarity", "compare_representations", "linear_cka", "mutual_knn",
           "procrustes_distance", "pwcca", "rbf_cka", "svcca", "linear_hsic", "unbiased_hsic"]
