"""Explainers: a unit's records in, an explanation out. ``tokens``, the baseline with no language
model (:mod:`.tokens`); ``output``, what the unit makes the model say (:mod:`.output`); ``llm``, a
chat model reading a contrast (:mod:`.llm`)."""

from mechscope.autointerp.explain.llm import LLMExplanation, explain_llm, llm_requests, windows_of
from mechscope.autointerp.explain.output import (
           OutputExplanation,
           OutputRecords,
           explain_output,
           output_records,
)
from mechscope.autointerp.explain.tokens import TokenExplanation, WordStat, explain_tokens

__all__ = ["LLMExplanation", "OutputExplanation", "OutputRecords", "TokenExplanation", "WordStat", "explain_llm",
           "explain_output", "explain_tokens", "llm_requests", "output_records", "windows_of"]
