"""GPT-NeoX / Pythia: LayerNorm, partial rotary, fused q/k/v interleaved per head, and (by
default) parallel attention and MLP, so there is no resid_mid."""

from typing import Any

from mechscope.models.adapters.base import ArchitectureAdapter, standard_dims


def _neox_dims(config: Any) -> dict[str, Any]:
    dims = standard_dims(config)
    dims["norm_eps"] = config.layer_norm_eps
    dims["parallel_residual"] = bool(config.use_parallel_residual)
    return dims


GPT_NEOX = ArchitectureAdapter(
    family="gpt_neox",
    model_types=("gpt_neox",),
    layers="gpt_neox.layers",
    embed="gpt_neox.embed_in",
    final_norm="gpt_neox.final_layer_norm",
    attn="attention",
    q_proj=None,
    k_proj=None,
    v_proj=None,
    qkv_proj="attention.query_key_value",
    qkv_layout="per_head",
    o_proj="attention.dense",
    mlp_in_proj="mlp.dense_h_to_4h",
    mlp_up_proj=None,
    mlp_out_proj="mlp.dense_4h_to_h",
    attn_out="post_attention_dropout",
    mlp_out="post_mlp_dropout",
    norm_type="layer",
    read_config=_neox_dims,
)
