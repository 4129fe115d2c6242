"""Mistral: the Llama layout, with sliding-window attention handled by HF's masks."""

from dataclasses import replace

from mechscope.models.adapters.llama import LLAMA

MISTRAL = replace(LLAMA, family="mistral", model_types=("mistral",))
