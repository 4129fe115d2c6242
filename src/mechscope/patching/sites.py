"""Patching sites: which activations a sweep patches, one unit at a time, with axis labels."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from mechscope.errors import MechscopeError
from mechscope.hooks.names import block
from mechscope.models.hooked_model import HookedModel

# site kind -> (hook point suffix within a block, has positions axis, head kind or None)
SITE_KINDS = {
    "resid_pre": ("hook_resid_pre", True, None),
    "resid_mid": ("hook_resid_mid", True, None),
    "resid_post": ("hook_resid_post", True, None),
    "attn_out": ("hook_attn_out", True, None),
    "mlp_out": ("hook_mlp_out", True, None),
    "heads": ("attn.hook_z", False, "head"),
    "heads_by_pos": ("attn.hook_z", True, "head"),
    "q": ("attn.hook_q", False, "head"),
    "k": ("attn.hook_k", False, "kv_head"),
    "v": ("attn.hook_v", False, "kv_head"),
    "pattern": ("attn.hook_pattern", False, "head"),
}
SiteKind = Literal["resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out", "heads", "heads_by_pos",
                   "q", "k", "v", "pattern"]


@dataclass(frozen=True)
class PatchUnit:
    """One patched site: a hook point, restricted to one head and/or one position (None = all).
    For ``hook_pattern`` the position restricts the query position."""

    hook_name: str
    head: int | None
    position: int | None


@dataclass(frozen=True)
class SiteGrid:
    """The units of a sweep laid out on named axes: ``units[i]`` has grid index ``index[i]``."""

    kind: str
    axes: tuple[str, ...]
    shape: tuple[int, ...]
    units: tuple[PatchUnit, ...]
    layers: tuple[int, ...]

    @property
    def hook_names(self) -> list[str]:
        return list(dict.fromkeys(unit.hook_name for unit in self.units))


def site_grid(model: HookedModel, kind: str, n_positions: int, layers: list[int] | None = None) -> SiteGrid:
    """Every unit of ``kind`` over ``layers`` (default all) and ``n_positions`` positions, in
    row-major order of the axes: (layer, position), (layer, head) or (layer, head, position)."""
    if kind not in SITE_KINDS:
        raise MechscopeError(f"unknown site kind {kind!r}; choose one of: {', '.join(SITE_KINDS)}")
    suffix, by_position, head_kind = SITE_KINDS[kind]
    if kind == "resid_mid" and model.cfg.parallel_residual:
        raise MechscopeError(f"{model.cfg.family} runs attention and MLP in parallel: there is no resid_mid")
    layers = list(range(model.cfg.n_layers)) if layers is None else list(layers)
    bad = [layer for layer in layers if not 0 <= layer < model.cfg.n_layers]
    if bad:
        raise MechscopeError(f"layers {bad} out of range for a model with {model.cfg.n_layers} layers")
    n_heads = {"head": model.cfg.n_heads, "kv_head": model.cfg.n_kv_heads, None: 1}[head_kind]
    units = []
    for layer in layers:
        name = block(layer, suffix)
        for head in range(n_heads) if head_kind else [None]:
            for position in range(n_positions) if by_position else [None]:
                units.append(PatchUnit(name, head, position))
    axes = ("layer",) + ((head_kind,) if head_kind else ()) + (("position",) if by_position else ())
    shape = (len(layers),) + ((n_heads,) if head_kind else ()) + ((n_positions,) if by_position else ())
    return SiteGrid(kind, axes, shape, tuple(units), tuple(layers))
