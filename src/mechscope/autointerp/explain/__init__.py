"""Explainers: a unit's records in, an explanation out. So far ``tokens``, the baseline with no
language model (:mod:`~mechscope.autointerp.explain.tokens`)."""

from mechscope.autointerp.explain.tokens import TokenExplanation, WordStat, explain_tokens

__all__ = ["TokenExplanation", "WordStat", "explain_tokens"]
