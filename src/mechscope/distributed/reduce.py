"""Batch statistics of a data-parallel step, computed over the global batch.

Each rank holds an equal share of the batch. A per-row loss averaged over rows needs nothing
but the gradient average (the mean of equal-sized shares' means is the global mean), but
batch-level quantities do: BatchTopK's cut-off, AuxK's normaliser, which latents fired, the
input scale. Computed per rank they are a different function of the data (sparsify's and
SAELens' lesson: such variants silently change with the world size); here every one of them
is one small collective, equal on every rank.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from mechscope.distributed.group import Ranks


def global_mean(ranks: Ranks, values: torch.Tensor) -> torch.Tensor:
    """The mean of ``values`` [n] over every rank's rows (a 0-dim tensor; no gradient)."""
    if not ranks.distributed:
        return values.detach().mean()
    totals = ranks.all_reduce(torch.stack([values.detach().sum(), torch.tensor(float(values.numel()),
                                                                                dtype=values.dtype)]),
                              what="the global batch mean")
    return totals[0] / totals[1]


def global_mean_rows(ranks: Ranks, rows: torch.Tensor) -> torch.Tensor:
    """The mean row [d] of every rank's ``rows`` [n, d] together (no gradient)."""
    sums = torch.cat([rows.detach().sum(0), torch.tensor([float(rows.shape[0])], dtype=rows.dtype)])
    totals = ranks.all_reduce(sums, what="the global batch's mean row") if ranks.distributed else sums
    return totals[:-1] / totals[-1]


def global_kth_largest(ranks: Ranks, values: torch.Tensor, count: int) -> torch.Tensor:
    """The ``count``-th largest of all ranks' ``values`` [n] together (the smallest of all of
    them when there are fewer): a 0-dim tensor, equal on every rank. Each rank sends only its
    own ``count`` largest (any of the global top ``count`` is among some rank's top ``count``)."""
    local = values.topk(min(values.numel(), count)).values
    merged = torch.cat(ranks.all_gather_rows(local.cpu(), what="the BatchTopK cut-off")).to(values.device)
    return merged.topk(min(merged.numel(), count)).values[-1]


def any_rank(ranks: Ranks, flags: torch.Tensor) -> torch.Tensor:
    """``flags`` [n] bool, true where it is true on any rank."""
    if not ranks.distributed:
        return flags.clone()
    return ranks.all_reduce(flags.to(torch.uint8), op="max", what="which latents fired").bool()


def average_gradients(ranks: Ranks, parameters: Iterable[torch.nn.Parameter]) -> int:
    """Replace each parameter's gradient by its mean over the ranks, as DDP does, in one flat
    all-reduce (DDP's bucketing, with one bucket: a dictionary's gradients are one contiguous
    send). Parameters without a gradient count as zero on that rank. Returns the bytes sent."""
    parameters = [p for p in parameters if p.requires_grad]
    if not ranks.distributed or not parameters:
        return 0
    for parameter in parameters:
        if parameter.grad is None:
            parameter.grad = torch.zeros_like(parameter)
    flat = torch.cat([p.grad.reshape(-1) for p in parameters])
    summed = ranks.all_reduce(flat, what="averaging the gradients") / ranks.world_size
    offset = 0
    for parameter in parameters:
        size = parameter.numel()
        parameter.grad.copy_(summed[offset:offset + size].view_as(parameter))
        offset += size
    return flat.numel() * flat.element_size()


def broadcast_parameters(ranks: Ranks, parameters: Iterable[torch.nn.Parameter]) -> None:
    """Every rank's ``parameters`` set to rank 0's (what DDP does at construction): ranks that
    built their weights from the same seed lose nothing, ranks that did not are aligned."""
    if not ranks.distributed:
        return
    with torch.no_grad():
        for parameter in parameters:
            zeroed = parameter.detach().clone() if ranks.is_main else torch.zeros_like(parameter)
            parameter.copy_(ranks.all_reduce(zeroed, what="sharing rank 0's initial weights"))


__all__ = ["any_rank", "average_gradients", "broadcast_parameters", "global_kth_largest", "global_mean",
           "global_mean_rows"]
