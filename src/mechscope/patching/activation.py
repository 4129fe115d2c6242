"""Activation patching, batched: many patched sites per forward pass.

Denoising patches clean activations into the corrupted run (is the site *sufficient* to restore
the behaviour?); noising patches corrupted activations into the clean run (is it *necessary*?).
Row ``u * n + i`` of a batched forward runs prompt i with unit u patched, so one forward serves
many sites; the source activations are cached once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import torch
from tqdm.auto import tqdm

from mechscope.distributed import Ranks, check_ranks, rank_jobs, spread_jobs
from mechscope.errors import MechscopeError
from mechscope.hooks.names import resid_posts
from mechscope.hooks.points import HookPoint
from mechscope.models.hooked_model import HookedModel
from mechscope.patching.metrics import RowMetric, row_metric
from mechscope.patching.prefix import prefix_reuse
from mechscope.patching.result import PatchingResult
from mechscope.patching.sites import PatchUnit, SiteGrid, site_grid
from mechscope.tasks.base import Task
from mechscope.validate import check_choice, check_int, check_number

PatchMode = Literal["denoise", "noise"]
MODES: tuple[str, ...] = get_args(PatchMode)


@dataclass(frozen=True)
class PatchingRun:
    """What a sweep runs: base tokens (the run being patched), the source cache, the base run's
    residual stream after each block (to skip unpatched blocks), baselines."""

    base_tokens: torch.Tensor
    source: dict[str, torch.Tensor]
    base_resid_post: dict[int, torch.Tensor]
    clean_value: float
    corrupted_value: float
    clean_end_logits: torch.Tensor


def unit_index(hook: HookPoint, unit: PatchUnit, rows: slice) -> tuple:
    """Index into an activation selecting ``rows`` and the unit's head / position."""
    index: list = [slice(None)] * len(hook.axes)
    index[0] = rows
    if unit.position is not None:
        index[hook.position_axis] = unit.position
    if unit.head is not None:
        index[hook.head_axis] = unit.head
    return tuple(index)


def estimate_row_bytes(model: HookedModel, n_positions: int, with_patterns: bool, logit_positions: int) -> int:
    """Rough peak bytes one batch row needs in a no-grad forward (activations alive at once
    in one block, plus the logits of ``logit_positions`` positions), used to size batches."""
    cfg = model.cfg
    element = torch.finfo(model.dtype).bits // 8
    per_position = 8 * cfg.d_model + 4 * cfg.d_mlp + 2 * cfg.n_heads * cfg.d_head
    attention = cfg.n_heads * n_positions * (2 if with_patterns else 1)
    return element * (n_positions * (per_position + attention) + logit_positions * cfg.d_vocab)


def resid_post_names(model: HookedModel) -> list[str]:
    """Every block's hook_resid_post, in layer order (what prefix reuse needs cached)."""
    return resid_posts(model.cfg.n_layers)


def resid_post_by_layer(model: HookedModel, cache) -> dict[int, torch.Tensor]:
    """{layer: hook_resid_post [n, pos, d_model]} from a cache holding :func:`resid_post_names`."""
    return {layer: cache["resid_post", layer] for layer in range(model.cfg.n_layers)}


@dataclass(frozen=True)
class Baselines:
    """The per-row metric of a sweep and its mean on the clean and corrupted runs."""

    metric_fn: RowMetric
    clean_end_logits: torch.Tensor
    clean_value: float
    corrupted_value: float


def measure_baselines(task: Task, metric: str, clean_logits: torch.Tensor, corrupt_logits: torch.Tensor) -> Baselines:
    clean_end = task.end_logits(clean_logits)
    prompts = torch.arange(len(task))
    metric_fn = row_metric(task, metric, clean_end)
    return Baselines(metric_fn, clean_end, float(metric_fn(clean_end, prompts).mean()),
                     float(metric_fn(task.end_logits(corrupt_logits), prompts).mean()))


