"""Activation-difference lens: what a fine-tune adds to the residual stream on neutral text.

Run BASE and FT on the same contexts (e.g. :func:`mechscope.data.default_contexts`) and average
h_ft - h_base at every layer's ``hook_resid_post``. Even on text unrelated to the fine-tuning
data, a narrow fine-tune leaves a consistent bias there, and reading that mean difference
(through the logit lens, or by its cosine with token embeddings) or steering the base model with
it often reveals what the fine-tune was about (Minder et al. 2025, "Narrow finetuning leaves
clearly readable traces in activation differences").

The first few positions are averaged one by one: the BOS token and the positions right after it
carry outsized, position-specific activations (attention sinks) that would otherwise dominate
the mean, and the difference there is often the most telling. Everything later is one group,
"rest". Optionally the last few positions of each context are averaged one by one too (groups
-1, -2, ...: -1 is each context's last real token). On chat prompts that end at the assistant's
header (:func:`mechscope.diff.corpus.chat_prompt_tokens`), the last position is where the reply
is about to start: a fine-tune that changed how it answers shows it there, even where it left
plain text alone. The last positions are also part of the other groups.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F

from mechscope.diff.compat import DiffInput, check_comparable, input_batches, model_label
from mechscope.errors import ConfigError, InputTypeError, MechscopeError, OutOfRangeError
from mechscope.hooks import names
from mechscope.models.hooked_model import HookedModel
from mechscope.steering.apply import PHASES, Phase, Steering, generate
from mechscope.steering.direction import Direction
from mechscope.validate import check_choice, check_int, check_number

# A first position (0, 1, ...), a last position (-1 is the last real token), or "rest".
PositionGroup = int | Literal["rest"]
REST = "rest"


@dataclass(frozen=True, eq=False)
class DifferenceMeans:
    """Mean activation differences h_ft - h_base at each layer's ``hook_resid_post``.

    ``first`` [n_layers, first_positions, d_model]: the mean at each of the first positions
    separately; ``rest`` [n_layers, d_model]: the mean over all positions >= first_positions;
    ``norm_reference`` [n_layers]: the base model's mean ‖h_base‖ over the "rest" positions (the
    first ones are left out, as their norms are outliers), the natural scale for steering.
    ``first_counts`` [first_positions] and ``n_rest`` count the (unpadded) tokens averaged.
    ``last`` [n_layers, last_positions, d_model]: the mean at each context's last positions
    (index 0 is the last real token, position group -1), counted by ``last_counts``
    [last_positions]. Float32, on the CPU.
    """

    first: torch.Tensor
    rest: torch.Tensor
    norm_reference: torch.Tensor
    first_counts: torch.Tensor
    n_rest: int
    n_contexts: int
    base_name: str = ""
    ft_name: str = ""
    last: torch.Tensor | None = None
    last_counts: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.last is None:  # no last-position groups
            object.__setattr__(self, "last", self.rest.new_zeros(self.rest.shape[0], 0, self.rest.shape[1]))
            object.__setattr__(self, "last_counts", torch.zeros(0, dtype=torch.long))
        if self.first.dim() != 3 or self.rest.dim() != 2:
            raise MechscopeError(f"first must be [n_layers, first_positions, d_model] and rest [n_layers, d_model]; "
                                 f"got {tuple(self.first.shape)} and {tuple(self.rest.shape)}")
        n_layers, first_positions, d_model = self.first.shape
        if self.rest.shape != (n_layers, d_model) or self.norm_reference.shape != (n_layers,):
            raise MechscopeError(f"rest {tuple(self.rest.shape)} and norm_reference {tuple(self.norm_reference.shape)} "
                                 f"do not match first {tuple(self.first.shape)}")
        if self.first_counts.shape != (first_positions,):
            raise MechscopeError(f"first_counts has shape {tuple(self.first_counts.shape)}, expected ({first_positions},)")
        if self.last.dim() != 3 or self.last.shape[::2] != (n_layers, d_model) or self.last_counts is None or \
                self.last_counts.shape != (self.last.shape[1],):
            raise MechscopeError(f"last must be [n_layers, last_positions, d_model] with last_counts [last_positions]; "
                                 f"got {tuple(self.last.shape)}")

    @property
    def n_layers(self) -> int:
        return self.first.shape[0]

    @property
    def first_positions(self) -> int:
        return self.first.shape[1]

    @property
    def last_positions(self) -> int:
        return self.last.shape[1]

    @property
    def last_groups(self) -> list[int]:
        """The last-position groups, -1 (the last real token) first."""
        return [-1 - i for i in range(self.last_positions)]

    @property
    def d_model(self) -> int:
        return self.first.shape[2]

    def check_layer(self, layer: int) -> int:
        layer = check_int("layer", layer, minimum=None)
        if not 0 <= layer < self.n_layers:
            raise OutOfRangeError(f"layer {layer} out of range; the difference means have layers 0..{self.n_layers - 1}")
        return layer

    def check_group(self, position_group: PositionGroup) -> PositionGroup:
        choices = [f"'{REST}'"] + [f"a first position 0..{self.first_positions - 1}"] * bool(self.first_positions) \
            + [f"a last position -1..-{self.last_positions}"] * bool(self.last_positions)
        valid = " or ".join([", ".join(choices[:-1]), choices[-1]]) if len(choices) > 1 else choices[0]
        if isinstance(position_group, str):
            if position_group != REST:
                raise ConfigError(f"unknown position_group {position_group!r}; position_group must be {valid}")
            return position_group
        if isinstance(position_group, bool) or not isinstance(position_group, int):
            raise ConfigError(f"position_group must be {valid}; got {position_group!r}")
        if not -self.last_positions <= position_group < self.first_positions:
            raise OutOfRangeError(f"position_group {position_group} out of range; position_group must be {valid}")
        return position_group

    def vector(self, layer: int, position_group: PositionGroup = REST) -> torch.Tensor:
        """The mean difference [d_model] at ``layer`` for ``position_group`` ("rest", a first or a last position)."""
        layer, group = self.check_layer(layer), self.check_group(position_group)
        if group == REST:
            return self.rest[layer]
        return self.first[layer, group] if group >= 0 else self.last[layer, -1 - group]

    def to_json(self) -> dict[str, Any]:
        """Sizes and norms per layer and group (the vectors themselves are not JSON)."""
        return {"base": self.base_name, "ft": self.ft_name, "n_contexts": self.n_contexts, "n_rest": self.n_rest,
                "first_counts": self.first_counts.tolist(), "norm_reference": self.norm_reference.tolist(),
                "rest_norm": self.rest.norm(dim=-1).tolist(), "first_norm": self.first.norm(dim=-1).tolist(),
                "last_counts": self.last_counts.tolist(), "last_norm": self.last.norm(dim=-1).tolist()}


@torch.no_grad()
def difference_means(base: HookedModel, ft: HookedModel, contexts: DiffInput, first_positions: int = 5,
                     batch_size: int = 8, attention_mask: torch.Tensor | None = None,
                     progress: bool = True, last_positions: int = 0) -> DifferenceMeans:
    """Mean h_ft - h_base at every layer's ``hook_resid_post`` over ``contexts`` (a [n, pos]
    token tensor, e.g. ``default_contexts(base, n)``, or texts), the first ``first_positions``
    positions separately and the rest together, and each context's ``last_positions`` last
    real tokens separately. Padding (``attention_mask``, or the mask ``to_tokens`` remembered,
    on either side) is left out of every mean."""
    check_comparable(base, ft)
    first_positions = check_int("first_positions", first_positions, minimum=0)
    last_positions = check_int("last_positions", last_positions, minimum=0)
    hook_names = names.resid_posts(base.cfg.n_layers)
    n_layers, d_model, device = base.cfg.n_layers, base.cfg.d_model, base.device
    # float64 sums: a mean over many thousand tokens of small differences must not drift.
    first_sum = torch.zeros(n_layers, first_positions, d_model, dtype=torch.float64, device=device)
    rest_sum = torch.zeros(n_layers, d_model, dtype=torch.float64, device=device)
    norm_sum = torch.zeros(n_layers, dtype=torch.float64, device=device)
    first_counts = torch.zeros(first_positions, dtype=torch.float64, device=device)
    last_sum = torch.zeros(n_layers, last_positions, d_model, dtype=torch.float64, device=device)
    last_counts = torch.zeros(last_positions, dtype=torch.float64, device=device)
    n_rest, n_contexts = 0.0, 0
    for tokens, mask in input_batches(base, contexts, attention_mask, batch_size, progress, "difference means"):
        _, base_cache = base.run_with_cache(tokens, names=hook_names, attention_mask=mask)
        _, ft_cache = ft.run_with_cache(tokens, names=hook_names, attention_mask=mask)
        weights = mask.to(device, torch.float64)  # [batch, pos]
        shown = min(first_positions, tokens.shape[1])
        head, tail = weights[:, :shown], weights[:, first_positions:]
        last_index, last_weight = _last_indices(mask.to(device), last_positions)  # [batch, last_positions] each
        for layer, name in enumerate(hook_names):
            h_base = base_cache[name].to(torch.float64)
            difference = ft_cache[name].to(device, torch.float64) - h_base  # [batch, pos, d_model]
            first_sum[layer, :shown] += (difference[:, :shown] * head[..., None]).sum(0)
            rest_sum[layer] += (difference[:, first_positions:] * tail[..., None]).sum((0, 1))
            norm_sum[layer] += (h_base[:, first_positions:].norm(dim=-1) * tail).sum()
            ends = difference.gather(1, last_index[..., None].expand(-1, -1, d_model))  # [batch, last, d_model]
            last_sum[layer] += (ends * last_weight[..., None]).sum(0)
        first_counts[:shown] += head.sum(0)
        last_counts += last_weight.sum(0)
        n_rest += float(tail.sum())
        n_contexts += len(tokens)
    if n_rest == 0:
        raise ConfigError(f"no context has a token beyond the first {first_positions} positions, so the 'rest' "
                          f"mean is empty; use longer contexts or a smaller first_positions")
    if first_positions and bool((first_counts == 0).any()):
        raise ConfigError(f"no context reaches position {int((first_counts == 0).nonzero()[0])}; use contexts of at "
                          f"least first_positions={first_positions} tokens")
    if last_positions and bool((last_counts == 0).any()):
        raise ConfigError(f"no context has {int((last_counts == 0).nonzero()[0]) + 1} real tokens; use contexts of at "
                          f"least last_positions={last_positions} tokens")
    first = first_sum / first_counts[None, :, None].clamp(min=1)
    last = last_sum / last_counts[None, :, None].clamp(min=1)
    return DifferenceMeans(first.float().cpu(), (rest_sum / n_rest).float().cpu(), (norm_sum / n_rest).float().cpu(),
                           first_counts.long().cpu(), int(n_rest), n_contexts, model_label(base), model_label(ft),
                           last.float().cpu(), last_counts.long().cpu())


def _last_indices(mask: torch.Tensor, last_positions: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For each row of ``mask`` [batch, pos] (padding on either side), the positions of its last
    ``last_positions`` real tokens ([batch, last_positions], column 0 the last) and whether the
    row has that many (float64 weights, 0 where it is shorter)."""
    real = mask.bool()
    rank_from_end = real.sum(-1, keepdim=True) - real.long().cumsum(-1)  # 0 at the last real token
    offsets = torch.arange(last_positions, device=mask.device)
    hit = real[:, None, :] & (rank_from_end[:, None, :] == offsets[None, :, None])  # [batch, last, pos]
    return hit.float().argmax(-1), hit.any(-1).to(torch.float64)


