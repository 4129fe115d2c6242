"""Qwen2: the Llama layout with biases on the q/k/v projections."""

from dataclasses import replace

from mechscope.models.adapters.llama import LLAMA

QWEN2 = replace(LLAMA, family="qwen2", model_types=("qwen2",))
