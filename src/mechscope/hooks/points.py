"""The catalogue of hook points of a model: TransformerLens names mapped onto real HF modules."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

import torch

from mechscope.hooks.errors import HookFunctionError, MechscopeError, UnknownHookError
from mechscope.hooks.names import split_block_name
from mechscope.hooks.sites import Site


class CatalogueDims(Protocol):
    """What the catalogue needs to know of a model to explain a wrong name (a ModelConfig has it)."""

    n_layers: int
    parallel_residual: bool
    family: str


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


class HookCatalogue:
    """All hook points of one model, with name resolution and helpful errors."""

    def __init__(self, points: Iterable[HookPoint], cfg: CatalogueDims):
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
        parts = split_block_name(name)
        if parts:
            layer, suffix = parts
            if not 0 <= layer < self.cfg.n_layers:
                return (
                    f"layer {layer} in hook name {name!r} is out of range: the model has "
                    f"{self.cfg.n_layers} layers (0..{self.cfg.n_layers - 1})"
                )
            if suffix == "hook_resid_mid" and self.cfg.parallel_residual:
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
