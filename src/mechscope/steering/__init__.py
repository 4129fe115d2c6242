"""Steering: directions in the residual stream, adding them, ablating them, baking the ablation
into weights, and measuring what that does to behaviour and to everything else."""

from mechscope.data.contexts import default_contexts  # steering's perplexity contexts
from mechscope.steering.apply import DirectionalAblation, Steering, generate
from mechscope.steering.builders import caa_direction, contrast_directions
from mechscope.steering.capping import ActivationCap, LayerCap, fit_cap_ladder, fit_caps
from mechscope.steering.direction import (
    METHODS,
    Direction,
    diff_in_means,
    pca_direction,
    probe_direction,
    sae_direction,
)
from mechscope.steering.evaluate import (
    Behaviour,
    LogitBehaviour,
    ProbeBehaviour,
    last_token_logits,
    next_token_kl,
    perplexity,
    token_log_odds,
)
from mechscope.steering.orthogonalise import orthogonalise, save_orthogonalised
from mechscope.steering.sweep import SteeringSweep, SweepConfig, SweepPoint, sweep

__all__ = [
    "METHODS",
    "ActivationCap",
    "LayerCap",
    "fit_cap_ladder",
    "fit_caps",
    "Behaviour",
    "LogitBehaviour",
    "ProbeBehaviour",
    "SteeringSweep",
    "SweepConfig",
    "SweepPoint",
    "caa_direction",
    "contrast_directions",
    "default_contexts",
    "last_token_logits",
    "next_token_kl",
    "perplexity",
    "sweep",
    "token_log_odds",
    "Direction",
    "DirectionalAblation",
    "Steering",
    "diff_in_means",
    "generate",
    "orthogonalise",
    "pca_direction",
    "probe_direction",
    "sae_direction",
    "save_orthogonalised",
]
