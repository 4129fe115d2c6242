"""Gemma 3 (text): extra norms after attention and MLP; what reaches the residual stream is the
output of those post-norms. RMSNorm scales by (1 + weight); q/k have their own norms."""

from mechscope.models.adapters.base import ArchitectureAdapter, standard_dims

GEMMA3 = ArchitectureAdapter(
    family="gemma3",
    model_types=("gemma3_text",),
    layers="model.layers",
    embed="model.embed_tokens",
    final_norm="model.norm",
    ln2="pre_feedforward_layernorm",
    attn_out="post_attention_layernorm",
    mlp_out="post_feedforward_layernorm",
    attn_out_is_norm=True,
    norm_weight_offset=1.0,
    read_config=standard_dims,
)
