"""Language-model backends for the explainers and scorers: the in-process model
(:class:`LocalBackend`), an OpenAI-compatible HTTP API (:class:`OpenAIBackend`), a disk cache
around any backend (:class:`CachedBackend`), and the server that puts a local model behind that
API (:func:`create_app`, :func:`serve`; ``mechscope serve-llm``)."""

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
from mechscope.autointerp.backends.http import OpenAIBackend
from mechscope.autointerp.backends.local import LocalBackend
from mechscope.autointerp.backends.server import create_app, serve

__all__ = ["Backend", "BackendError", "CachedBackend", "ChatRequest", "Completion", "LocalBackend", "Message",
           "OpenAIBackend", "TokenLogprobs", "Usage", "create_app", "serve"]
