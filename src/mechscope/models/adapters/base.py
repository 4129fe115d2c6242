"""Declarative description of where each canonical activation lives inside a HF model family.

An adapter names modules (dotted paths) and a few layout facts. It contains no forward logic:
mechscope never re-implements a model's forward pass, it only attaches PyTorch hooks to the
modules named here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from mechscope.errors import MechscopeError

QkvLayout = Literal["concat", "per_head"]
WeightLayout = Literal["out_in", "in_out"]
NormType = Literal["rms", "layer"]
# The per-layer modules an adapter names; ``adapter.path(layer, role)`` gives their dotted path.
ModuleRole = Literal["block", "ln1", "attn", "ln2", "mlp", "q_proj", "k_proj", "v_proj", "qkv_proj", "o_proj",
                     "mlp_in_proj", "mlp_up_proj", "mlp_out_proj", "attn_out", "mlp_out"]


@dataclass(frozen=True)
class ArchitectureAdapter:
    """Module paths and layout facts for one architecture family.

    Paths below ``layers`` are relative to one decoder layer module. Where two paths are given
    for the same role (``q_proj``/``k_proj``/``v_proj`` versus ``qkv_proj``), exactly one set is used.
    """

    family: str
    model_types: tuple[str, ...]
    # Whole-model modules.
    layers: str
    embed: str
    final_norm: str
    unembed: str = "lm_head"
    pos_embed: str | None = None
    # Per-layer modules.
    ln1: str = "input_layernorm"
    attn: str = "self_attn"
    ln2: str = "post_attention_layernorm"
    mlp: str = "mlp"
    q_proj: str | None = "self_attn.q_proj"
    k_proj: str | None = "self_attn.k_proj"
    v_proj: str | None = "self_attn.v_proj"
    qkv_proj: str | None = None
    qkv_layout: QkvLayout = "concat"
    o_proj: str = "self_attn.o_proj"
    o_proj_layout: WeightLayout = "out_in"
    mlp_in_proj: str = "mlp.gate_proj"
    mlp_up_proj: str | None = "mlp.up_proj"
    mlp_out_proj: str = "mlp.down_proj"
    # The module whose output is what is actually added to the residual stream. For Gemma these
    # are the extra post-norms, not the attention / MLP modules themselves.
    attn_out: str = "self_attn"
    mlp_out: str = "mlp"
    # True when ``attn_out`` is a norm applied to the o_proj output (Gemma): per-head results
    # are then o_proj contributions, and their residual writes need the norm linearised.
    attn_out_is_norm: bool = False
    norm_type: NormType = "rms"
    # Gemma's RMSNorm multiplies by (1 + weight); the effective scale is weight + offset.
    norm_weight_offset: float = 0.0
    # Reads the HF config into mechscope's dimensions; keys: n_layers, n_heads, n_kv_heads,
    # d_model, d_head, d_mlp, d_vocab, norm_eps, parallel_residual, final_logit_softcap.
    read_config: Callable[[Any], dict[str, Any]] = field(default=lambda config: {})

    @property
    def fused_qkv(self) -> bool:
        return self.qkv_proj is not None

    def path(self, layer: int, role: ModuleRole = "block") -> str:
        """Dotted module path of ``role`` in decoder layer ``layer`` (``"block"``: the layer itself),
        the one place module paths are built."""
        base = f"{self.layers}.{layer}"
        if role == "block":
            return base
        relative = getattr(self, role, None)
        if not isinstance(relative, str) or role not in _ROLES:
            raise MechscopeError(f"the {self.family} adapter has no module for role {role!r}; roles: "
                                 f"{', '.join(r for r in _ROLES if isinstance(getattr(self, r, None), str))}")
        return f"{base}.{relative}"


_ROLES = tuple(get_args(ModuleRole))


def standard_dims(config: Any) -> dict[str, Any]:
    """Dimensions of Llama-like configs (hidden_size, num_attention_heads, ...)."""
    n_heads = config.num_attention_heads
    return {
        "n_layers": config.num_hidden_layers,
        "n_heads": n_heads,
        "n_kv_heads": getattr(config, "num_key_value_heads", None) or n_heads,
        "d_model": config.hidden_size,
        "d_head": getattr(config, "head_dim", None) or config.hidden_size // n_heads,
        "d_mlp": config.intermediate_size,
        "d_vocab": config.vocab_size,
        "norm_eps": getattr(config, "rms_norm_eps", None) or getattr(config, "layer_norm_eps", 1e-5),
        "parallel_residual": False,
        "final_logit_softcap": getattr(config, "final_logit_softcapping", None),
    }