def prepare_run(model: HookedModel, task: Task, hook_names: list[str], mode: str, metric: str) -> PatchingRun:
    """Cache the source activations and measure the clean / corrupted baselines."""
    if mode not in MODES:
        raise MechscopeError(f"mode must be one of {MODES}, got {mode!r}")
    source_tokens, base = ((task.clean_tokens, task.corrupted_tokens) if mode == "denoise"
                           else (task.corrupted_tokens, task.clean_tokens))
    source_logits, source_cache = model.run_with_cache(source_tokens, names=hook_names)
    base_logits, base_cache = model.run_with_cache(base, names=resid_post_names(model))
    clean_logits, corrupt_logits = (source_logits, base_logits) if mode == "denoise" else (base_logits, source_logits)
    baselines = measure_baselines(task, metric, clean_logits, corrupt_logits)
    return PatchingRun(base, dict(source_cache), resid_post_by_layer(model, base_cache), baselines.clean_value,
                       baselines.corrupted_value, baselines.clean_end_logits)


def layer_chunks(model: HookedModel, units: Sequence[PatchUnit], per_chunk: int,
                 below_layer: int | None = None) -> list[tuple[int, list[int]]]:
    """(layer, unit indices) chunks of at most ``per_chunk`` units that never mix layers, so each
    forward can skip every block before its layer; units at ``below_layer`` or later are left out."""
    by_layer: dict[int, list[int]] = {}
    for index, unit in enumerate(units):
        layer = model.hook_point(unit.hook_name).layer()
        if below_layer is None or layer < below_layer:
            by_layer.setdefault(layer, []).append(index)
    return [(layer, indices[i : i + per_chunk]) for layer, indices in by_layer.items()
            for i in range(0, len(indices), per_chunk)]


def mean_over_prompts(metric_fn: RowMetric, logits: torch.Tensor, kept_last: bool, n: int) -> torch.Tensor:
    """[slots] mean metric of a batch whose rows [s * n, (s + 1) * n) run the task's n prompts;
    ``kept_last``: the logits hold only the last position (which is END)."""
    slots = logits.shape[0] // n
    end = logits[:, -1] if kept_last else logits
    return metric_fn(end, torch.arange(n).repeat(slots)).view(slots, n).mean(1).cpu()


def slot_hooks(slots: list[list[PatchUnit]], source: dict[str, torch.Tensor], n: int):
    """Forward hooks patching the units of slot s into rows [s * n, (s + 1) * n).

    ``source[name]`` is either [n, ...] (the same donor prompts for every slot) or
    [len(slots) * n, ...] (a donor row per batch row)."""
    by_hook: dict[str, list[tuple[int, PatchUnit]]] = {}
    for slot, units in enumerate(slots):
        for unit in units:
            by_hook.setdefault(unit.hook_name, []).append((slot, unit))

    def make(entries):
        def patch(activation: torch.Tensor, hook: HookPoint) -> torch.Tensor:
            patched = activation.clone()
            donor = source[hook.name]
            per_row = donor.shape[0] != n
            for slot, unit in entries:
                rows = slice(slot * n, (slot + 1) * n)
                patched[unit_index(hook, unit, rows)] = donor[unit_index(hook, unit, rows if per_row else slice(None))]
            return patched

        return patch

    return [(name, make(entries)) for name, entries in by_hook.items()]


def chunk_hooks(units: list[PatchUnit], source: dict[str, torch.Tensor], n: int):
    """Forward hooks patching unit u into rows [u * n, (u + 1) * n)."""
    return slot_hooks([[unit] for unit in units], source, n)


@torch.no_grad()
def activation_patch(
    model: HookedModel,
    task: Task,
    sites: str = "resid_pre",
    mode: str = "denoise",
    metric: str = "logit_diff",
    layers: list[int] | None = None,
    batch_size: int | None = None,
    memory_budget_gb: float = 2.0,
    progress: bool = True,
    *,
    ranks: Ranks | None = None,
) -> PatchingResult:
    """Patch every unit of ``sites`` (see :data:`mechscope.patching.sites.SITE_KINDS`) and score
    the task ``metric`` (mean over prompts), normalised so corrupted = 0 and clean = 1 (KL is
    reported raw). ``batch_size`` (rows per forward) defaults to what ``memory_budget_gb`` allows.
    ``ranks``: spread the forwards over the ranks (see :func:`sweep`); the same result on every rank.
    """
    check_choice("mode", mode, PatchMode)
    if batch_size is not None:
        check_int("batch_size", batch_size, minimum=1)
    check_number("memory_budget_gb", memory_budget_gb, minimum=0, strict_minimum=True)
    grid = site_grid(model, sites, task.clean_tokens.shape[1], layers)
    run = prepare_run(model, task, grid.hook_names, mode, metric)
    return sweep(model, task, grid, run, mode, metric, batch_size, memory_budget_gb, progress, ranks=ranks)


