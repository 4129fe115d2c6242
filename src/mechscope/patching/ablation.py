"""Ablation sweeps: knock out each site of the clean run (zero, mean over a reference
distribution, or resampled from it) and score the behaviour that is lost."""

from __future__ import annotations

from typing import Literal, get_args

import torch

from mechscope.distributed import Ranks
from mechscope.errors import MechscopeError
from mechscope.models.hooked_model import HookedModel
from mechscope.patching.activation import PatchingRun, prepare_run, sweep
from mechscope.patching.result import PatchingResult
from mechscope.patching.sites import site_grid
from mechscope.tasks.base import Task

AblationMethod = Literal["zero", "mean", "resample"]
METHODS: tuple[str, ...] = get_args(AblationMethod)


def ablation_values(activations: torch.Tensor, reference: torch.Tensor, method: str, n: int,
                    seed: int = 0) -> torch.Tensor:
    """What replaces an activation of shape ``activations`` [n, ...] (only its shape and dtype
    are used): zeros; the reference's mean over its prompts (per position, since task prompts
    share one length) broadcast to n rows; or n reference rows drawn at random (seeded)."""
    if method == "zero":
        return torch.zeros_like(activations)
    if method == "mean":
        return reference.float().mean(0, keepdim=True).to(activations.dtype).expand_as(activations)
    if method == "resample":
        generator = torch.Generator().manual_seed(seed)
        rows = torch.randint(reference.shape[0], (n,), generator=generator)
        return reference[rows.to(reference.device)]
    raise MechscopeError(f"unknown ablation {method!r}; choose one of: {', '.join(METHODS)}")


@torch.no_grad()
def ablation_sweep(
    model: HookedModel,
    task: Task,
    sites: str = "heads",
    method: str = "mean",
    reference: torch.Tensor | None = None,
    metric: str = "logit_diff",
    layers: list[int] | None = None,
    seed: int = 0,
    batch_size: int | None = None,
    progress: bool = True,
    *,
    ranks: Ranks | None = None,
) -> PatchingResult:
    """Ablate each unit of ``sites`` in the clean run. ``reference`` [m, pos] tokens give the
    distribution for mean / resample ablation (default: the task's corrupted prompts, which keep
    the template but not the answer). Scores: 1 = clean behaviour kept, 0 = as corrupted.
    ``ranks``: spread the sweep's forwards over the ranks (every rank making the same call; see
    :func:`~mechscope.patching.activation.sweep`); the same result, on every rank, as one process."""
    if method not in METHODS:
        raise MechscopeError(f"unknown ablation {method!r}; choose one of: {', '.join(METHODS)}")
    grid = site_grid(model, sites, task.clean_tokens.shape[1], layers)
    names = grid.hook_names
    if reference is not None and reference.shape[1] != task.clean_tokens.shape[1]:
        raise MechscopeError(f"reference prompts have {reference.shape[1]} tokens, the task {task.clean_tokens.shape[1]}")
    # Noising's run: base = the clean prompts, source = the corrupted prompts' activations, which
    # are also the default reference and have the clean activations' shape.
    run = prepare_run(model, task, names, "noise", metric)
    if reference is None:
        reference, reference_cache = task.corrupted_tokens, run.source
    elif method != "zero":
        reference_cache = model.run_with_cache(reference, names=names)[1]
    else:
        reference_cache = None
    source = {name: ablation_values(run.source[name], reference_cache[name] if reference_cache else None,
                                    method, len(task), seed) for name in names}
    ablated = PatchingRun(run.base_tokens, source, run.base_resid_post, run.clean_value, run.corrupted_value,
                          run.clean_end_logits)
    result = sweep(model, task, grid, ablated, "noise", metric, batch_size, progress=progress, ranks=ranks)
    result.mode = f"{method}-ablation"
    result.info["reference_prompts"] = 0 if method == "zero" else int(reference.shape[0])
    return result