@dataclass(frozen=True)
class TokenScore:
    token_id: int
    token: str
    value: float

    def to_json(self) -> dict[str, Any]:
        return {"token_id": self.token_id, "token": self.token, "value": self.value}


@dataclass(frozen=True)
class DifferenceReading:
    """Three readings of one mean difference vector, top ``k`` tokens each:

    ``logit_lens``: logits of the vector through the model's final norm and unembedding;
    ``embed_cosine``: cosine with each input-embedding row (W_E) — tokens whose embedding the
    difference resembles; ``unembed_cosine``: cosine with each unembedding row (W_U columns).
    ``norm`` is ‖vector‖ and ``relative_norm`` that over the base's mean activation norm there.
    """

    layer: int
    position_group: PositionGroup
    norm: float
    relative_norm: float
    logit_lens: tuple[TokenScore, ...]
    embed_cosine: tuple[TokenScore, ...]
    unembed_cosine: tuple[TokenScore, ...]

    def to_json(self) -> dict[str, Any]:
        return {"layer": self.layer, "position_group": self.position_group, "norm": self.norm,
                "relative_norm": self.relative_norm,
                **{view: [score.to_json() for score in getattr(self, view)]
                   for view in ("logit_lens", "embed_cosine", "unembed_cosine")}}


def _check_shape(model: HookedModel, means: DifferenceMeans) -> None:
    if not isinstance(means, DifferenceMeans):
        raise InputTypeError(f"means must be DifferenceMeans (from difference_means), got {type(means).__name__}")
    if (means.n_layers, means.d_model) != (model.cfg.n_layers, model.cfg.d_model):
        raise MechscopeError(f"the difference means have {means.n_layers} layers of d_model {means.d_model}; "
                             f"{model_label(model)!r} has {model.cfg.n_layers} of {model.cfg.d_model}")


