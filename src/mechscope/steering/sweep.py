"""Sweeps of steering strength and layer, scored for behaviour against side effects, with an
automatic choice under a KL budget and a plot of the trade-off."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field

import torch
from tqdm.auto import tqdm

from mechscope.errors import ConfigError, MechscopeError
from mechscope.models.hooked_model import HookedModel
from mechscope.steering.apply import PHASES, Phase, Steering
from mechscope.steering.direction import Direction
from mechscope.steering.evaluate import Behaviour, last_token_logits, next_token_kl, perplexity
from mechscope.validate import check_choice, check_int, check_number, options_from


@dataclass
class SweepPoint:
    """One (layer, alpha) setting: behaviour score, KL on neutral prompts (nats), perplexity.
    ``alpha`` is absolute; ``scale`` is the steered direction's scale (alpha / scale is the
    strength in units of the distance between the class means)."""

    layer: int
    alpha: float
    behaviour: float
    kl: float
    perplexity: float | None
    scale: float = 1.0


@dataclass
class SteeringSweep:
    """All points of a sweep, plus the unsteered baseline (alpha 0)."""

    points: list[SweepPoint]
    baseline_behaviour: float
    baseline_perplexity: float | None
    metadata: dict = field(default_factory=dict)

    def choose(self, kl_budget: float = 0.1, maximise: bool = True) -> SweepPoint:
        """The point with the highest (``maximise``) or lowest behaviour score whose KL stays within
        ``kl_budget``; an error says how close the sweep came if none does."""
        within = [point for point in self.points if point.kl <= kl_budget]
        if not within:
            lowest = min(self.points, key=lambda p: p.kl)
            raise MechscopeError(f"no setting keeps KL within {kl_budget}; the lowest KL was {lowest.kl:.4f} "
                             f"(layer {lowest.layer}, alpha {lowest.alpha})")
        return (max if maximise else min)(within, key=lambda p: p.behaviour)

    def to_json(self) -> dict:
        return {"baseline_behaviour": self.baseline_behaviour, "baseline_perplexity": self.baseline_perplexity,
                "metadata": self.metadata, "points": [asdict(point) for point in self.points]}

    def plot(self, title: str = "steering: behaviour against KL on neutral prompts"):
        """Plotly figure: behaviour score against KL, one line per layer (points ordered by alpha)."""
        import plotly.graph_objects as go

        figure = go.Figure()
        for layer in sorted({point.layer for point in self.points}):
            row = sorted((p for p in self.points if p.layer == layer), key=lambda p: p.alpha)
            figure.add_trace(go.Scatter(x=[p.kl for p in row], y=[p.behaviour for p in row], mode="lines+markers",
                                        name=f"layer {layer}", text=[f"alpha {p.alpha:g}" for p in row]))
        figure.add_hline(y=self.baseline_behaviour, line_dash="dot", annotation_text="unsteered")
        figure.update_layout(title=title, xaxis_title="KL on neutral prompts (nats)", yaxis_title="behaviour score",
                             xaxis_type="log")
        return figure


@dataclass(frozen=True)
class SweepConfig:
    """The settings of :func:`sweep`, checked on construction: ``alphas`` must be finite (a NaN
    strength gives NaN logits), ``layers`` None means the keys of a per-layer direction mapping."""

    alphas: tuple[float, ...] = ()
    layers: tuple[int, ...] | None = None
    relative: bool = False
    positions: Phase | tuple[int, ...] = "all"
    chat: bool | None = None

    def __post_init__(self) -> None:
        if not self.alphas:
            raise ConfigError("give at least one alpha")
        object.__setattr__(self, "alphas", tuple(check_number("alpha", alpha) for alpha in self.alphas))
        if self.layers is not None:
            object.__setattr__(self, "layers", tuple(check_int("layer", layer, minimum=0) for layer in self.layers))
        if isinstance(self.positions, str):
            check_choice("positions", self.positions, PHASES)
        else:
            object.__setattr__(self, "positions", tuple(self.positions))


def sweep(
    model: HookedModel,
    direction: Direction | Mapping[int, Direction],
    behaviour: Behaviour,
    neutral_prompts: Sequence[str],
    alphas: Sequence[float] = (),
    layers: Sequence[int] | None = None,
    relative: bool = False,
    contexts: torch.Tensor | None = None,
    positions: Phase | Sequence[int] = "all",
    chat: bool | None = None,
    progress: bool = True,
    config: SweepConfig | None = None,
) -> SteeringSweep:
    """Steer at each layer and strength; score ``behaviour``, the KL of the next-token
    distribution on ``neutral_prompts`` and, when ``contexts`` [n, pos] are given (e.g.
    :func:`default_contexts`), perplexity on them.

    ``direction``: one Direction for every layer, or {layer: Direction} (e.g. read at each layer
    by :func:`contrast_directions`), whose keys are the default ``layers``. ``relative=True``
    reads ``alphas`` as multiples of each direction's scale. ``config``: a :class:`SweepConfig`
    in place of ``alphas``, ``layers``, ``relative``, ``positions`` and ``chat``."""
    config = options_from(SweepConfig, config, alphas=tuple(alphas), layers=None if layers is None else tuple(layers),
                          relative=relative, chat=chat,
                          positions=positions if isinstance(positions, str) else tuple(positions))
    alphas, relative, positions, chat = config.alphas, config.relative, config.positions, config.chat
    layers = None if config.layers is None else list(config.layers)
    per_layer = dict(direction) if isinstance(direction, Mapping) else None
    if layers is None:
        if per_layer is None:
            raise MechscopeError("give layers= (or a {layer: Direction} mapping whose keys are the layers)")
        layers = sorted(per_layer)
    missing = [layer for layer in layers if per_layer is not None and layer not in per_layer]
    if missing:
        raise MechscopeError(f"no direction for layers {missing}; the mapping has {sorted(per_layer)}")
    if not layers or not alphas:
        raise MechscopeError("give at least one layer and one alpha")
    reference = last_token_logits(model, neutral_prompts, (), chat)
    baseline_perplexity = None if contexts is None else perplexity(model, contexts)
    points = []
    settings = [(layer, alpha) for layer in layers for alpha in alphas]
    for layer, alpha in tqdm(settings, desc="steering sweep", disable=not progress):
        chosen = direction if per_layer is None else per_layer[layer]
        strength = float(alpha) * (chosen.scale if relative else 1.0)
        hooks = Steering(chosen, strength, layers=layer, positions=positions).hooks(model)
        points.append(SweepPoint(
            layer=layer, alpha=strength, behaviour=behaviour.score(model, hooks),
            kl=next_token_kl(model, neutral_prompts, hooks, chat, reference=reference),
            perplexity=None if contexts is None else perplexity(model, contexts, hooks), scale=chosen.scale,
        ))
    first = direction if per_layer is None else per_layer[layers[0]]
    metadata = {"direction_method": first.method, "per_layer_directions": per_layer is not None,
                "relative_alphas": relative, "positions": positions}
    return SteeringSweep(points, behaviour.score(model), baseline_perplexity, metadata)
