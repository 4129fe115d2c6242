"""Scoring a probe: accuracy at a threshold and AUROC (threshold-free), from scores and 0/1 labels."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mechscope.errors import MechscopeError


def as_binary_labels(labels: torch.Tensor | Sequence, n: int | None = None, what: str = "labels",
                     both_classes: bool = True) -> torch.Tensor:
    """[n] long tensor of 0/1 from bools, ints or floats; raises a clear error on anything else
    (a wrong-length vector, labels other than 0/1, or, with ``both_classes``, only one class)."""
    tensor = torch.as_tensor(labels)
    if tensor.dim() != 1:
        raise MechscopeError(f"{what} must be one-dimensional [n], got shape {tuple(tensor.shape)}")
    if n is not None and len(tensor) != n:
        raise MechscopeError(f"{what} has {len(tensor)} entries but there are {n} examples")
    if tensor.dtype.is_floating_point and not torch.isfinite(tensor).all():
        raise MechscopeError(f"{what} contain NaN or infinity; labels must be 0 or 1")
    values = set(torch.unique(tensor.double()).tolist()) if len(tensor) else set()
    if not values <= {0.0, 1.0}:
        shown = sorted(values)[:6]
        raise MechscopeError(f"{what} must be binary (0/1 or False/True); found values {shown}")
    if both_classes and len(values) < 2:
        raise MechscopeError(f"{what} contain only one class ({'none' if not values else int(values.pop())}); "
                         "a probe needs examples of both 0 and 1")
    return tensor.long()


def _check(scores: torch.Tensor, labels, both_classes: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    scores = torch.as_tensor(scores).double()
    if scores.dim() != 1:
        raise MechscopeError(f"scores must be one-dimensional [n], got shape {tuple(scores.shape)}")
    if not torch.isfinite(scores).all():
        raise MechscopeError("scores contain NaN or infinity")
    if len(scores) == 0:
        raise MechscopeError("no scores given")
    return scores, as_binary_labels(labels, len(scores), both_classes=both_classes)


def accuracy(scores: torch.Tensor, labels, threshold: float = 0.0) -> float:
    """Fraction of examples where ``scores`` [n] > ``threshold`` agrees with ``labels`` [n] (0/1).
    Probe scores are logits, so the default threshold 0 is probability 0.5."""
    scores, labels = _check(scores, labels, both_classes=False)
    return float(((scores > threshold).long() == labels).double().mean())


def average_ranks(values: torch.Tensor) -> torch.Tensor:
    """[n] float64 ranks (1 = smallest) of ``values`` [n], tied values sharing their mean rank."""
    order = values.argsort(stable=True)
    _, group, counts = torch.unique_consecutive(values[order], return_inverse=True, return_counts=True)
    last = counts.cumsum(0).double()  # 1-based rank of each tie group's last member
    mean_rank = last - (counts.double() - 1) / 2
    ranks = torch.empty(len(values), dtype=torch.float64)
    ranks[order] = mean_rank[group]
    return ranks


def auroc(scores: torch.Tensor, labels) -> float:
    """Area under the ROC curve of ``scores`` [n] for ``labels`` [n] (0/1): the probability that
    a random positive outscores a random negative, ties counting one half. Computed as the
    Mann-Whitney U statistic with average ranks, O(n log n), so it equals the pairwise count."""
    scores, labels = _check(scores, labels)
    ranks = average_ranks(scores)
    positive = labels == 1
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    u = float(ranks[positive].sum()) - n_pos * (n_pos + 1) / 2
    return u / (n_pos * n_neg)
