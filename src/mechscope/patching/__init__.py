"""Causal interventions: activation patching (batched), with results you can rank, plot and save."""

from mechscope.patching.ablation import ablation_sweep, ablation_values
from mechscope.patching.activation import activation_patch
from mechscope.patching.attribution import attribution_patch, correlation
from mechscope.patching.path import path_patch
from mechscope.patching.result import PatchingResult
from mechscope.patching.sites import SITE_KINDS, PatchUnit, site_grid
from mechscope.patching.tracing import TraceConfig, causal_trace, subject_positions

__all__ = [
    "SITE_KINDS",
    "PatchUnit",
    "PatchingResult",
    "ablation_sweep",
    "ablation_values",
    "activation_patch",
    "attribution_patch",
    "TraceConfig",
    "causal_trace",
    "correlation",
    "path_patch",
    "site_grid",
    "subject_positions",
]