def _top(model: HookedModel, scores: torch.Tensor, k: int) -> tuple[TokenScore, ...]:
    values, ids = scores.topk(k)
    return tuple(TokenScore(int(i), model.tokenizer.decode([int(i)]), float(v)) for v, i in zip(values, ids))


@torch.no_grad()
def read_difference(model: HookedModel, means: DifferenceMeans, layer: int, position_group: PositionGroup = REST,
                    k: int = 20) -> DifferenceReading:
    """Read the mean difference at ``layer`` / ``position_group`` with ``model`` (normally the
    base): the top ``k`` tokens of its logit lens and of its cosine with the embedding and
    unembedding rows."""
    _check_shape(model, means)
    k = check_int("k", k, minimum=1, maximum=model.cfg.d_vocab)
    vector = means.vector(layer, position_group).to(model.device)
    logits = model.unembed(vector.to(model.dtype)).float()
    embed = model.hf_model.get_submodule(model.adapter.embed).weight.float()  # [d_vocab, d_model]
    unembed = model.W_U.T.float()  # [d_vocab, d_model]
    reference = float(means.norm_reference[means.check_layer(layer)])
    norm = float(vector.norm())
    return DifferenceReading(
        means.check_layer(layer), means.check_group(position_group), norm,
        norm / reference if reference > 0 else 0.0, _top(model, logits, k),
        _top(model, F.cosine_similarity(embed, vector[None].float(), dim=-1), k),
        _top(model, F.cosine_similarity(unembed, vector[None].float(), dim=-1), k))


