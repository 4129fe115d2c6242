"""The ``lexicon`` scorer: no language model, the explanation read as a rule.

``lexicon`` reads the explanation as a token or regex rule (:mod:`mechscope.autointerp.lexicon`)
and compares, token by token, where the rule says the unit fires with where it does (activation
above ``threshold``): the score is the balanced accuracy (the mean of the true-positive and
true-negative rates; chance 0.5 whatever the density), with a bootstrap over windows.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mechscope.autointerp.lexicon import parse_explanation
from mechscope.autointerp.score.base import Score, balanced_accuracy, bootstrap_interval, checked_windows


def lexicon_score(explanation: str, windows: Sequence[Sequence[str]], activations: Sequence[torch.Tensor],
                  threshold: float = 0.0, n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> Score:
    """Balanced accuracy of the rule ``explanation`` states against where the unit fires, over
    ``windows`` (each a list of token texts) and their ``activations`` ([len(window)] each;
    fires: above ``threshold``), with a bootstrap interval over windows (see the module
    docstring)."""
    rule = parse_explanation(explanation)
    rows = []
    for tokens, values in zip(windows, checked_windows(windows, activations)):
        predicted = torch.tensor(rule.matches(tokens), dtype=torch.bool)
        fires = values > threshold
        rows.append([float((predicted & fires).sum()), float(fires.sum()), float((~predicted & ~fires).sum()),
                     float((~fires).sum())])
    value, low, high = bootstrap_interval(torch.tensor(rows), lambda r: balanced_accuracy(r.sum(-2)), n_boot, level,
                                          seed)
    return Score(value, low, high, 0.5, len(windows), level, "balanced accuracy")


__all__ = ["lexicon_score"]
