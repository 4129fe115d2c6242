"""Building a model's hook catalogue from its adapter: which HF module (and which part of its
input or output) each TransformerLens-named hook point reads and writes."""

from __future__ import annotations

import difflib
import functools

import torch

from mechscope.errors import UnknownHookError
from mechscope.hooks import names
from mechscope.hooks.points import HookCatalogue, HookPoint
from mechscope.hooks.sites import (
    AttentionInternalSite,
    FusedQkvSite,
    HeadResultSite,
    ResidMidSite,
    Site,
    SplitHeadsSite,
)
from mechscope.models.adapters import ArchitectureAdapter
from mechscope.models.config import ModelConfig

# Axis names used in HookPoint.axes; sizes come from the model config (None = any size).
AXIS_SIZES = {
    "head": "n_heads",
    "kv_head": "n_kv_heads",
    "d_head": "d_head",
    "d_model": "d_model",
    "d_mlp": "d_mlp",
}
RESID = ("batch", "pos", "d_model")


def _sizes(cfg: ModelConfig, axes: tuple[str, ...]) -> tuple[int | None, ...]:
    return tuple(getattr(cfg, AXIS_SIZES[a]) if a in AXIS_SIZES else None for a in axes)


def build_catalogue(adapter: ArchitectureAdapter, cfg: ModelConfig, hf_model: torch.nn.Module) -> HookCatalogue:
    """Every hook point of ``hf_model`` in forward order."""
    points: list[HookPoint] = []

    def add(name, layer, axes, site, description, opt_in=False):
        points.append(HookPoint(name, layer, axes, _sizes(cfg, axes), site, description, opt_in))

    add(names.EMBED, None, RESID, Site(adapter.embed, "output"), "token embedding (scaled, for Gemma)")
    if adapter.pos_embed:
        add(names.POS_EMBED, None, RESID, Site(adapter.pos_embed, "output"), "learned position embedding")
    for layer in range(cfg.n_layers):
        points.extend(_layer_points(adapter, cfg, hf_model, layer))
    add(names.LN_FINAL, None, RESID, Site(adapter.final_norm, "output"),
        "final norm output, the input of the unembedding")
    return HookCatalogue(points, cfg)


