"""Linear probes: a weight vector and a bias that read a binary property off activations.

Three ways to fit one (``KINDS``):

- ``logistic``: L2-regularised logistic regression, full-batch L-BFGS in float64 on
  standardised features (each feature scaled to unit variance, so one SmolLM2 dimension with
  massive activations does not dominate the penalty). Deterministic: no minibatches, no
  random initialisation.
- ``mass_mean``: the difference of the class means, thresholded half-way between them. Low
  capacity (nothing is optimised), which makes it harder to overfit and a natural steering
  vector (Marks & Tegmark 2023, "The Geometry of Truth").
- ``mass_mean_iid``: the same class-mean difference read through the inverse of the pooled
  within-class covariance (shrunk towards a scaled identity so it is invertible when d > n):
  Marks & Tegmark's in-distribution variant, i.e. linear discriminant analysis.

Every probe is stored in the *original* activation space (standardisation is folded into the
weight), so ``probe.score(x)`` takes raw activations and nothing else needs to be carried.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, get_args

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from mechscope.errors import FileFormatError, MechscopeError
from mechscope.files import READ_ERRORS, atomic_file, read_safetensors
from mechscope.probes.metrics import as_binary_labels
from mechscope.validate import check_choice, check_finite, check_number

ProbeKind = Literal["logistic", "mass_mean", "mass_mean_iid"]
KINDS: tuple[str, ...] = get_args(ProbeKind)


@dataclass(eq=False)
class LinearProbe:
    """``score(x) = x @ weight + bias``; positive scores predict label 1.

    weight: [d] float32, in the activation space the probe was trained on. For ``logistic`` the
    score is a logit; for the mass-mean kinds the weight is scaled so the two class means score
    +0.5 and -0.5. direction: [d] unit vector, positive towards label 1: the weight's direction
    for ``logistic`` and ``mass_mean``, and the *unwhitened* class-mean difference for
    ``mass_mean_iid`` (whitening tilts the weight towards low-variance dimensions, which read
    well but steer badly; Marks & Tegmark intervene along the plain difference). info: free
    JSON-able metadata (hook name, position, model) saved with the probe.
    """

    weight: torch.Tensor
    bias: float
    kind: str
    direction: torch.Tensor
    info: dict = field(default_factory=dict)

    @property
    def d(self) -> int:
        return self.weight.shape[0]

    def score(self, x: torch.Tensor) -> torch.Tensor:
        """[...] scores of activations ``x`` [..., d] (computed in float32 on x's device)."""
        if x.shape[-1] != self.d:
            raise MechscopeError(f"activations have {x.shape[-1]} features but the probe was trained on {self.d}")
        return x.float() @ self.weight.to(x.device) + self.bias

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """[...] predicted labels (0/1, long) of ``x`` [..., d]."""
        return (self.score(x) > 0).long()

    def to_dict(self) -> dict:
        """JSON-able and exact: float32 values survive the round trip through Python floats."""
        return {"kind": self.kind, "bias": self.bias, "weight": self.weight.tolist(),
                "direction": self.direction.tolist(), "info": self.info}

    @classmethod
    def from_dict(cls, data: dict) -> LinearProbe:
        return cls(torch.tensor(data["weight"], dtype=torch.float32), float(data["bias"]), data["kind"],
                   torch.tensor(data["direction"], dtype=torch.float32), dict(data.get("info", {})))

    def save(self, path: str | Path) -> Path:
        """One .safetensors file: the weight and direction as tensors, kind / bias / info as JSON
        metadata (no pickle). Written atomically."""
        tensors = {"weight": self.weight.detach().cpu().float().contiguous(),
                   "direction": self.direction.detach().cpu().float().contiguous()}
        # repr of a Python float round-trips exactly, so the bias comes back bit for bit
        metadata = {"kind": self.kind, "bias": repr(float(self.bias)), "info": json.dumps(self.info)}
        return atomic_file(path, lambda temporary: save_file(tensors, str(temporary), metadata=metadata))

    @classmethod
    def load(cls, path: str | Path) -> LinearProbe:
        """Read a probe written by :meth:`save`; every tensor and key is checked (a missing or
        truncated file, a wrong shape or a non-finite weight is a FileFormatError naming it)."""
        tensors = read_safetensors(path, "probe")
        try:
            with safe_open(str(path), framework="pt") as handle:
                metadata = handle.metadata() or {}
        except READ_ERRORS as error:
            raise FileFormatError(f"{path}: unreadable probe metadata ({error})") from error
        missing = [key for key in ("kind", "bias") if key not in metadata]
        if missing:
            raise FileFormatError(f"{path} is not a mechscope probe file (no {', '.join(missing)} in its metadata)")
        if set(tensors) != {"weight", "direction"}:
            raise FileFormatError(f"{path} must hold the tensors 'weight' and 'direction'; it holds "
                                  f"{', '.join(sorted(tensors)) or 'none'}")
        try:
            bias, info = float(metadata["bias"]), json.loads(metadata.get("info", "{}"))
        except ValueError as error:
            raise FileFormatError(f"{path}: bias or info in the metadata is malformed ({error})") from error
        try:
            return cls(tensors["weight"], bias, metadata["kind"], tensors["direction"], info)
        except MechscopeError as error:
            raise FileFormatError(f"{path}: {error}") from error

    def __post_init__(self) -> None:
        check_choice("kind", self.kind, ProbeKind)
        for name in ("weight", "direction"):
            value = getattr(self, name)
            if not isinstance(value, torch.Tensor) or value.dim() != 1 or not value.is_floating_point():
                raise MechscopeError(f"probe {name} must be a float vector [d]; got "
                                     f"{getattr(value, 'shape', type(value).__name__)}")
            check_finite(f"probe {name}", value)
        if self.weight.shape != self.direction.shape:
            raise MechscopeError(f"probe weight {tuple(self.weight.shape)} and direction "
                                 f"{tuple(self.direction.shape)} differ in size")
        self.bias = check_number("probe bias", self.bias)


def check_features(features: torch.Tensor, labels, what: str = "features") -> tuple[torch.Tensor, torch.Tensor]:
    """(features [n, d] float64 on the CPU, labels [n] long 0/1), or a clear error: features not
    2-D or not finite, labels of the wrong length, not binary, or with fewer than 2 of a class."""
    features = torch.as_tensor(features)
    if features.dim() != 2:
        raise MechscopeError(f"{what} must be [n_examples, d], got shape {tuple(features.shape)}")
    if not features.dtype.is_floating_point:
        features = features.double()
    if not torch.isfinite(features).all():
        raise MechscopeError(f"{what} contain NaN or infinity")
    labels = as_binary_labels(labels, features.shape[0]).cpu()
    counts = torch.bincount(labels, minlength=2)
    if int(counts.min()) < 2:
        raise MechscopeError(f"need at least 2 examples of each class to fit a probe; got {int(counts[0])} of class 0 "
                         f"and {int(counts[1])} of class 1")
    return features.detach().cpu().double(), labels


def train_probe(features: torch.Tensor, labels, kind: str = "logistic", l2: float = 1e-2, max_iter: int = 500,
                shrinkage: float = 0.1, info: dict | None = None) -> LinearProbe:
    """Fit a probe on ``features`` [n, d] for ``labels`` [n] (0/1 or bools).

    l2: logistic only, the penalty ``l2 / 2 * |w|^2`` added to the *mean* cross-entropy, with w
    the weight on standardised features (the bias is not penalised). Some penalty is needed:
    separable data (the usual case when d is in the hundreds) otherwise drives |w| to infinity.
    max_iter: logistic only, L-BFGS iterations. shrinkage: ``mass_mean_iid`` only, the weight in
    [0, 1] of the scaled identity mixed into the covariance.
    """
    if kind not in KINDS:
        raise MechscopeError(f"unknown probe kind {kind!r}; choose one of: {', '.join(KINDS)}")
    x, y = check_features(features, labels)
    if l2 < 0:
        raise MechscopeError(f"l2 must be >= 0, got {l2}")
    if not 0 <= shrinkage <= 1:
        raise MechscopeError(f"shrinkage must be in [0, 1], got {shrinkage}")
    if kind == "logistic":
        weight, bias = _fit_logistic(x, y.double(), l2, max_iter)
        direction = weight
    else:
        weight, bias, direction = _fit_mass_mean(x, y, whiten=kind == "mass_mean_iid", shrinkage=shrinkage)
    norm = direction.norm()
    if not torch.isfinite(norm) or norm == 0:
        raise MechscopeError("the fitted probe has no direction (all-zero weight): "
                         "are the two classes' features identical?")
    return LinearProbe(weight.float(), float(bias), kind, (direction / norm).float(), dict(info or {}))


def _fit_logistic(x: torch.Tensor, y: torch.Tensor, l2: float, max_iter: int) -> tuple[torch.Tensor, float]:
    """(weight [d], bias) in the original space, from L-BFGS on standardised ``x`` [n, d]."""
    mean = x.mean(0)
    scale = x.std(0, unbiased=False)
    # A constant feature carries nothing; scale 1 keeps it at zero instead of dividing by zero.
    scale = torch.where(scale > 1e-12 * scale.max().clamp_min(1e-300), scale, torch.ones_like(scale))
    z = (x - mean) / scale
    w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    prior = float(y.mean())
    # Start the bias at the base-rate logit, so the first step only has to learn the direction.
    b = torch.tensor([math.log(prior / (1 - prior))], dtype=torch.float64, requires_grad=True)
    optimiser = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, history_size=20, tolerance_grad=1e-9,
                                  tolerance_change=1e-12, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimiser.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(z @ w + b, y) + 0.5 * l2 * (w @ w)
        loss.backward()
        return loss

    with torch.enable_grad():  # callers may be inside torch.no_grad()
        optimiser.step(closure)
    weight = w.detach() / scale
    return weight, float(b.detach()) - float(mean @ weight)


def _fit_mass_mean(x: torch.Tensor, y: torch.Tensor, whiten: bool,
                   shrinkage: float) -> tuple[torch.Tensor, float, torch.Tensor]:
    """(weight [d], bias, class-mean difference [d]) with the class means scoring +0.5 / -0.5."""
    positive, negative = x[y == 1], x[y == 0]
    mean_pos, mean_neg = positive.mean(0), negative.mean(0)
    difference = mean_pos - mean_neg
    if float(difference.norm()) == 0.0:
        raise MechscopeError("the two classes have identical mean activations; mass-mean probes have no direction")
    weight = difference
    if whiten:
        centred = torch.cat([positive - mean_pos, negative - mean_neg])
        covariance = centred.T @ centred / max(len(x) - 2, 1)
        d = x.shape[1]
        identity = torch.eye(d, dtype=x.dtype) * (covariance.diagonal().sum() / d).clamp_min(1e-12)
        try:
            weight = torch.linalg.solve((1 - shrinkage) * covariance + shrinkage * identity, difference)
        except torch.linalg.LinAlgError as error:
            raise MechscopeError(f"the within-class covariance is singular ({len(x)} examples, {d} features); "
                             "use shrinkage > 0") from error
    weight = weight / (weight @ difference)  # positive (the shrunk covariance is positive definite)
    return weight, -float(weight @ (mean_pos + mean_neg)) / 2, difference
