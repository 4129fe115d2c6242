"""Scorers: how true an explanation is, each a :class:`Score` with a bootstrap interval and a
chance level. ``lexicon`` reads the explanation as a rule (:mod:`.lexicon`); ``embedding``
retrieves windows by the explanation (:mod:`.embedding`); ``detection``, ``fuzzing`` and
``intruder`` ask a judge (:mod:`.judge`); ``simulation`` has it predict activations
(:mod:`.simulation`); ``intervention`` checks what steering the unit does (:mod:`.intervention`)."""

from mechscope.autointerp.score.base import (
           Score,
           auroc,
           auroc_score,
           balanced_accuracy,
           bootstrap_interval,
           label_score,
)
from mechscope.autointerp.score.embedding import embedding_score, embedding_scores
from mechscope.autointerp.score.intervention import intervention_score, steered_pairs
from mechscope.autointerp.score.judge import detection_score, fuzzing_score, intruder_score
from mechscope.autointerp.score.lexicon import lexicon_score
from mechscope.autointerp.score.simulation import simulation_score

__all__ = ["Score", "auroc", "auroc_score", "balanced_accuracy", "bootstrap_interval", "detection_score",
           "embedding_score", "embedding_scores", "fuzzing_score", "intervention_score", "intruder_score",
           "label_score", "lexicon_score", "simulation_score", "steered_pairs"]
