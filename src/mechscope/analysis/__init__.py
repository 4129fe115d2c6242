"""Activation analysis: logit lens, direct logit attribution, head characterisation."""

from mechscope.analysis.activations import prompt_activations
from mechscope.analysis.attribution import DirectLogitAttribution, direct_logit_attribution
from mechscope.analysis.head_scores import HeadScores, head_scores, repeated_random_tokens
from mechscope.analysis.logit_lens import LogitLens, logit_lens

__all__ = [
    "DirectLogitAttribution",
    "HeadScores",
    "LogitLens",
    "direct_logit_attribution",
    "head_scores",
    "logit_lens",
    "prompt_activations",
    "repeated_random_tokens",
]
