"""Loading models and wrapping them with hook points."""

from mechscope.models.adapters import SUPPORTED_FAMILIES
from mechscope.models.config import ModelConfig
from mechscope.models.hooked_model import HookedModel
from mechscope.models.loading import BUNDLED, DEFAULT_MODEL, load
from mechscope.models.tiny import load_tiny

__all__ = ["BUNDLED", "DEFAULT_MODEL", "SUPPORTED_FAMILIES", "HookedModel", "ModelConfig", "load", "load_tiny"]
