"""A reference, not the API: activation patching with one forward per patched unit, the way
TransformerLens-style helpers do it. The tests check that the batched
:func:`mechscope.patching.activation_patch` gives the same numbers, and benchmarks/patching.py
times the two side by side. Use ``activation_patch``."""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from mechscope.models.hooked_model import HookedModel
from mechscope.patching.activation import build_result, chunk_hooks, position_labels, prepare_run
from mechscope.patching.metrics import row_metric
from mechscope.patching.result import PatchingResult
from mechscope.patching.sites import site_grid
from mechscope.tasks.base import Task


@torch.no_grad()
def activation_patch_naive(model: HookedModel, task: Task, sites: str = "resid_pre", mode: str = "denoise",
                           metric: str = "logit_diff", layers: list[int] | None = None,
                           progress: bool = True) -> PatchingResult:
    """Reference implementation: one forward per patched unit (what TransformerLens-style
    helpers do). Same numbers as :func:`activation_patch`, used to test and benchmark it."""
    grid = site_grid(model, sites, task.clean_tokens.shape[1], layers)
    run = prepare_run(model, task, grid.hook_names, mode, metric)
    metric_fn = row_metric(task, metric, run.clean_end_logits)
    prompts = torch.arange(len(task))
    raw = torch.empty(len(grid.units))
    for index, unit in enumerate(tqdm(grid.units, desc=f"naive {sites}", disable=not progress, leave=False)):
        logits = model.run_with_hooks(run.base_tokens, fwd_hooks=chunk_hooks([unit], run.source, len(task)))
        raw[index] = metric_fn(task.end_logits(logits), prompts).mean().cpu()
    return build_result(grid, raw, run.clean_value, run.corrupted_value, mode, metric, position_labels(model, task),
                   info={"prompts": len(task), "forwards": len(grid.units)})
