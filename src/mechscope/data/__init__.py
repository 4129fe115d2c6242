"""Text corpora for harvesting activations."""

from mechscope.data.contexts import default_contexts
from mechscope.data.corpus import load_texts, pack, stdlib_docstrings
from mechscope.data.store import ModelActivations, StoredActivations, harvest

__all__ = ["ModelActivations", "StoredActivations", "default_contexts", "harvest", "load_texts", "pack", "stdlib_docstrings"]
