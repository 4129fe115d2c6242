"""Text corpora for harvesting activations."""

from mechscope.data.corpus import load_texts, pack, stdlib_docstrings

__all__ = ["load_texts", "pack", "stdlib_docstrings"]
