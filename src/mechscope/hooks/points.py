"""The catalogue of hook points of a model: TransformerLens names mapped onto real HF modules."""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from mechscope.hooks.errors import HookFunctionError, MechscopeError, UnknownHookError
from mechscope.hooks.sites import (
    AttentionInternalSite,
    FusedQkvSite,
    HeadResultSite,
    ResidMidSite,
    Site,
    SplitHeadsSite,
)

if TYPE_CHECKING:  # models imports hooks; keep this module free of that import cycle
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


@dataclass(frozen=True, eq=False)
class HookPoint:
    """One named activation. This object is the ``hook`` argument of hook functions.

    ``axes`` names each dimension of the activation; ``shape`` gives fixed sizes (None where
    the size depends on the input). ``opt_in`` points are only computed when asked for by name
    or by a filter, because they cost extra compute.
    """

    name: str
    layer_index: int | None
    axes: tuple[str, ...]
    shape: tuple[int | None, ...]
    site: Site
    description: str
    opt_in: bool = False

    def layer(self) -> int:
        """The block index of this hook point (TransformerLens' ``hook.layer()``)."""
        if self.layer_index is None:
            raise MechscopeError(f"hook point {self.name!r} does not belong to a block")
        return self.layer_index

    @property
    def position_axis(self) -> int | None:
        """Index of the token-position axis (the query position for patterns), or None."""
        return next((i for i, name in enumerate(self.axes) if name in ("pos", "query_pos")), None)

    @property
    def head_axis(self) -> int | None:
        """Index of the head axis (query heads, or kv heads for k / v), or None."""
        return next((i for i, name in enumerate(self.axes) if name in ("head", "kv_head")), None)

    def check_shape(self, value: torch.Tensor, reference: torch.Tensor) -> None:
        if not isinstance(value, torch.Tensor):
            raise HookFunctionError(
                f"hook on {self.name!r} returned {type(value).__name__}; return a tensor of shape "
                f"{tuple(reference.shape)} or None"
            )
        if value.shape != reference.shape:
            raise MechscopeError(
                f"hook on {self.name!r} returned shape {tuple(value.shape)}, expected "
                f"{tuple(reference.shape)} {self.axes}"
            )

    def __repr__(self) -> str:
        return f"HookPoint({self.name!r})"


def _sizes(cfg: ModelConfig, axes: tuple[str, ...]) -> tuple[int | None, ...]:
    return tuple(getattr(cfg, AXIS_SIZES[a]) if a in AXIS_SIZES else None for a in axes)


class HookCatalogue:
    """All hook points of one model, with name resolution and helpful errors."""

    def __init__(self, points: Iterable[HookPoint], cfg: ModelConfig):
        self.cfg = cfg
        self.points: dict[str, HookPoint] = {p.name: p for p in points}

    def __contains__(self, name: str) -> bool:
        return name in self.points

    def __iter__(self):
        return iter(self.points.values())

    def __len__(self) -> int:
        return len(self.points)

    def names(self, include_opt_in: bool = True) -> list[str]:
        return [n for n, p in self.points.items() if include_opt_in or not p.opt_in]

    def get(self, name: str) -> HookPoint:
        if name in self.points:
            return self.points[name]
        raise UnknownHookError(self._unknown_message(name))

    def _unknown_message(self, name: str) -> str:
        match = re.match(r"blocks\.(-?\d+)\.(.*)", name)
        if match:
            layer = int(match.group(1))
            if not 0 <= layer < self.cfg.n_layers:
                return (
                    f"layer {layer} in hook name {name!r} is out of range: the model has "
                    f"{self.cfg.n_layers} layers (0..{self.cfg.n_layers - 1})"
                )
            if match.group(2) == "hook_resid_mid" and self.cfg.parallel_residual:
                return (
                    f"{name!r} does not exist: this {self.cfg.family} model runs attention and MLP in "
                    "parallel, so there is no residual stream between them; use hook_resid_pre / "
                    "hook_resid_post"
                )
        close = difflib.get_close_matches(name, list(self.points), n=5, cutoff=0.6)
        hint = f"; closest valid names: {', '.join(close)}" if close else ""
        return f"unknown hook point {name!r}{hint} (model.hook_names() lists all {len(self.points)})"

    def resolve(self, selector: str | Callable[[str], bool] | Iterable[str] | None) -> list[HookPoint]:
        """Hook points selected by a name, a name filter, a list of names, or None (all default
        points, i.e. everything except the opt-in ones)."""
        if selector is None:
            return [p for p in self.points.values() if not p.opt_in]
        if isinstance(selector, str):
            return [self.get(selector)]
        if callable(selector):
            return [p for p in self.points.values() if selector(p.name)]
        selected = [self.get(name) for name in selector]
        return list({p.name: p for p in selected}.values())


