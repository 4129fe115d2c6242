"""Activation analysis: logit lens, tuned lens, direct logit attribution, head characterisation."""

from mechscope.analysis.activations import prompt_activations
from mechscope.analysis.attribution import DirectLogitAttribution, direct_logit_attribution
from mechscope.analysis.head_scores import (
    HeadScores,
    copy_suppression_scores,
    head_scores,
    repeated_random_tokens,
)
from mechscope.analysis.logit_lens import LensGrid, LogitLens, logit_lens, logit_lens_grid
from mechscope.analysis.tuned_lens import (
    LensComparison,
    TunedLens,
    compare_lenses,
    tuned_lens,
    tuned_lens_logits,
)
from mechscope.analysis.tuned_lens_train import TunedLensConfig, train_tuned_lens

__all__ = [
    "DirectLogitAttribution",
    "HeadScores",
    "LensComparison",
    "LensGrid",
    "LogitLens",
    "TunedLens",
    "TunedLensConfig",
    "compare_lenses",
    "copy_suppression_scores",
    "direct_logit_attribution",
    "head_scores",
    "logit_lens",
    "logit_lens_grid",
    "prompt_activations",
    "repeated_random_tokens",
    "train_tuned_lens",
    "tuned_lens",
    "tuned_lens_logits",
]
