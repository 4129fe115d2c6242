"""Units to explain: where their activations come from and, for the output side, their direction.

A :class:`UnitSource` names a hook, the units' names, a function from the hook's activations
[batch, pos, d] to the units' [batch, pos, n_units], and (when the units write into the residual
stream) each unit's residual :class:`~mechscope.steering.direction.Direction`, which the
``output`` explainer and the ``intervention`` scorer steer along. Sources:

- :func:`sae_units`: dictionary latents (SAE, transcoder: the encoder's output, the decoder row);
- :func:`neuron_units`: MLP neurons (``blocks.L.mlp.hook_post``; the down-projection's column);
- :func:`direction_units`: probe or steering directions, whose activation is the projection of
  the residual stream before their layer onto them.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch

from mechscope.errors import ConfigError, MechscopeError, OutOfRangeError
from mechscope.hooks import names
from mechscope.hooks.names import resid_pre
from mechscope.models.hooked_model import HookedModel
from mechscope.steering.direction import Direction, sae_direction


@dataclass(frozen=True)
class UnitSource:
    """``names`` of the units; ``activation_fn`` [batch, pos, d] at ``hook_name`` -> [batch, pos,
    len(names)]; ``direction(i)`` the residual direction of unit i (None: the units have none)."""

    hook_name: str
    names: tuple[str, ...]
    activation_fn: Callable[[torch.Tensor], torch.Tensor]
    direction: Callable[[int], Direction] | None = None

    def __post_init__(self) -> None:
        if not self.names:
            raise ConfigError("a unit source needs at least one unit")
        if len(set(self.names)) != len(self.names):
            raise ConfigError("unit names must be distinct")


def writes_before(hook_name: str, n_layers: int) -> int:
    """The block a direction read at ``hook_name`` is added before: a block's output (resid_post,
    mlp_out) enters the next block; resid_pre enters its own."""
    match = re.fullmatch(r"blocks\.(\d+)\.(hook_resid_pre|hook_resid_post|hook_mlp_out|mlp\.hook_post)", hook_name)
    if match is None:
        raise MechscopeError(f"{hook_name} does not write into the residual stream at a block boundary, so its units "
                             "cannot be steered; output explanations and intervention scores need a hook among "
                             "blocks.L.hook_resid_pre, hook_resid_post, hook_mlp_out, mlp.hook_post")
    layer = int(match.group(1)) + (match.group(2) != "hook_resid_pre")
    if layer >= n_layers:
        raise MechscopeError(f"{hook_name} is the last block's output: no block follows it to steer")
    return layer


def sae_units(model: HookedModel, sae, latents: Sequence[int], hook_name: str | None = None) -> UnitSource:
    """Dictionary latents ``latents`` of ``sae`` (read at its own hook unless ``hook_name``)."""
    from mechscope.sae.runs import check_fits

    hook = check_fits(model, sae, hook_name)
    latents = [int(i) for i in latents]
    bad = [i for i in latents if not 0 <= i < sae.cfg.d_sae]
    if bad:
        raise OutOfRangeError(f"latents {bad[:8]} out of range; the dictionary has {sae.cfg.d_sae} (0..{sae.cfg.d_sae - 1})")
    index = torch.tensor(latents)

    def activations(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return sae.encode(x)[..., index]

    def direction(i: int) -> Direction:
        return sae_direction(sae, latents[i], writes_before(hook, model.cfg.n_layers))

    return UnitSource(hook, tuple(f"latent {i}" for i in latents), activations, direction)


def neuron_units(model: HookedModel, layer: int, neurons: Sequence[int]) -> UnitSource:
    """MLP neurons ``neurons`` of block ``layer`` (their post-activation values)."""
    hook = names.mlp(layer, "post")
    if hook not in model.hook_names():
        raise MechscopeError(f"{model.cfg.name or model.cfg.family} has no {hook} (layers 0..{model.cfg.n_layers - 1})")
    width = model.hook_point(hook).shape[-1]
    neurons = [int(n) for n in neurons]
    bad = [n for n in neurons if not 0 <= n < (width or 0)]
    if bad:
        raise OutOfRangeError(f"neurons {bad[:8]} out of range; layer {layer} has {width} (0..{(width or 1) - 1})")
    index = torch.tensor(neurons)
    projection = model.hf_model.get_submodule(model.adapter.path(layer, "mlp_out_proj"))

    def direction(i: int) -> Direction:
        # What the down-projection writes for a unit input on this neuron (any weight layout);
        # a norm after the MLP (Gemma) is not applied, so there it is the pre-norm direction.
        basis = torch.zeros(2, width, dtype=model.dtype, device=model.device)
        basis[1, neurons[i]] = 1
        with torch.no_grad():
            written = projection(basis).float()
        return Direction.from_vector((written[1] - written[0]).cpu(), layer + 1, "user", {"neuron": neurons[i]})

    return UnitSource(hook, tuple(f"L{layer} neuron {n}" for n in neurons), lambda x: x[..., index],
                      direction if layer + 1 < model.cfg.n_layers else None)


def direction_units(directions: Mapping[str, Direction]) -> UnitSource:
    """Probe or steering directions (all at one layer): each unit's activation is the residual
    stream before that layer projected onto the direction."""
    if not directions:
        raise ConfigError("direction_units needs at least one direction")
    layers = {d.layer for d in directions.values()}
    if len(layers) != 1 or None in layers:
        raise ConfigError(f"directions must all record one layer; got layers {sorted(map(str, layers))}")
    (layer,) = layers
    names = tuple(directions)
    matrix = torch.stack([directions[name].vector for name in names], -1)  # [d_model, n]
    return UnitSource(resid_pre(layer), names, lambda x: x.float() @ matrix.to(x.device),
                      lambda i: directions[names[i]])


__all__ = ["UnitSource", "direction_units", "neuron_units", "sae_units", "writes_before"]