def build_catalogue(adapter: ArchitectureAdapter, cfg: ModelConfig, hf_model: torch.nn.Module) -> HookCatalogue:
    """Every hook point of ``hf_model`` in forward order."""
    points: list[HookPoint] = []

    def add(name, layer, axes, site, description, opt_in=False):
        points.append(HookPoint(name, layer, axes, _sizes(cfg, axes), site, description, opt_in))

    add("hook_embed", None, RESID, Site(adapter.embed, "output"), "token embedding (scaled, for Gemma)")
    if adapter.pos_embed:
        add("hook_pos_embed", None, RESID, Site(adapter.pos_embed, "output"), "learned position embedding")
    for layer in range(cfg.n_layers):
        points.extend(_layer_points(adapter, cfg, hf_model, layer))
    add("ln_final.hook_normalized", None, RESID, Site(adapter.final_norm, "output"),
        "final norm output, the input of the unembedding")
    return HookCatalogue(points, cfg)


def _layer_points(adapter: ArchitectureAdapter, cfg: ModelConfig, hf_model: torch.nn.Module, layer: int):
    prefix = f"blocks.{layer}."
    base = f"{adapter.layers}.{layer}"

    def path(relative: str) -> str:
        return f"{base}.{relative}"

    def point(name, axes, site, description, opt_in=False):
        return HookPoint(prefix + name, layer, axes, _sizes(cfg, axes), site, description, opt_in)

    heads = dict(n_heads=cfg.n_heads, d_head=cfg.d_head)
    kv_heads = dict(n_heads=cfg.n_kv_heads, d_head=cfg.d_head)
    q_axes = ("batch", "pos", "head", "d_head")
    kv_axes = ("batch", "pos", "kv_head", "d_head")
    pattern_axes = ("batch", "head", "query_pos", "key_pos")
    o_proj = hf_model.get_submodule(path(adapter.o_proj))

    yield point("hook_resid_pre", RESID, Site(base, "input"), "residual stream entering the block")
    yield point("ln1.hook_normalized", RESID, Site(path(adapter.ln1), "output"), "attention input after ln1")
    if adapter.fused_qkv:
        qkv = path(adapter.qkv_proj)
        for part, letter in enumerate("qkv"):
            yield point(f"attn.hook_{letter}", q_axes,
                        FusedQkvSite(qkv, "output", part, part, adapter.qkv_layout, **heads),
                        f"{letter} projection output, before rotary")
    else:
        yield point("attn.hook_q", q_axes, SplitHeadsSite(path(adapter.q_proj), "output", **heads),
                    "query projection output, before q-norm and rotary")
        yield point("attn.hook_k", kv_axes, SplitHeadsSite(path(adapter.k_proj), "output", **kv_heads),
                    "key projection output (n_kv_heads), before k-norm and rotary")
        yield point("attn.hook_v", kv_axes, SplitHeadsSite(path(adapter.v_proj), "output", **kv_heads),
                    "value projection output (n_kv_heads)")
    attn = path(adapter.attn)
    yield point("attn.hook_attn_scores", pattern_axes, AttentionInternalSite(attn, "output", 0, "scores", layer),
                "pre-softmax scores after scaling, soft-capping and masking (opt-in)", opt_in=True)
    yield point("attn.hook_pattern", pattern_axes, AttentionInternalSite(attn, "output", 1, "pattern", layer),
                "post-softmax attention pattern (opt-in)", opt_in=True)
    yield point("attn.hook_z", q_axes, SplitHeadsSite(path(adapter.o_proj), "input", **heads),
                "per-head attention output: the o_proj input split by head")
    yield point("attn.hook_result", ("batch", "pos", "head", "d_model"),
                HeadResultSite(path(adapter.o_proj), "output", 0, o_proj.weight, o_proj.bias,
                               adapter.o_proj_layout, **heads),
                "each head's o_proj contribution z @ W_O[head]"
                + (", before the post-attention norm" if adapter.attn_out_is_norm else
                   ": its write into the residual") + " (opt-in)", opt_in=True)
    yield point("hook_attn_out", RESID, Site(path(adapter.attn_out), "output"),
                "attention output as added to the residual stream")
    ln2 = path(adapter.ln2)
    if not cfg.parallel_residual:
        yield point("hook_resid_mid", RESID, ResidMidSite(ln2, "input", 0, base),
                    "residual stream between attention and MLP")
    yield point("hook_mlp_in", RESID, Site(ln2, "input", 1),
                "MLP branch input before ln2 (writes change only the MLP branch)")
    yield point("ln2.hook_normalized", RESID, Site(ln2, "output"), "MLP input after ln2")
    yield point("mlp.hook_pre", ("batch", "pos", "d_mlp"), Site(path(adapter.mlp_in_proj), "output"),
                "MLP pre-activation (the gate projection for gated MLPs)")
    if adapter.mlp_up_proj:
        yield point("mlp.hook_pre_linear", ("batch", "pos", "d_mlp"), Site(path(adapter.mlp_up_proj), "output"),
                    "linear (up) projection of a gated MLP")
    yield point("mlp.hook_post", ("batch", "pos", "d_mlp"), Site(path(adapter.mlp_out_proj), "input"),
                "MLP neurons: the down projection's input")
    yield point("hook_mlp_out", RESID, Site(path(adapter.mlp_out), "output"),
                "MLP output as added to the residual stream")
    yield point("hook_resid_post", RESID, Site(base, "output", 1), "residual stream leaving the block")
