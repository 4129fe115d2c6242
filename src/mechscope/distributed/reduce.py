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
    count = torch.tensor(float(values.numel()), dtype=values.dtype, device=values.device)
    totals = ranks.all_reduce(torch.stack([values.detach().sum(), count]), what="the global batch mean")
    return totals[0] / totals[1]


def global_mean_rows(ranks: Ranks, rows: torch.Tensor) -> torch.Tensor:
    """The mean row [d] of every rank's ``rows`` [n, d] together (no gradient)."""
    sums = torch.cat([rows.detach().sum(0), torch.tensor([float(rows.shape[0])], dtype=rows.dtype, device=rows.device)])
    totals = ranks.all_reduce(sums, what="the global batch's mean row") if ranks.distributed else sums
    return totals[:-1] / totals[-1]


def global_kth_largest(ranks: Ranks, values: torch.Tensor, count: int) -> torch.Tensor:
    """The ``count``-th largest of all ranks' ``values`` [n] together (the smallest of all of
    them when there are fewer): a 0-dim tensor, equal on every rank.

    Exact, and cheap: with N ranks, the minimum over ranks of each rank's ceil(count / N)-th
    largest value is a floor L at or below the answer (every rank has ceil(count / N) values
    >= L, so at least ``count`` in all); a rank then sends only its values >= L, at most its top
    ``count`` (no rank holds more of the global top ``count``). On evenly spread data that is
    about count / N values per rank, instead of ``count``."""
    local = values.topk(min(values.numel(), count)).values
    if not ranks.distributed:
        return local[-1]
    share = -(-count // ranks.world_size)
    own_floor = local[share - 1] if local.numel() >= share else local.new_tensor(float("-inf"))
    floor = ranks.all_reduce(own_floor, op="min", what="the BatchTopK cut-off's floor")
    sent = local[local >= floor]
    merged = torch.cat(ranks.all_gather_rows(sent.cpu(), what="the BatchTopK cut-off")).to(values.device)
    return merged.topk(min(merged.numel(), count)).values[-1]


def any_rank(ranks: Ranks, flags: torch.Tensor) -> torch.Tensor:
    """``flags`` [n] bool, true where it is true on any rank."""
    if not ranks.distributed:
        return flags.clone()
    return ranks.all_reduce(flags.to(torch.uint8), op="max", what="which latents fired").bool()


def average_gradients(ranks: Ranks, parameters: Iterable[torch.nn.Parameter], failed: bool = False) -> int:
    """Replace each parameter's gradient by its mean over the ranks, as DDP does, in one flat
    all-reduce (DDP's bucketing, with one bucket: a dictionary's gradients are one contiguous
    send). Parameters without a gradient count as zero on that rank. ``failed``: this rank's
    step went wrong (a non-finite loss); the flag rides in the same all-reduce, so every rank
    learns of it without another collective. Returns how many ranks failed (0 in a world of
    one: the caller raises its own error)."""
    parameters = [p for p in parameters if p.requires_grad]
    if not ranks.distributed:
        return 0
    for parameter in parameters:
        if parameter.grad is None:
            parameter.grad = torch.zeros_like(parameter)
    dtype = parameters[0].dtype if parameters else torch.float32
    flag = torch.tensor([1.0 if failed else 0.0], dtype=dtype)
    flat = torch.cat([*(p.grad.reshape(-1) for p in parameters), flag.to(parameters[0].device if parameters else "cpu")])
    summed = ranks.all_reduce(flat, what="averaging the gradients")
    offset = 0
    for parameter in parameters:
        size = parameter.numel()
        parameter.grad.copy_(summed[offset:offset + size].view_as(parameter) / ranks.world_size)
        offset += size
    return int(round(float(summed[-1])))


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
