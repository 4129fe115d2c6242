"""Units to explain: where their activations come from and, for the output side, their direction.

A :class:`UnitSource` names a hook, the units' names, a function from the hook's activations
[batch, pos, d] to the units' [batch, pos, n_units], and (when the units write into the residual
stream) each unit's residual :class:`~mechscope.steering.direction.Direction`, which the
``output`` explainer and the ``intervention`` scorer steer along. Sources:

- :func:`sae_units`: dictionary latents (SAE, transcoder: the encoder's output, the decoder row);
- :func:`neuron_units`: MLP neurons (``blocks.L.mlp.hook_post``; the down-projection's column);
- :func:`head_units`: attention heads, each read along its output direction (what it writes most
  strongly into the residual stream);
- :func:`direction_units`: probe or steering directions, whose activation is the projection of
  the residual stream before their layer onto them;
- :func:`crosscoder_units`: a crosscoder's latents, read from the base and the fine-tuned model
  together (the fine-tune's decoder half is the direction).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from mechscope.errors import ConfigError, MechscopeError, OutOfRangeError
from mechscope.hooks import names
from mechscope.hooks.names import resid_pre
from mechscope.models.hooked_model import HookedModel
from mechscope.steering.direction import Direction, sae_direction


@dataclass(frozen=True)
class UnitSource:
    """``names`` of the units; ``activation_fn`` [batch, pos, d] at ``hook_name`` -> [batch, pos,
    len(names)]; ``direction(i)`` the residual direction of unit i (None: the units have none).

    Units that are not a function of one hook of the model explained (a crosscoder's latents read
    the base and the fine-tuned model together) give ``collect`` instead of ``activation_fn``:
    token contexts [n, pos] and a progress flag -> their activations [n, pos, len(names)], BOS
    (position 0) set to 0; ``hook_name`` then only names where they are read."""

    hook_name: str
    names: tuple[str, ...]
    activation_fn: Callable[[torch.Tensor], torch.Tensor] | None
    direction: Callable[[int], Direction] | None = None
    collect: Callable[[torch.Tensor, bool], torch.Tensor] | None = None

    def __post_init__(self) -> None:
        if not self.names:
            raise ConfigError("a unit source needs at least one unit")
        if len(set(self.names)) != len(self.names):
            raise ConfigError("unit names must be distinct")
        if (self.activation_fn is None) == (self.collect is None):
            raise ConfigError("a unit source needs exactly one of activation_fn (from one hook's activations) and "
                              "collect (from token contexts)")

    def activations(self, model: HookedModel, contexts: torch.Tensor, progress: bool = True) -> torch.Tensor:
        """The units' activations [n, pos, len(names)] over token ``contexts`` [n, pos], BOS set to 0
        (read as the feature dashboards read them)."""
        from mechscope.sae.dashboard import collect

        values = self.collect(contexts, progress) if self.collect is not None else \
            collect(model, contexts, self.hook_name, self.activation_fn, progress=progress)
        if values.shape[:2] != contexts.shape or values.shape[-1] != len(self.names):
            raise MechscopeError(f"the unit source gave activations of shape {tuple(values.shape)} for contexts "
                                 f"{tuple(contexts.shape)} and {len(self.names)} units; expected "
                                 f"{(*contexts.shape, len(self.names))}")
        return values


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


def head_units(model: HookedModel, layer: int, heads: Sequence[int],
               sides: Literal["positive", "both"] = "positive") -> UnitSource:
    """Attention heads ``heads`` of block ``layer``, each read along its output direction.

    Head h writes ``z_h @ W_O_h`` (z_h [d_head], W_O_h [d_head, d_model]) into the residual
    stream; its output direction u_h [d_model] is the top right singular vector of W_O_h, the
    direction it can write most strongly. The unit's activation at a position is the head's write
    projected onto it, ``z_h @ W_O_h @ u_h`` (read from ``blocks.L.attn.hook_z`` [batch, pos,
    n_heads, d_head]). A singular vector's sign is arbitrary; it is fixed so that u_h's largest
    coordinate is positive, and ``sides="both"`` adds each head's negative side (named
    ``L{layer}H{h}-``) as a unit of its own. The unit's steering direction is s_1 * u_h (what a
    unit write along the top singular pair adds), added before block ``layer + 1``; in families
    with a norm after attention (Gemma) the direction is the one before that norm.
    """
    if sides not in ("positive", "both"):
        raise ConfigError(f"sides must be 'positive' or 'both', got {sides!r}")
    hook = names.attn(layer, "z")
    if hook not in model.hook_names():
        raise MechscopeError(f"{model.cfg.name or model.cfg.family} has no {hook} (layers 0..{model.cfg.n_layers - 1})")
    heads = [int(h) for h in heads]
    bad = [h for h in heads if not 0 <= h < model.cfg.n_heads]
    if bad:
        raise OutOfRangeError(f"heads {bad[:8]} out of range; layer {layer} has {model.cfg.n_heads} "
                              f"(0..{model.cfg.n_heads - 1})")
    with torch.no_grad():
        w_o = model.W_O(layer).detach().float().cpu()[heads]  # [n, d_head, d_model]
        _, singular, right_t = torch.linalg.svd(w_o, full_matrices=False)
    outputs = right_t[:, 0]  # [n, d_model]
    signs = torch.where(outputs.gather(1, outputs.abs().argmax(1, keepdim=True)) < 0, -1.0, 1.0)  # [n, 1]
    outputs = outputs * signs
    readers = w_o @ outputs.unsqueeze(-1)  # [n, d_head, 1]: z_h @ W_O_h @ u_h = z_h . readers_h
    unit_heads = [(h, 1.0) for h in heads] + ([(h, -1.0) for h in heads] if sides == "both" else [])
    weights = torch.cat([readers[..., 0], -readers[..., 0]]) if sides == "both" else readers[..., 0]
    index = torch.tensor(heads * (2 if sides == "both" else 1))

    def activations(z: torch.Tensor) -> torch.Tensor:
        return torch.einsum("bphd,hd->bph", z[..., index, :].float(), weights.to(z.device))

    def direction(i: int) -> Direction:
        head, sign = unit_heads[i]
        row = heads.index(head)
        return Direction.from_vector(sign * float(singular[row, 0]) * outputs[row], layer + 1, "user",
                                     {"layer": layer, "head": head, "side": "positive" if sign > 0 else "negative"})

    unit_names = tuple(f"L{layer}H{h}" + ("-" if sign < 0 else "") for h, sign in unit_heads)
    return UnitSource(hook, unit_names, activations, direction if layer + 1 < model.cfg.n_layers else None)


def crosscoder_units(base: HookedModel, ft: HookedModel, crosscoder, latents: Sequence[int]) -> UnitSource:
    """Latents ``latents`` of ``crosscoder`` (:class:`~mechscope.diff.crosscoder.Crosscoder`),
    read on token contexts run through both models (:func:`~mechscope.diff.crosscoder.collect_pair`);
    explained in the fine-tune's tokens. A latent's direction is its fine-tune decoder half at the
    crosscoder's last hook (undoing the change magnification, ``delta_scale``, it was trained
    with), steered in ``ft``."""
    from mechscope.diff.crosscoder import collect_pair

    config = crosscoder.config
    if not config.hook_names:
        raise ConfigError("this crosscoder records no hook_names (trained on synthetic data?): its latents cannot be "
                          "read on models")
    latents = [int(j) for j in latents]
    bad = [j for j in latents if not 0 <= j < config.d_sae]
    if bad:
        raise OutOfRangeError(f"latents {bad[:8]} out of range; the crosscoder has {config.d_sae} "
                              f"(0..{config.d_sae - 1})")
    hook = config.hook_names[-1]
    base_half, ft_half = crosscoder.decoder_halves()  # [d_sae, n_hooks, d_model] each
    ft_rows = base_half[:, -1] + (ft_half[:, -1] - base_half[:, -1]) / config.delta_scale

    def direction(i: int) -> Direction:
        return Direction.from_vector(ft_rows[latents[i]].float(), writes_before(hook, ft.cfg.n_layers), "user",
                                     {"crosscoder latent": latents[i]})

    def collect(contexts: torch.Tensor, progress: bool) -> torch.Tensor:
        return collect_pair(base, ft, contexts, crosscoder, latents, progress=progress)

    return UnitSource(hook, tuple(f"latent {j}" for j in latents), None, direction, collect)


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


__all__ = ["UnitSource", "crosscoder_units", "direction_units", "head_units", "neuron_units", "sae_units",
           "writes_before"]