def sweep(model: HookedModel, task: Task, grid: SiteGrid, run: PatchingRun, mode: str, metric: str,
          batch_size: int | None = None, memory_budget_gb: float = 2.0, progress: bool = True, *,
          ranks: Ranks | None = None) -> PatchingResult:
    """Run every unit of ``grid``: patch ``run.source`` into ``run.base_tokens``, batched.

    With ``ranks`` of several (every rank making the same call), forward j of the sweep runs on
    rank ``j % world_size`` (:func:`~mechscope.distributed.spread_jobs`) and the per-unit metrics
    [units] are exchanged as JSON numbers (exact for float32): each forward is the one a single
    process runs (the same units in it), so the result, equal on every rank, is one process's."""
    ranks = check_ranks(ranks)
    n = len(task)
    sites = grid.kind
    keep = 1 if task.end_is_last else 0
    if batch_size is None:
        n_positions = task.clean_tokens.shape[1]
        row_bytes = estimate_row_bytes(model, n_positions, sites == "pattern", 1 if keep else n_positions)
        batch_size = max(n, int(memory_budget_gb * 2**30 // row_bytes))
    units_per_forward = max(1, batch_size // n)
    metric_fn = row_metric(task, metric, run.clean_end_logits)
    raw = torch.empty(len(grid.units))
    chunks = layer_chunks(model, grid.units, units_per_forward)
    bar = tqdm(total=len(rank_jobs(ranks, len(chunks))), desc=f"{mode} {sites}",
               disable=not (progress and ranks.is_main), leave=False)

    def forward(job: int) -> list[float]:
        layer, indices = chunks[job]
        units = [grid.units[i] for i in indices]
        tokens = run.base_tokens.repeat(len(units), 1)
        logits = model.run_with_hooks(tokens, fwd_hooks=chunk_hooks(units, run.source, n), logits_to_keep=keep,
                                      prefix=prefix_reuse(model, layer, run.base_resid_post, len(units)))
        bar.update()
        return mean_over_prompts(metric_fn, logits, bool(keep), n).tolist()

    for (_, indices), values in zip(chunks, spread_jobs(ranks, len(chunks), forward, what=f"{mode} {sites} forwards")):
        raw[indices] = torch.tensor(values, dtype=raw.dtype)
    bar.close()
    return build_result(grid, raw, run.clean_value, run.corrupted_value, mode, metric, position_labels(model, task), info={
        "prompts": n, "forwards": len(chunks), "rows_per_forward": units_per_forward * n})


def position_labels(model: HookedModel, task: Task) -> list[str]:
    """Position labels: the first prompt's tokens, with the task's named positions marked."""
    tokens = model.to_str_tokens(task.clean_tokens[0])
    names = {int(pos[0]): name for name, pos in task.positions.items()}
    return [f"{i}:{tok!r}" + (f" [{names[i]}]" if i in names else "") for i, tok in enumerate(tokens)]


def build_result(grid: SiteGrid, raw: torch.Tensor, clean_value: float, corrupted_value: float, mode: str,
                 metric: str, positions: list[str], info: dict) -> PatchingResult:
    """Shape the raw per-unit metric [units] into a result over the grid's axes."""
    labels = {"layer": [str(layer) for layer in grid.layers]}
    for axis, size in zip(grid.axes, grid.shape):
        if axis in ("head", "kv_head"):
            labels[axis] = [str(h) for h in range(size)]
    if "position" in grid.axes:
        labels["position"] = positions
    raw = raw.view(grid.shape)
    normalise = metric != "kl"
    gap = clean_value - corrupted_value
    scores = (raw - corrupted_value) / gap if normalise and gap != 0 else raw.clone()
    return PatchingResult(grid.kind, mode, metric, grid.axes, labels, scores, raw, clean_value,
                          corrupted_value, normalised=normalise and gap != 0, info=info)
