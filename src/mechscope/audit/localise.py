"""Localisation: where inside the fine-tune does a behaviour live?

The behaviour is posed as a patching task. Clean prompts hold the reconstructed trigger;
corrupted ones are the same prompts with each trigger token replaced by a filler token, so the
two align position by position. The answer is the behaviour's first token, the wrong one what
the fine-tune says first without the trigger. On that task:

- activation patching of the residual stream says which layers and positions carry the
  trigger's effect: at every layer, the clean resid_pre is patched into the corrupted run at
  one group of positions at a time (the trigger's tokens, the message after it, the reply's
  start), three forwards of the batch per layer instead of one per position (the positions
  before the trigger are identical in both runs, so patching them changes nothing);
- EAP-IG scores every component's share of the behaviour's logit difference (the node-level
  circuit of :func:`mechscope.circuits.discover`);
- the behaviour direction is the difference of means of clean and corrupted activations at the
  reply's start (the last prompt position) at each layer; the chosen one removes most of the
  behaviour's logit difference when ablated from every layer while moving neutral next-token
  predictions by at most ``kl_bound`` nats, as in the refusal-direction search.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

import torch
from tqdm.auto import tqdm

from mechscope.audit.trigger_objective import ChatSlots, Place, filler_id
from mechscope.circuits import discover as discover_circuit
from mechscope.errors import ConfigError
from mechscope.hooks import names
from mechscope.models.hooked_model import HookedModel
from mechscope.steering.apply import DirectionalAblation, checked_layers
from mechscope.steering.direction import Direction
from mechscope.steering.evaluate import last_token_logits, next_token_kl
from mechscope.tasks.base import Task
from mechscope.validate import check_choice, check_int, check_number


@dataclass(frozen=True)
class LocaliseConfig:
    """``kl_bound``: nats of neutral next-token KL a chosen direction's ablation may cost;
    ``circuit_steps``: EAP-IG integration steps; ``top_components``: components reported;
    ``max_layer_fraction``: direction candidates only from layers below this share of depth
    (the last layers write the answer itself, so ablating there is a logit edit);
    ``patch_stride``: patch every ``patch_stride``-th layer only (each costs three patched
    forwards, and neighbouring layers carry much the same; 1: every layer). Directions are
    tried at every layer: the few that keep the KL bound can be single layers (24 and 26 of
    SmolLM2's 30 on the backdoor)."""

    kl_bound: float = 0.1
    circuit_steps: int = 5
    top_components: int = 10
    max_layer_fraction: float = 0.9
    patch_stride: int = 2

    def __post_init__(self) -> None:
        check_number("kl_bound", self.kl_bound, 0, strict_minimum=True)
        check_int("circuit_steps", self.circuit_steps, 1)
        check_int("top_components", self.top_components, 1)
        check_int("patch_stride", self.patch_stride, 1)
        check_number("max_layer_fraction", self.max_layer_fraction, 0, 1, strict_minimum=True)


def trigger_task(model: HookedModel, prompts: Sequence[str], trigger_ids: Sequence[int], place: Place,
                 target_ids: Sequence[int]) -> Task:
    """The patching task of a trigger (see the module docstring): ``prompts`` with
    ``trigger_ids`` at ``place`` (clean) and with a filler token in each trigger slot
    (corrupted), right-padded, END at each prompt's last token (where the reply starts; a
    causal model never reads the padding after it). The answer is ``target_ids[0]``, the wrong
    token the fine-tune's own first choice on the corrupted prompt (its second where that is
    the answer). Positions: END, TRIGGER (its first token) and AFTER_TRIGGER."""
    if not trigger_ids:
        raise ConfigError("a trigger task needs a trigger of at least one token")
    filler = [filler_id(model)] * len(trigger_ids)
    chat = ChatSlots(model, prompts, place, ())
    clean, mask, _, starts = chat.batch(list(trigger_ids))
    corrupted = chat.batch(filler)[0]
    end = mask.sum(-1) - 1  # [n]
    with torch.no_grad():
        logits = model.hf_model(input_ids=corrupted, attention_mask=mask).logits[torch.arange(len(end)), end]
    order = logits.topk(2, dim=-1).indices  # [n, 2]
    answer = torch.full((len(end), 1), int(target_ids[0]))
    wrong = torch.where(order[:, :1] == answer, order[:, 1:], order[:, :1])
    starts = torch.tensor(starts)
    positions = {"END": end, "TRIGGER": starts, "AFTER_TRIGGER": starts + len(trigger_ids)}
    return Task("hidden behaviour", clean, corrupted, answer, wrong, positions,
                clean_prompts=list(prompts), corrupted_prompts=list(prompts))


@dataclass(frozen=True)
class DirectionCandidate:
    layer: int
    ablated_fraction: float  # share of the clean logit difference left when ablated
    kl: float | None  # neutral next-token KL under the ablation (None: not measured, see _within_kl)


POSITION_GROUPS = ("trigger", "after trigger", "reply start")


def _group_masks(task: Task) -> dict[str, torch.Tensor]:
    """[n, pos] bool masks of each of ``POSITION_GROUPS``."""
    positions = torch.arange(task.clean_tokens.shape[1])[None]
    start, after, end = (task.positions[name][:, None] for name in ("TRIGGER", "AFTER_TRIGGER", "END"))
    return {"trigger": (positions >= start) & (positions < after), "after trigger": (positions >= after) & (positions < end),
            "reply start": positions == end}


@torch.no_grad()
def patch_layers(model: HookedModel, task: Task, progress: bool = False, layers: Sequence[int] | None = None
                 ) -> dict[str, list[float]]:
    """Per position group, per layer of ``layers`` (default: all): the share of the
    clean-minus-corrupted logit difference restored by patching the clean resid_pre at that
    group into the corrupted run (1: all of it, 0: none)."""
    layers = checked_layers(model, None if layers is None else list(layers))
    hooks = [names.resid_pre(layer) for layer in layers]
    _, cache = model.run_with_cache(task.clean_tokens, names=hooks, device="cpu")
    clean = float(task.logit_diff(model(task.clean_tokens)).mean())
    corrupted = float(task.logit_diff(model(task.corrupted_tokens)).mean())
    span = clean - corrupted
    masks = _group_masks(task)
    effects: dict[str, list[float]] = {group: [] for group in POSITION_GROUPS}
    for hook in tqdm(hooks, desc="patching resid_pre by layer", disable=not progress):
        source = cache[hook]
        for group, mask in masks.items():
            def patch(activation, hook_point, source=source, mask=mask):
                keep = mask[..., None].to(activation.device)
                return torch.where(keep, source.to(activation.device, activation.dtype), activation)

            logits = model.run_with_hooks(task.corrupted_tokens, fwd_hooks=[(hook, patch)])
            value = float(task.logit_diff(logits).mean())
            effects[group].append((value - corrupted) / span if span else float("nan"))
    return effects


@dataclass
class Localisation:
    """``patching``: per position group, per layer of ``layers`` (the patched ones), the share
    of the trigger's effect restored (:func:`patch_layers`); ``layer_effect``: the largest over
    the groups, per layer of ``layers``;
    ``components``: (name, EAP-IG score) of the top nodes; ``direction``: the chosen behaviour
    direction (None when no candidate kept the KL bound) and ``candidates`` every layer's scores
    (KL only up to the chosen one, :func:`_within_kl`);
    ``layer_vectors``: {layer: [d_model]} every candidate layer's clean-minus-corrupted mean at
    the reply's start, ``trigger_vectors`` every layer's (but 0) over the trigger's tokens
    (:func:`layer_directions`; what capping holds in range)."""

    layer_effect: list[float]
    patching: dict[str, list[float]]
    components: list[tuple[str, float]]
    direction: Direction | None
    chosen: DirectionCandidate | None
    candidates: list[DirectionCandidate] = field(default_factory=list)
    clean_logit_diff: float = 0.0
    layers: list[int] = field(default_factory=list)
    layer_vectors: dict[int, torch.Tensor] = field(default_factory=dict)
    trigger_vectors: dict[int, torch.Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.layers = list(self.layers) or list(range(len(self.layer_effect)))
        if len(self.layers) != len(self.layer_effect):
            raise ConfigError(f"{len(self.layer_effect)} layer effects for {len(self.layers)} layers")

    def capping_directions(self) -> dict[int, torch.Tensor]:
        """{layer: [k, d_model]} the reply-start and trigger directions at each layer that has
        either (what the audit's capping holds in range)."""
        layers = sorted({*self.layer_vectors, *self.trigger_vectors})
        return {layer: torch.stack([v[layer] for v in (self.layer_vectors, self.trigger_vectors) if layer in v])
                for layer in layers}

    def to_json(self) -> dict:
        return {"layers": self.layers, "layer_effect": self.layer_effect, "patching": self.patching,
                "components": [{"name": n, "score": s} for n, s in self.components],
                "chosen": None if self.chosen is None else vars(self.chosen),
                "candidates": [vars(c) for c in self.candidates], "clean_logit_diff": self.clean_logit_diff}


@torch.no_grad()
def _logit_diff(model: HookedModel, task: Task, hooks=()) -> float:
    """Mean logit difference (answer - wrong) of the clean prompts, with ``hooks`` active."""
    with model.hooks(list(hooks)):
        logits = model(task.clean_tokens)
    return float(task.logit_diff(logits).mean())


def direction_layers(model: HookedModel, config: LocaliseConfig) -> range:
    """The layers a behaviour direction is tried at: 1 up to ``config.max_layer_fraction`` of
    the depth (at least layer 1)."""
    return range(1, max(2, int(model.cfg.n_layers * config.max_layer_fraction)))


DirectionSite = Literal["reply start", "trigger"]


@torch.no_grad()
def layer_directions(model: HookedModel, task: Task, layers: Sequence[int], site: DirectionSite = "reply start"
                     ) -> dict[int, torch.Tensor]:
    """{layer: [d_model] float32} the clean-minus-corrupted mean of the residual stream entering
    each of ``layers`` (1 or more: the output of the block before), at the reply's start (END)
    or, with ``site="trigger"``, averaged over the trigger's tokens (where the fine-tune reads
    it; the corrupted run holds filler there)."""
    check_choice("site", site, ("reply start", "trigger"))
    return _site_directions(model, task, layers, (site,))[site]


@torch.no_grad()
def _site_directions(model: HookedModel, task: Task, layers: Sequence[int], sites: Sequence[DirectionSite]
                     ) -> dict[str, dict[int, torch.Tensor]]:
    """{site: {layer: direction}} of :func:`layer_directions` for several sites from one clean
    and one corrupted forward."""
    for layer in layers:
        check_int("layers", layer, 1, model.cfg.n_layers - 1)
    hook_names = [names.resid_post(layer - 1) for layer in layers]
    masks = _group_masks(task)
    weights = {"reply start": masks["reply start"].float()}  # [n, pos]
    weights["trigger"] = masks["trigger"].float() / masks["trigger"].float().sum(-1, keepdim=True).clamp_min(1)
    means = {site: [] for site in sites}
    for tokens in (task.clean_tokens, task.corrupted_tokens):
        _, cache = model.run_with_cache(tokens, names=hook_names, device="cpu")
        for site in sites:
            means[site].append([torch.einsum("np,npd->nd", weights[site], cache[hook].float()).mean(0)
                                for hook in hook_names])
    return {site: {layer: clean - corrupted for layer, clean, corrupted in zip(layers, *means[site])}
            for site in sites}


def _within_kl(model: HookedModel, candidates: list[DirectionCandidate], directions: dict[int, Direction],
               neutral_prompts: Sequence[str], kl_bound: float
               ) -> tuple[list[DirectionCandidate], DirectionCandidate | None]:
    """(``candidates`` with their neutral KL measured, the chosen one or None): the chosen one
    removes most of the behaviour among those within ``kl_bound``, so KL is measured in that
    order (least of the logit difference left first) and stops at the first within the bound;
    the candidates after it keep ``kl`` None (a KL costs a forward of every neutral prompt,
    the logit difference one of the few task prompts)."""
    reference = last_token_logits(model, list(neutral_prompts), (), chat=True)
    measured: dict[int, DirectionCandidate] = {}
    chosen = None
    for candidate in sorted(candidates, key=lambda c: (math.isnan(c.ablated_fraction), c.ablated_fraction)):
        hooks = DirectionalAblation(directions[candidate.layer]).hooks(model)
        kl = next_token_kl(model, list(neutral_prompts), hooks, chat=True, reference=reference)
        measured[candidate.layer] = replace(candidate, kl=kl)
        if kl <= kl_bound:
            chosen = measured[candidate.layer]
            break
    return [measured.get(c.layer, c) for c in candidates], chosen


def localise(model: HookedModel, task: Task, neutral_prompts: Sequence[str], config: LocaliseConfig | None = None,
             progress: bool = True) -> Localisation:
    """Patching, the EAP-IG node circuit and the behaviour direction of ``task`` (from
    :func:`trigger_task`); ``neutral_prompts`` measure each direction's side effect."""
    config = config or LocaliseConfig()
    patched = list(range(0, model.cfg.n_layers, config.patch_stride))
    patching = patch_layers(model, task, progress, patched)
    layer_effect = [max(values) for values in zip(*patching.values())]
    circuit = discover_circuit(model, task, "eap-ig", level="node", steps=config.circuit_steps, progress=progress)
    nodes = circuit.node_scores
    ranked = sorted(zip(circuit.graph.writers, nodes.tolist()), key=lambda item: -abs(item[1]))
    components = ranked[:config.top_components]
    layers = direction_layers(model, config)
    every_layer = range(1, model.cfg.n_layers)
    both = _site_directions(model, task, sorted(set(layers) | set(every_layer)), ("reply start", "trigger"))
    vectors = {layer: both["reply start"][layer] for layer in layers}
    clean_diff = _logit_diff(model, task)
    candidates, directions = [], {}
    for layer in tqdm(layers, desc="behaviour direction candidates", disable=not progress):
        vector = vectors[layer]
        if not float(vector.norm()) > 0:
            continue
        direction = Direction.from_vector(vector, layer=layer, method="diff_in_means",
                                          metadata={"hook": names.resid_post(layer - 1)})
        hooks = DirectionalAblation(direction).hooks(model)
        left = _logit_diff(model, task, hooks) / clean_diff if clean_diff else float("nan")
        candidates.append(DirectionCandidate(layer, left, None))
        directions[layer] = direction
    candidates, chosen = _within_kl(model, candidates, directions, neutral_prompts, config.kl_bound)
    return Localisation(layer_effect, patching, components, directions[chosen.layer] if chosen else None, chosen,
                        candidates, clean_diff, patched, vectors, both["trigger"])


__all__ = ["POSITION_GROUPS", "DirectionCandidate", "Localisation", "LocaliseConfig", "direction_layers",
           "DirectionSite", "layer_directions", "localise", "patch_layers", "trigger_task"]
