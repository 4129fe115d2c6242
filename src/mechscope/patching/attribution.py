"""Attribution patching (AtP): a first-order estimate of every site's patching effect from one
forward + backward on the patched-into run and one forward on the source run.

effect(unit) ~= sum over the unit's elements and the prompts of
(source activation - base activation) * d mean_metric / d base activation.
"""

from __future__ import annotations

import torch

from mechscope.errors import MechscopeError
from mechscope.models.hooked_model import HookedModel
from mechscope.patching.activation import MODES, build_result, position_labels, unit_index
from mechscope.patching.metrics import row_metric
from mechscope.patching.result import PatchingResult
from mechscope.patching.sites import site_grid
from mechscope.tasks.base import Task


def attribution_patch(
    model: HookedModel,
    task: Task,
    sites: str = "heads",
    mode: str = "denoise",
    metric: str = "logit_diff",
    layers: list[int] | None = None,
) -> PatchingResult:
    """AtP estimates for every unit of ``sites``, on the same scale as :func:`activation_patch`
    (normalised: corrupted = 0, clean = 1). Cost: two forwards and one backward in all."""
    if mode not in MODES:
        raise MechscopeError(f"mode must be one of {MODES}, got {mode!r}")
    if metric == "kl":
        raise MechscopeError("AtP needs a metric with a useful gradient at the base run; KL to clean is flat "
                         "(zero gradient) at the clean run: use logit_diff, prob or prob_diff")
    grid = site_grid(model, sites, task.clean_tokens.shape[1], layers)
    names = grid.hook_names
    source_tokens, base_tokens = ((task.clean_tokens, task.corrupted_tokens) if mode == "denoise"
                                  else (task.corrupted_tokens, task.clean_tokens))
    source_logits, source = model.run_with_cache(source_tokens, names=names)
    prompts = torch.arange(len(task))
    metric_fn = row_metric(task, metric)  # KL, the one metric needing clean logits, is refused above
    base_value, base, grads = model.run_with_cache_and_grads(
        base_tokens, lambda logits: metric_fn(task.end_logits(logits), prompts).mean(), names=names)
    source_value = float(metric_fn(task.end_logits(source_logits), prompts).mean())

    estimates = torch.empty(len(grid.units))
    # float32 before subtracting: bf16 differences and products lose the small effects
    products = {name: (source[name].float() - base[name].float()) * grads[name].float() for name in names}
    for index, unit in enumerate(grid.units):
        hook = model.hook_point(unit.hook_name)
        estimates[index] = products[unit.hook_name][unit_index(hook, unit, slice(None))].sum().cpu()
    base_value = float(base_value)
    clean_value, corrupted_value = (source_value, base_value) if mode == "denoise" else (base_value, source_value)
    raw = base_value + estimates  # estimated metric of each patched run
    return build_result(grid, raw, clean_value, corrupted_value, mode, metric, position_labels(model, task),
                   info={"prompts": len(task), "method": "attribution patching", "forwards": 2, "backwards": 1})


def correlation(a: PatchingResult, b: PatchingResult) -> float:
    """Pearson correlation of two results' scores over all sites (e.g. AtP against exact)."""
    if a.scores.shape != b.scores.shape:
        raise MechscopeError(f"results cover different sites: {tuple(a.scores.shape)} vs {tuple(b.scores.shape)}")
    x, y = a.scores.flatten().double(), b.scores.flatten().double()
    x, y = x - x.mean(), y - y.mean()
    return float((x * y).sum() / (x.norm() * y.norm()))
