"""Scorers: how true an explanation is, each a :class:`Score` with a bootstrap interval and a
chance level. ``lexicon`` reads the explanation as a rule (:mod:`.lexicon`)."""

from mechscope.autointerp.score.base import (
           Score,
           auroc,
           auroc_score,
           balanced_accuracy,
           bootstrap_interval,
           label_score,
)
from mechscope.autointerp.score.lexicon import lexicon_score

__all__ = ["Score", "auroc", "auroc_score", "balanced_accuracy", "bootstrap_interval", "label_score",
           "lexicon_score"]
