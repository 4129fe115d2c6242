"""One small declarative adapter per architecture family."""

from typing import Literal, get_args

from mechscope.errors import MechscopeError
from mechscope.models.adapters.base import ArchitectureAdapter
from mechscope.models.adapters.gemma3 import GEMMA3
from mechscope.models.adapters.gpt2 import GPT2
from mechscope.models.adapters.gpt_neox import GPT_NEOX
from mechscope.models.adapters.llama import LLAMA
from mechscope.models.adapters.mistral import MISTRAL
from mechscope.models.adapters.qwen2 import QWEN2

ADAPTERS: tuple[ArchitectureAdapter, ...] = (LLAMA, MISTRAL, QWEN2, GEMMA3, GPT2, GPT_NEOX)
Family = Literal["llama", "mistral", "qwen2", "gemma3", "gpt2", "gpt_neox"]
SUPPORTED_FAMILIES: tuple[str, ...] = tuple(adapter.family for adapter in ADAPTERS)
if set(SUPPORTED_FAMILIES) != set(get_args(Family)):  # one list of families, checked at import
    raise ImportError(f"Family {get_args(Family)} and the adapters {SUPPORTED_FAMILIES} disagree")


def adapter_for_model_type(model_type: str) -> ArchitectureAdapter:
    """The adapter whose family covers a HF ``config.model_type``."""
    for adapter in ADAPTERS:
        if model_type in adapter.model_types:
            return adapter
    supported = ", ".join(t for a in ADAPTERS for t in a.model_types)
    raise MechscopeError(f"unsupported model_type {model_type!r}; mechscope supports: {supported}")


def adapter_for_family(family: str) -> ArchitectureAdapter:
    for adapter in ADAPTERS:
        if adapter.family == family:
            return adapter
    raise MechscopeError(f"unknown family {family!r}; choose one of: {', '.join(SUPPORTED_FAMILIES)}")


__all__ = ["ADAPTERS", "Family", "SUPPORTED_FAMILIES", "ArchitectureAdapter", "adapter_for_family", "adapter_for_model_type"]
