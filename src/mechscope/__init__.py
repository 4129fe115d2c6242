"""mechscope: mechanistic interpretability for HuggingFace causal language models."""

from mechscope.hooks import ActivationCache, HookPoint
from mechscope.models import BUNDLED, DEFAULT_MODEL, SUPPORTED_FAMILIES, HookedModel, ModelConfig, load, load_tiny

__version__ = "0.1.0"

__all__ = [
    "BUNDLED",
    "DEFAULT_MODEL",
    "SUPPORTED_FAMILIES",
    "ActivationCache",
    "HookPoint",
    "HookedModel",
    "ModelConfig",
    "load",
    "load_tiny",
]
