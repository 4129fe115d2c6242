"""Path patching: the effect of sender heads on chosen receivers only, everything else frozen.

For each sender head (one per batch slot), as in the IOI paper:
1. run the clean prompts with the sender's output (z) taken from the corrupted run and every
   other head's output frozen to its clean value (MLPs recompute unless ``freeze_mlps``);
   read the receivers' inputs there (their q, k and/or v, or the logits);
2. run the clean prompts again with only the receivers' inputs replaced by those values.
The metric of run 2 (or of run 1 when the receiver is the logits) scores the path
sender -> receiver. Scores: 1 = clean, 0 = corrupted, as in noising.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, get_args

import torch
from tqdm.auto import tqdm

from mechscope.errors import MechscopeError
from mechscope.hooks.names import attn, mlp_out
from mechscope.hooks.points import HookPoint
from mechscope.models.hooked_model import HookedModel
from mechscope.patching.activation import (
    build_result,
    layer_chunks,
    mean_over_prompts,
    measure_baselines,
    position_labels,
    resid_post_by_layer,
    resid_post_names,
    slot_hooks,
)
from mechscope.patching.prefix import prefix_reuse
from mechscope.patching.result import PatchingResult
from mechscope.patching.sites import PatchUnit, site_grid
from mechscope.tasks.base import Task

ReceiverInput = Literal["q", "k", "v"]
RECEIVER_INPUTS: tuple[str, ...] = get_args(ReceiverInput)


def _freeze_hooks(model: HookedModel, senders: list[PatchUnit], clean: dict, corrupted: dict, n: int,
                  freeze_mlps: bool, first_layer: int):
    """Run-1 hooks: all heads' z frozen to clean from ``first_layer`` on, the slot's sender head
    set to its corrupted z, and MLP outputs frozen when asked."""
    slots = len(senders)

    def freeze_z(activation: torch.Tensor, hook: HookPoint) -> torch.Tensor:
        frozen = clean[hook.name].repeat(slots, 1, 1, 1).clone()
        for slot, sender in enumerate(senders):
            if sender.hook_name == hook.name:
                rows = slice(slot * n, (slot + 1) * n)
                frozen[rows, :, sender.head] = corrupted[hook.name][:, :, sender.head]
        return frozen

    def freeze_mlp(activation: torch.Tensor, hook: HookPoint) -> torch.Tensor:
        return clean[hook.name].repeat(slots, 1, 1)

    hooks = [(attn(layer, "z"), freeze_z) for layer in range(first_layer, model.cfg.n_layers)]
    if freeze_mlps:
        hooks += [(mlp_out(layer), freeze_mlp) for layer in range(first_layer, model.cfg.n_layers)]
    return hooks


@torch.no_grad()
def path_patch(
    model: HookedModel,
    task: Task,
    receivers: str | Sequence[tuple[int, int]] = "logits",
    receiver_input: str | Sequence[str] = ("q", "k", "v"),
    sender_layers: list[int] | None = None,
    metric: str = "logit_diff",
    freeze_mlps: bool = False,
    batch_size: int | None = None,
    progress: bool = True,
) -> PatchingResult:
    """Score every sender head (layer x head grid) by its path to ``receivers``: "logits", or a
    list of (layer, head) receiver heads read through ``receiver_input`` ("q", "k", "v" or
    several). Under grouped-query attention a receiver's k / v is its shared kv head."""
    inputs = (receiver_input,) if isinstance(receiver_input, str) else tuple(receiver_input)
    bad = [name for name in inputs if name not in RECEIVER_INPUTS]
    if bad:
        raise MechscopeError(f"receiver_input {bad} unknown; choose from {RECEIVER_INPUTS}")
    to_logits = isinstance(receivers, str)
    if to_logits and receivers != "logits":
        raise MechscopeError(f"receivers must be 'logits' or a list of (layer, head), got {receivers!r}")
    receiver_heads = [] if to_logits else [(int(layer), int(head)) for layer, head in receivers]
    for layer, head in receiver_heads:
        if not (0 <= layer < model.cfg.n_layers and 0 <= head < model.cfg.n_heads):
            raise MechscopeError(f"receiver head ({layer}, {head}) out of range: {model.cfg.n_layers} layers x "
                             f"{model.cfg.n_heads} heads")
    group = model.cfg.n_query_per_kv
    receiver_units = [PatchUnit(attn(layer, kind), head // group if kind != "q" else head, None)
                      for layer, head in receiver_heads for kind in inputs]
    receiver_units = list(dict.fromkeys(receiver_units))
    last_sender_layer = model.cfg.n_layers if to_logits else max(layer for layer, _ in receiver_heads)
    grid = site_grid(model, "heads", task.clean_tokens.shape[1], sender_layers)

    n = len(task)
    z_names = [attn(layer, "z") for layer in range(model.cfg.n_layers)]
    mlp_names = [mlp_out(layer) for layer in range(model.cfg.n_layers)] if freeze_mlps else []
    receiver_names = list(dict.fromkeys(unit.hook_name for unit in receiver_units))
    receiver_layer = {attn(layer, kind): layer for layer, _ in receiver_heads for kind in inputs}
    clean_logits, clean = model.run_with_cache(
        task.clean_tokens, names=z_names + resid_post_names(model) + mlp_names + receiver_names)
    corrupt_logits, corrupted = model.run_with_cache(task.corrupted_tokens, names=z_names)
    baselines = measure_baselines(task, metric, clean_logits, corrupt_logits)
    base_resid = resid_post_by_layer(model, clean)
    keep = 1 if task.end_is_last else 0

    per_slot = max(1, (batch_size or 8 * n) // n)
    raw = torch.full((len(grid.units),), baselines.clean_value)  # senders with no path to the receivers
    chunks = layer_chunks(model, grid.units, per_slot, below_layer=last_sender_layer)
    for layer, indices in tqdm(chunks, desc="path patching", disable=not progress, leave=False):
        senders = [grid.units[i] for i in indices]
        tokens = task.clean_tokens.repeat(len(senders), 1)
        freeze = _freeze_hooks(model, senders, clean, corrupted, n, freeze_mlps, layer)
        # Receivers at or before the sender's layer see no change (their inputs are computed
        # before the sender's output), and the skipped prefix never fires their hooks.
        captured = {name: clean[name].repeat(len(senders), *[1] * (clean[name].dim() - 1))
                    for name in receiver_names}

        def capture(activation: torch.Tensor, hook: HookPoint) -> None:
            captured[hook.name] = activation.clone()

        # Only receivers after the sender's layer can change; earlier ones keep the clean value
        # (their hooks may fire inside the reused prefix, which computes a single row).
        capture_hooks = [(name, capture) for name in receiver_names if receiver_layer[name] > layer]
        logits = model.run_with_hooks(tokens, logits_to_keep=keep, fwd_hooks=capture_hooks + freeze,
                                      prefix=prefix_reuse(model, layer, base_resid, len(senders)))
        if not to_logits:
            first_receiver = min(layer for layer, _ in receiver_heads)
            hooks = slot_hooks([receiver_units] * len(senders), captured, n)
            logits = model.run_with_hooks(tokens, logits_to_keep=keep, fwd_hooks=hooks,
                                          prefix=prefix_reuse(model, first_receiver, base_resid, len(senders)))
        raw[indices] = mean_over_prompts(baselines.metric_fn, logits, bool(keep), n)
    result = build_result(grid, raw, baselines.clean_value, baselines.corrupted_value, "path-noise", metric,
                          position_labels(model, task), info={"prompts": n, "receivers": receivers if to_logits
                                                               else [list(r) for r in receiver_heads],
                                                               "receiver_input": list(inputs),
                                                               "freeze_mlps": freeze_mlps})
    return result
