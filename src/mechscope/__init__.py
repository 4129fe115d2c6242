"""mechscope: mechanistic interpretability for HuggingFace causal language models."""

from mechscope import (
    analysis,
    audit,
    autointerp,
    circuits,
    data,
    datasets,
    diff,
    hooks,
    organisms,
    patching,
    probes,
    sae,
    steering,
    tasks,
    toys,
)
from mechscope.analysis import direct_logit_attribution, head_scores, logit_lens
from mechscope.hooks import ActivationCache, HookPoint
from mechscope.models import (
    BUNDLED,
    DEFAULT_MODEL,
    SUPPORTED_FAMILIES,
    HookedModel,
    ModelConfig,
    load,
    load_tiny,
)
from mechscope.patching import (
    PatchingResult,
    ablation_sweep,
    activation_patch,
    attribution_patch,
    causal_trace,
    path_patch,
)
from mechscope.tasks import Task

__version__ = "0.1.0"

__all__ = [
    "BUNDLED",
    "DEFAULT_MODEL",
    "SUPPORTED_FAMILIES",
    "ActivationCache",
    "HookPoint",
    "HookedModel",
    "ModelConfig",
    "PatchingResult",
    "Task",
    "ablation_sweep",
    "activation_patch",
    "analysis",
    "audit",
    "attribution_patch",
    "autointerp",
    "causal_trace",
    "circuits",
    "data",
    "datasets",
    "diff",
    "direct_logit_attribution",
    "head_scores",
    "hooks",
    "load",
    "load_tiny",
    "logit_lens",
    "organisms",
    "patching",
    "path_patch",
    "probes",
    "sae",
    "steering",
    "tasks",
    "toys",
]
