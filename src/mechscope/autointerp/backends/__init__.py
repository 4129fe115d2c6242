"""Language-model backends for the explainers and scorers: the in-process model
(:class:`LocalBackend`) and a disk cache around any backend (:class:`CachedBackend`)."""

from mechscope.autointerp.backends.base import (
           Backend,
           BackendError,
           ChatRequest,
           Completion,
           Message,
           TokenLogprobs,
           Usage,
)
from mechscope.autointerp.backends.cache import CachedBackend
from mechscope.autointerp.backends.local import LocalBackend

__all__ = ["Backend", "BackendError", "CachedBackend", "ChatRequest", "Completion", "LocalBackend", "Message",
           "TokenLogprobs", "Usage"]