def _layer_points(adapter: ArchitectureAdapter, cfg: ModelConfig, hf_model: torch.nn.Module, layer: int):
    def path(role) -> str:
        return adapter.path(layer, role)

    def point(suffix, axes, site, description, opt_in=False):
        return HookPoint(names.block(layer, suffix), layer, axes, _sizes(cfg, axes), site, description, opt_in)

    heads = dict(n_heads=cfg.n_heads, d_head=cfg.d_head)
    kv_heads = dict(n_heads=cfg.n_kv_heads, d_head=cfg.d_head)
    q_axes = ("batch", "pos", "head", "d_head")
    kv_axes = ("batch", "pos", "kv_head", "d_head")
    pattern_axes = ("batch", "head", "query_pos", "key_pos")
    o_proj = hf_model.get_submodule(path("o_proj"))
    block = path("block")

    yield point("hook_resid_pre", RESID, Site(block, "input"), "residual stream entering the block")
    yield point("ln1.hook_normalized", RESID, Site(path("ln1"), "output"), "attention input after ln1")
    if adapter.fused_qkv:
        qkv = path("qkv_proj")
        for part, letter in enumerate("qkv"):
            yield point(f"attn.hook_{letter}", q_axes,
                        FusedQkvSite(qkv, "output", part, part, adapter.qkv_layout, **heads),
                        f"{letter} projection output, before rotary")
    else:
        yield point("attn.hook_q", q_axes, SplitHeadsSite(path("q_proj"), "output", **heads),
                    "query projection output, before q-norm and rotary")
        yield point("attn.hook_k", kv_axes, SplitHeadsSite(path("k_proj"), "output", **kv_heads),
                    "key projection output (n_kv_heads), before k-norm and rotary")
        yield point("attn.hook_v", kv_axes, SplitHeadsSite(path("v_proj"), "output", **kv_heads),
                    "value projection output (n_kv_heads)")
    attn = path("attn")
    yield point("attn.hook_attn_scores", pattern_axes, AttentionInternalSite(attn, "output", 0, "scores", layer),
                "pre-softmax scores after scaling, soft-capping and masking (opt-in)", opt_in=True)
    yield point("attn.hook_pattern", pattern_axes, AttentionInternalSite(attn, "output", 1, "pattern", layer),
                "post-softmax attention pattern (opt-in)", opt_in=True)
    yield point("attn.hook_z", q_axes, SplitHeadsSite(path("o_proj"), "input", **heads),
                "per-head attention output: the o_proj input split by head")
    yield point("attn.hook_result", ("batch", "pos", "head", "d_model"),
                HeadResultSite(path("o_proj"), "output", 0, o_proj.weight, o_proj.bias,
                               adapter.o_proj_layout, **heads),
                "each head's o_proj contribution z @ W_O[head]"
                + (", before the post-attention norm" if adapter.attn_out_is_norm else
                   ": its write into the residual") + " (opt-in)", opt_in=True)
    yield point("hook_attn_out", RESID, Site(path("attn_out"), "output"),
                "attention output as added to the residual stream")
    ln2 = path("ln2")
    if not cfg.parallel_residual:
        yield point("hook_resid_mid", RESID, ResidMidSite(ln2, "input", 0, block),
                    "residual stream between attention and MLP")
    yield point("hook_mlp_in", RESID, Site(ln2, "input", 1),
                "MLP branch input before ln2 (writes change only the MLP branch)")
    yield point("ln2.hook_normalized", RESID, Site(ln2, "output"), "MLP input after ln2")
    yield point("mlp.hook_pre", ("batch", "pos", "d_mlp"), Site(path("mlp_in_proj"), "output"),
                "MLP pre-activation (the gate projection for gated MLPs)")
    if adapter.mlp_up_proj:
        yield point("mlp.hook_pre_linear", ("batch", "pos", "d_mlp"), Site(path("mlp_up_proj"), "output"),
                    "linear (up) projection of a gated MLP")
    yield point("mlp.hook_post", ("batch", "pos", "d_mlp"), Site(path("mlp_out_proj"), "input"),
                "MLP neurons: the down projection's input")
    yield point("hook_mlp_out", RESID, Site(path("mlp_out"), "output"),
                "MLP output as added to the residual stream")
    yield point("hook_resid_post", RESID, Site(block, "output", 1), "residual stream leaving the block")


_TOP_LEVEL_HOOKS = (names.EMBED, names.POS_EMBED, names.LN_FINAL)


@functools.cache
def known_hook_suffixes() -> tuple[str, ...]:
    """Every per-block hook suffix of every supported family, read off the tiny models' hook
    catalogues (milliseconds), so the list never drifts from what the models really have."""
    from mechscope.models.adapters import SUPPORTED_FAMILIES
    from mechscope.models.tiny import load_tiny  # tiny builds HookedModels, which import this module

    suffixes: dict[str, None] = {}
    for family in SUPPORTED_FAMILIES:
        for point in load_tiny(family).catalogue:
            parts = names.split_block_name(point.name)
            if parts is not None:
                suffixes[parts[1]] = None
    return tuple(suffixes)


def check_hook_syntax(name: str, field: str = "hook") -> str:
    """``name`` if it is a hook name some supported model has (``hook_embed``,
    ``blocks.{L}.<suffix>``, ``ln_final.hook_normalized``), checked without a model, so a typo is
    refused before one loads; whether layer L exists in *the* model is checked once it loads."""
    if name in _TOP_LEVEL_HOOKS:
        return name
    parts = names.split_block_name(name)
    suffixes = known_hook_suffixes()
    if parts is None:
        close = difflib.get_close_matches(name, [names.block(0, s) for s in suffixes] + list(_TOP_LEVEL_HOOKS), n=3)
        hint = f"; closest: {', '.join(close)}" if close else ""
        raise UnknownHookError(f"{field} {name!r} is not a hook name: hook names look like blocks.<layer>.<point>, "
                               f"e.g. blocks.3.hook_resid_post, or {', '.join(_TOP_LEVEL_HOOKS)}{hint}")
    layer, suffix = parts
    if suffix not in suffixes:
        close = difflib.get_close_matches(suffix, suffixes, n=4, cutoff=0.5)
        hint = (f"closest valid names: {', '.join(names.block(layer, s) for s in close)}" if close
                else f"valid points of a block: {', '.join(suffixes)}")
        raise UnknownHookError(f"unknown hook point {name!r}: no model has a {suffix!r} point; {hint}")
    return name