@dataclass(frozen=True)
class DifferenceLens:
    """:class:`DifferenceReading` for several layers and position groups."""

    readings: tuple[DifferenceReading, ...]
    base_name: str = ""
    ft_name: str = ""

    def reading(self, layer: int, position_group: PositionGroup = REST) -> DifferenceReading:
        for reading in self.readings:
            if reading.layer == layer and reading.position_group == position_group:
                return reading
        have = sorted({(r.layer, str(r.position_group)) for r in self.readings})
        raise OutOfRangeError(f"no reading for layer {layer}, position_group {position_group!r}; this lens has "
                              f"(layer, group) {have}")

    def to_json(self) -> dict[str, Any]:
        """Per layer, each position group's readings (top tokens of each view)."""
        layers: dict[int, list[dict[str, Any]]] = {}
        for reading in self.readings:
            layers.setdefault(reading.layer, []).append(reading.to_json())
        return {"base": self.base_name, "ft": self.ft_name,
                "layers": [{"layer": layer, "readings": readings} for layer, readings in sorted(layers.items())]}


def difference_lens(model: HookedModel, means: DifferenceMeans,
                    position_groups: PositionGroup | Sequence[PositionGroup] = REST,
                    layers: int | Sequence[int] | None = None, k: int = 20) -> DifferenceLens:
    """:func:`read_difference` at each of ``layers`` (default: all) for each position group."""
    _check_shape(model, means)
    groups = [position_groups] if isinstance(position_groups, str | int) else list(position_groups)
    layers = range(means.n_layers) if layers is None else [layers] if isinstance(layers, int) else list(layers)
    if not groups or not layers:
        raise ConfigError("difference_lens needs at least one layer and one position group")
    readings = tuple(read_difference(model, means, layer, group, k) for layer in layers for group in groups)
    return DifferenceLens(readings, means.base_name, means.ft_name)


class ResidPostSteering(Steering):
    """:class:`Steering` that adds at ``hook_resid_post`` of ``layers`` instead of ``hook_resid_pre``
    (the same tensor for all but the last layer, whose output only the final norm reads), so a
    difference measured at resid_post is added back where it was measured."""

    def hooks(self, model: HookedModel, generating: bool = False):
        renamed = {names.resid_pre(layer): names.resid_post(layer) for layer in range(model.cfg.n_layers)}
        return [(renamed[name], fn) for name, fn in super().hooks(model, generating)]


def steer_with_difference(base: HookedModel, means: DifferenceMeans, layer: int, prompts: str | Sequence[str],
                          strength: float = 1.0, position_group: PositionGroup = REST, max_new_tokens: int = 32,
                          positions: Phase = "all", chat: bool | None = None, batch_size: int = 16,
                          progress: bool = True) -> list[str]:
    """Greedy generations of ``base`` with the mean difference at ``layer`` / ``position_group``
    added to that layer's ``hook_resid_post``: the unit difference times ``strength`` times the
    layer's ``norm_reference`` (strength 1 adds a vector as long as a typical activation there).
    ``positions``: one of "all", "prompt", "generated" (see :class:`Steering`)."""
    _check_shape(base, means)
    strength = check_number("strength", strength)
    vector = means.vector(layer, position_group)
    if not float(vector.norm()) > 0:
        raise MechscopeError(f"the mean difference at layer {layer}, position_group {position_group!r} is zero: the "
                             "models do not differ there, so there is nothing to steer with")
    check_choice("positions", positions, PHASES)
    direction = Direction.from_vector(vector, method="diff_in_means",
                                      metadata={"hook": names.resid_post(layer), "position_group": position_group,
                                                "base": means.base_name, "ft": means.ft_name})
    alpha = strength * float(means.norm_reference[layer])
    steering = ResidPostSteering(direction, alpha, layers=layer, positions=positions)
    return generate(base, prompts, steering, max_new_tokens=max_new_tokens, chat=chat, batch_size=batch_size,
                    progress=progress)
