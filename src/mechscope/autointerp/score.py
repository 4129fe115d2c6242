"""Scores of explanations, each with a bootstrap confidence interval and its chance level.

``lexicon`` reads the explanation as a token or regex rule (:mod:`mechscope.autointerp.lexicon`)
and compares, token by token, where the rule says the unit fires with where it does (activation
above ``threshold``): the score is the balanced accuracy (the mean of the true-positive and
true-negative rates; chance 0.5 whatever the density). Windows are the unit of resampling: the
interval is a percentile bootstrap over windows, so neighbouring tokens of one window, which are
not independent, are resampled together. A score whose interval reaches chance is "not above
chance" (:attr:`Score.above_chance`), never shown as a finding.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from mechscope.autointerp.lexicon import parse_explanation
from mechscope.errors import MechscopeError
from mechscope.validate import check_int, check_number


@dataclass(frozen=True)
class Score:
    """``value`` with its ``[low, high]`` bootstrap interval (``level``, e.g. 0.95), the
    ``chance`` level of the score, and ``n`` the items resampled (windows)."""

    value: float
    low: float
    high: float
    chance: float
    n: int
    level: float = 0.95

    @property
    def above_chance(self) -> bool:
        """Whether the whole interval lies above chance."""
        return self.low > self.chance

    def to_json(self) -> dict:
        return {**vars(self), "above_chance": self.above_chance}


def _balanced_accuracy(counts: torch.Tensor) -> torch.Tensor:
    """[..., 4] counts (true positives, positives, true negatives, negatives) -> [...] balanced
    accuracy; a class that is absent counts as chance for its half."""
    tp, pos, tn, neg = counts.unbind(-1)
    tpr = torch.where(pos > 0, tp / pos.clamp_min(1), torch.full_like(tp, 0.5))
    tnr = torch.where(neg > 0, tn / neg.clamp_min(1), torch.full_like(tn, 0.5))
    return (tpr + tnr) / 2


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


def lexicon_score(explanation: str, windows: Sequence[Sequence[str]], activations: Sequence[torch.Tensor],
                  threshold: float = 0.0, n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> Score:
    """Balanced accuracy of the rule ``explanation`` states against where the unit fires, over
    ``windows`` (each a list of token texts) and their ``activations`` ([len(window)] each;
    fires: above ``threshold``), with a bootstrap interval over windows (see the module
    docstring)."""
    rule = parse_explanation(explanation)
    if len(windows) != len(activations):
        raise MechscopeError(f"{len(windows)} windows but {len(activations)} activation rows")
    if not windows:
        raise MechscopeError("scoring needs at least one window")
    rows = []
    for index, (tokens, values) in enumerate(zip(windows, activations)):
        values = torch.as_tensor(values)
        if values.shape != (len(tokens),):
            raise MechscopeError(f"window {index} has {len(tokens)} tokens but activations of shape "
                                 f"{tuple(values.shape)}")
        predicted = torch.tensor(rule.matches(tokens), dtype=torch.bool)
        fires = values > threshold
        rows.append([float((predicted & fires).sum()), float(fires.sum()), float((~predicted & ~fires).sum()),
                     float((~fires).sum())])
    value, low, high = bootstrap_interval(torch.tensor(rows), lambda r: _balanced_accuracy(r.sum(-2)), n_boot, level,
                                          seed)
    return Score(value, low, high, 0.5, len(windows), level)


__all__ = ["Score", "bootstrap_interval", "lexicon_score"]
