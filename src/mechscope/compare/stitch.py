"""Stitching: an affine map from one model's activations to another's, judged on held-out tokens.

:func:`fit_affine` fits Y ~ X W + b by ridge-regularised least squares on paired rows (X [n, d_a]
from model A, Y [n, d_b] from model B on aligned positions); :func:`held_out_r2` splits the rows
(seeded), fits on one part and reports R² on the other: the share of Y's variance around its
mean that the map predicts (1: perfect; 0: no better than the mean; below 0: worse).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mechscope.errors import ConfigError
from mechscope.validate import check_int, check_number


@dataclass(frozen=True)
class AffineMap:
    """y = x @ weight + bias; ``weight`` [d_a, d_b], ``bias`` [d_b]."""

    weight: torch.Tensor
    bias: torch.Tensor

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.weight.shape[0]:
            raise ConfigError(f"the map reads width {self.weight.shape[0]}; got {x.shape[-1]}")
        return x.to(self.weight.dtype) @ self.weight + self.bias


def _pair(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if x.dim() != 2 or y.dim() != 2 or x.shape[0] != y.shape[0]:
        raise ConfigError(f"stitching needs paired rows [n, d_a] and [n, d_b]; got {tuple(x.shape)} and "
                          f"{tuple(y.shape)}")
    if not (torch.isfinite(x).all() and torch.isfinite(y).all()):
        raise ConfigError("the activations hold NaN or inf")
    return x.double(), y.double()


def fit_affine(x: torch.Tensor, y: torch.Tensor, ridge: float = 1e-3) -> AffineMap:
    """The affine map minimising ||X W + b - Y||² + ``ridge`` x n x ||W||² (X's columns centred,
    so the bias is not penalised)."""
    x, y = _pair(x, y)
    check_number("ridge", ridge, 0)
    x_mean, y_mean = x.mean(0), y.mean(0)
    centred = x - x_mean
    gram = centred.T @ centred + ridge * len(x) * torch.eye(x.shape[1], dtype=x.dtype)
    weight = torch.linalg.solve(gram, centred.T @ (y - y_mean))
    return AffineMap(weight, y_mean - x_mean @ weight)


def r_squared(predicted: torch.Tensor, target: torch.Tensor) -> float:
    """1 - residual variance / target variance, over all of ``target``'s columns."""
    target = target.double()
    residual = (predicted.double() - target).pow(2).sum()
    total = (target - target.mean(0)).pow(2).sum()
    return float(1 - residual / total.clamp_min(1e-300))


def held_out_r2(x: torch.Tensor, y: torch.Tensor, train_fraction: float = 0.8, ridge: float = 1e-3,
                seed: int = 0) -> tuple[AffineMap, float]:
    """(the map fitted on a seeded ``train_fraction`` of the rows, its R² on the rest)."""
    x, y = _pair(x, y)
    check_number("train_fraction", train_fraction, 0, 1, strict_minimum=True)
    check_int("seed", seed, 0)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    cut = int(train_fraction * len(x))
    if cut < 2 or len(x) - cut < 2:
        raise ConfigError(f"{len(x)} rows split at {train_fraction} leave {cut} to fit and {len(x) - cut} to test; "
                          "both need at least 2")
    fitted = fit_affine(x[order[:cut]], y[order[:cut]], ridge)
    test = order[cut:]
    return fitted, r_squared(fitted(x[test]), y[test])


__all__ = ["AffineMap", "fit_affine", "held_out_r2", "r_squared"]
