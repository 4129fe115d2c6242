"""What every scorer returns: a number, its bootstrap confidence interval and its chance level.

Windows (or trials) are the unit of resampling: the interval is a percentile bootstrap over
them, so neighbouring tokens of one window, which are not independent, are resampled together.
A score whose interval reaches chance is "not above chance" (:attr:`Score.above_chance`), never
shown as a finding.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from mechscope.errors import MechscopeError
from mechscope.validate import check_int, check_number


@dataclass(frozen=True)
class Score:
    """``value`` with its ``[low, high]`` bootstrap interval (``level``, e.g. 0.95), the
    ``chance`` level of the score, ``n`` the items resampled (windows, trials), the ``metric``
    ("auroc", "balanced accuracy", "correlation", ...) and a ``note`` saying anything the reader
    must know (e.g. that a judge gave no logprobs and labels were parsed instead)."""

    value: float
    low: float
    high: float
    chance: float
    n: int
    level: float = 0.95
    metric: str = ""
    note: str = ""

    @property
    def above_chance(self) -> bool:
        """Whether the whole interval lies above chance."""
        return self.low > self.chance

    def to_json(self) -> dict:
        return {**vars(self), "above_chance": self.above_chance}


def bootstrap_interval(per_item: torch.Tensor, statistic, n_boot: int = 1000, level: float = 0.95, seed: int = 0
                       ) -> tuple[float, float, float]:
    """(statistic over all items, low, high): a percentile bootstrap of ``statistic`` (a function
    of [..., n_items, k] item rows -> [...]) over the rows of ``per_item`` [n_items, k]."""
    check_int("n_boot", n_boot, 1)
    check_number("level", level, 0, 1, strict_minimum=True)
    n = per_item.shape[0]
    if n == 0:
        raise MechscopeError("a bootstrap needs at least one item")
    generator = torch.Generator().manual_seed(seed)
    draws = torch.randint(0, n, (n_boot, n), generator=generator)  # [n_boot, n]
    samples = statistic(per_item[draws])  # [n_boot]
    tail = (1 - level) / 2
    low, high = torch.quantile(samples.double(), torch.tensor([tail, 1 - tail], dtype=torch.float64)).tolist()
    return float(statistic(per_item[None])[0]), low, high


def auroc(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """[..., n] scores and [..., n] boolean labels -> [...] area under the ROC curve: the chance
    that a positive scores above a negative, ties counting half (the Mann-Whitney statistic). A
    row without positives or without negatives is at chance, 0.5."""
    labels = labels.bool()
    greater = (scores[..., :, None] > scores[..., None, :]).double()
    ties = (scores[..., :, None] == scores[..., None, :]).double()
    pairs = (labels[..., :, None] & ~labels[..., None, :]).double()  # [..., pos i, neg j]
    n_pairs = pairs.sum((-1, -2))
    wins = ((greater + 0.5 * ties) * pairs).sum((-1, -2))
    return torch.where(n_pairs > 0, wins / n_pairs.clamp_min(1), torch.full_like(n_pairs, 0.5))


def auroc_score(scores: torch.Tensor, labels: torch.Tensor, n_boot: int = 1000, level: float = 0.95,
                seed: int = 0) -> Score:
    """AUROC of ``scores`` [n] separating ``labels`` [n] (True: the unit fires), with a bootstrap
    over the n items; chance 0.5."""
    if scores.shape != labels.shape or scores.dim() != 1:
        raise MechscopeError(f"scores {tuple(scores.shape)} and labels {tuple(labels.shape)} must be the same [n]")
    rows = torch.stack([scores.double(), labels.double()], -1)  # [n, 2]
    value, low, high = bootstrap_interval(rows, lambda r: auroc(r[..., 0], r[..., 1] > 0.5), n_boot, level, seed)
    return Score(value, low, high, 0.5, len(scores), level, "auroc")


def balanced_accuracy(counts: torch.Tensor) -> torch.Tensor:
    """[..., 4] counts (true positives, positives, true negatives, negatives) -> [...] balanced
    accuracy; a class that is absent counts as chance for its half."""
    tp, pos, tn, neg = counts.unbind(-1)
    tpr = torch.where(pos > 0, tp / pos.clamp_min(1), torch.full_like(tp, 0.5))
    tnr = torch.where(neg > 0, tn / neg.clamp_min(1), torch.full_like(tn, 0.5))
    return (tpr + tnr) / 2


def label_score(predicted: torch.Tensor, labels: torch.Tensor, n_boot: int = 1000, level: float = 0.95,
                seed: int = 0) -> Score:
    """Balanced accuracy of boolean ``predicted`` [n] against ``labels`` [n], bootstrap over the n
    items; chance 0.5 whatever the share of positives."""
    if predicted.shape != labels.shape or predicted.dim() != 1:
        raise MechscopeError(f"predicted {tuple(predicted.shape)} and labels {tuple(labels.shape)} must be the "
                             "same [n]")
    p, y = predicted.bool(), labels.bool()
    rows = torch.stack([(p & y), y, (~p & ~y), ~y], -1).double()  # [n, 4]
    value, low, high = bootstrap_interval(rows, lambda r: balanced_accuracy(r.sum(-2)), n_boot, level, seed)
    return Score(value, low, high, 0.5, len(p), level, "balanced accuracy")


def checked_windows(windows: Sequence[Sequence[str]], activations: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """``activations`` as float [len(window)] rows, after checking there is one per window (each a
    list of token texts), at least one, and each as long as its window."""
    if len(windows) != len(activations):
        raise MechscopeError(f"{len(windows)} windows but {len(activations)} activation rows")
    if not windows:
        raise MechscopeError("scoring needs at least one window")
    rows = []
    for index, (tokens, values) in enumerate(zip(windows, activations)):
        values = torch.as_tensor(values).float()
        if values.shape != (len(tokens),):
            raise MechscopeError(f"window {index} has {len(tokens)} tokens but activations of shape "
                                 f"{tuple(values.shape)}")
        rows.append(values)
    return rows


__all__ = ["Score", "auroc", "auroc_score", "balanced_accuracy", "bootstrap_interval", "checked_windows", "label_score"]
