"""Llama family (also SmolLM2): RMSNorm, rotary, gated SiLU MLP, separate q/k/v projections."""

from mechscope.models.adapters.base import ArchitectureAdapter, standard_dims

LLAMA = ArchitectureAdapter(
    family="llama",
    model_types=("llama",),
    layers="model.layers",
    embed="model.embed_tokens",
    final_norm="model.norm",
    read_config=standard_dims,
)
