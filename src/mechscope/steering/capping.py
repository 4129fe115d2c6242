"""Activation capping: hold a direction's projection within the range it takes on neutral text.

Directional ablation removes a direction everywhere, so it costs whatever the model does with
that direction on ordinary text. A fine-tuned behaviour often writes along directions ordinary
text uses too, only further. Capping keeps the projection of the residual stream entering each
layer on that layer's direction within the ``[quantile, 1 - quantile]`` range it takes on
neutral prompts: ordinary text passes almost untouched, and only the excursion is cut.

Positions whose residual is an outlier (the massive activations of the first token(s): the
norm of the part orthogonal to the direction more than ``outlier_norm`` times its median on
the neutral prompts) are left alone: their projections are not on the scale of the others,
and every later position reads them. The orthogonal part decides, so an excursion along the
direction itself, however large, is never mistaken for one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from mechscope.errors import MechscopeError
from mechscope.hooks.names import resid_pre
from mechscope.models.hooked_model import HookedModel, HookSpec
from mechscope.validate import check_int, check_number


@dataclass(frozen=True)
class LayerCap:
    """At ``layer``'s resid_pre: the unit ``direction`` [d_model], its projection's neutral
    range [``low``, ``high``] and the median norm of the residual's part orthogonal to it,
    ``typical_norm``."""

    layer: int
    direction: torch.Tensor
    low: float
    high: float
    typical_norm: float


@dataclass(frozen=True)
class ActivationCap:
    """Capping at every layer of ``caps`` (see the module docstring); ``outlier_norm``:
    positions whose orthogonal norm is above this multiple of the typical one are left alone."""

    caps: tuple[LayerCap, ...]
    outlier_norm: float = 4.0

    def __post_init__(self) -> None:
        if not self.caps:
            raise MechscopeError("activation capping needs at least one layer's cap")
        check_number("outlier_norm", self.outlier_norm, 1, strict_minimum=True)

    def hooks(self, model: HookedModel, generating: bool = False) -> HookSpec:
        out = []
        for cap in self.caps:
            check_int("layer", cap.layer, 0, model.cfg.n_layers - 1)
            if cap.direction.shape != (model.cfg.d_model,):
                raise MechscopeError(f"layer {cap.layer}'s cap direction has shape {tuple(cap.direction.shape)}; "
                                     f"the model's residual stream has width {model.cfg.d_model}")

            def capped(activation: torch.Tensor, hook, cap: LayerCap = cap) -> torch.Tensor:
                direction = cap.direction.to(activation.device, activation.dtype)
                projection = activation @ direction  # [batch, pos]
                orthogonal = activation - projection[..., None] * direction
                typical = orthogonal.norm(dim=-1) < self.outlier_norm * cap.typical_norm
                shift = torch.where(typical, projection.clamp(cap.low, cap.high) - projection, 0.0)
                return activation + shift[..., None] * direction

            out.append((resid_pre(cap.layer), capped))
        return out

    def to_state(self) -> tuple[dict, dict[str, torch.Tensor]]:
        """(JSON-able ranges, {"directions": [n_caps, d_model]}): what :meth:`from_state` reads
        back, for safetensors and JSON files."""
        state = {"outlier_norm": self.outlier_norm,
                 "caps": [{"layer": c.layer, "low": c.low, "high": c.high, "typical_norm": c.typical_norm}
                          for c in self.caps]}
        return state, {"directions": torch.stack([c.direction.float() for c in self.caps])}

    @classmethod
    def from_state(cls, state: dict, tensors: Mapping[str, torch.Tensor]) -> ActivationCap:
        directions = tensors["directions"]
        if directions.shape[0] != len(state["caps"]):
            raise MechscopeError(f"saved caps hold {directions.shape[0]} directions for {len(state['caps'])} caps "
                                 "(one direction per cap; the file is damaged or from another run)")
        return cls(tuple(LayerCap(row["layer"], direction, row["low"], row["high"], row["typical_norm"])
                         for row, direction in zip(state["caps"], directions)), state["outlier_norm"])


def fit_caps(model: HookedModel, directions: Mapping[int, torch.Tensor], prompts: Sequence[str],
             quantile: float = 0.01, outlier_norm: float = 4.0, chat: bool | None = None,
             batch_size: int = 16) -> ActivationCap:
    """Caps of ``directions`` ({layer: [d_model] vector, or [k, d_model] for k directions at
    that layer, each capped on its own}, normalised here) at their projections' ``quantile``
    and ``1 - quantile`` over every typical position of ``prompts`` (chat template per
    ``chat``, as :meth:`HookedModel.tokenize_prompts`)."""
    return fit_cap_ladder(model, directions, prompts, (quantile,), outlier_norm, chat, batch_size)[0]


@torch.no_grad()
def fit_cap_ladder(model: HookedModel, directions: Mapping[int, torch.Tensor], prompts: Sequence[str],
                   quantiles: Sequence[float], outlier_norm: float = 4.0, chat: bool | None = None,
                   batch_size: int = 16) -> list[ActivationCap]:
    """:func:`fit_caps` at each of ``quantiles``, from one pass over ``prompts``."""
    if not quantiles:
        raise MechscopeError("fitting caps needs at least one quantile")
    for quantile in quantiles:
        check_number("quantile", quantile, 0, 0.5, strict_minimum=False)
    if not directions or not prompts:
        raise MechscopeError("fitting caps needs at least one direction and some neutral prompts")
    units: list[tuple[int, torch.Tensor]] = []  # (layer, unit direction), in layer order
    for layer in sorted(directions):
        check_int("layer", layer, 0, model.cfg.n_layers - 1)
        rows = directions[layer].float().reshape(-1, directions[layer].shape[-1])
        if rows.shape[-1] != model.cfg.d_model:
            raise MechscopeError(f"layer {layer}'s directions have width {rows.shape[-1]}; the model's residual "
                                 f"stream has width {model.cfg.d_model}")
        units += [(layer, row / row.norm().clamp_min(1e-12)) for row in rows]
    projections: list[list[torch.Tensor]] = [[] for _ in units]
    norms: list[list[torch.Tensor]] = [[] for _ in units]
    names = sorted({resid_pre(layer) for layer, _ in units})
    for start in range(0, len(prompts), batch_size):
        tokens, mask = model.tokenize_prompts(list(prompts[start:start + batch_size]), chat)
        _, cache = model.run_with_cache(tokens, names=names, device="cpu", attention_mask=mask)
        real = torch.ones(tokens.shape, dtype=torch.bool) if mask is None else mask.cpu().bool()
        for index, (layer, unit) in enumerate(units):
            states = cache[resid_pre(layer)].float()[real]  # [positions, d_model]
            projection = states @ unit
            projections[index].append(projection)
            norms[index].append((states - projection[:, None] * unit).norm(dim=-1))
    ladder: list[list[LayerCap]] = [[] for _ in quantiles]
    levels = torch.tensor([[q, 1 - q] for q in quantiles]).flatten()
    for (layer, unit), norm, projection in zip(units, norms, projections):
        norm, projection = torch.cat(norm), torch.cat(projection)
        typical_norm = float(norm.median())
        bounds = torch.quantile(projection[norm < outlier_norm * typical_norm], levels).tolist()
        for rung, (low, high) in zip(ladder, zip(bounds[::2], bounds[1::2])):
            rung.append(LayerCap(layer, unit, low, high, typical_norm))
    return [ActivationCap(tuple(caps), outlier_norm) for caps in ladder]


__all__ = ["ActivationCap", "LayerCap", "fit_cap_ladder", "fit_caps"]
