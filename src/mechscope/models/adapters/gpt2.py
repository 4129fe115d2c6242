"""GPT-2: learned position embeddings, LayerNorm, fused Conv1D q/k/v (weights stored [in, out])."""

from typing import Any

from mechscope.models.adapters.base import ArchitectureAdapter


def _gpt2_dims(config: Any) -> dict[str, Any]:
    return {
        "n_layers": config.n_layer,
        "n_heads": config.n_head,
        "n_kv_heads": config.n_head,
        "d_model": config.n_embd,
        "d_head": config.n_embd // config.n_head,
        "d_mlp": config.n_inner or 4 * config.n_embd,
        "d_vocab": config.vocab_size,
        "norm_eps": config.layer_norm_epsilon,
        "parallel_residual": False,
        "final_logit_softcap": None,
    }


GPT2 = ArchitectureAdapter(
    family="gpt2",
    model_types=("gpt2",),
    layers="transformer.h",
    embed="transformer.wte",
    pos_embed="transformer.wpe",
    final_norm="transformer.ln_f",
    ln1="ln_1",
    attn="attn",
    ln2="ln_2",
    q_proj=None,
    k_proj=None,
    v_proj=None,
    qkv_proj="attn.c_attn",
    qkv_layout="concat",
    o_proj="attn.c_proj",
    o_proj_layout="in_out",
    mlp_in_proj="mlp.c_fc",
    mlp_up_proj=None,
    mlp_out_proj="mlp.c_proj",
    attn_out="attn",
    norm_type="layer",
    read_config=_gpt2_dims,
)
