"""Text corpora for harvesting activations."""

from mechscope.data.corpus import load_texts, pack, stdlib_docstrings
from mechscope.data.store import ModelActivations, StoredActivations, harvest

__all__ = ["ModelActivations", "StoredActivations", "harvest", "load_texts", "pack", "stdlib_docstrings"]
