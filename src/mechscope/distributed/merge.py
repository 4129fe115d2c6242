"""Per-rank results combined exactly: top-k lists, histograms, and independent jobs.

Dashboards, sweeps and audits split their work over ranks (contiguous shares of the contexts,
or job ``i`` on rank ``i % world_size``); what they report must not depend on the world size.
Each merge here gives, on every rank, exactly what one process computes on all the data:

- :func:`top_k` orders by value, largest first, and breaks ties by the smaller *global* index
  (a token's or an example's position in the whole data set), so a tie has one answer however
  the data was split; :func:`merge_top_k` gathers each rank's own top ``k`` (any of the global
  top ``k`` is among its rank's top ``k``) and takes the top ``k`` of those;
- :func:`merged_histogram` bins every rank's values between the *global* minimum and maximum
  (two numbers all-reduced), so each value falls in the bin it would fall in on one process, and
  the counts add up: equal to ``torch.histogram`` of all the values;
- :func:`spread_jobs` runs independent jobs (one latent's explanation, one patching chunk) on
  the ranks in turn and returns every result, in job order, on every rank; a job that fails
  stops every rank with one :class:`~mechscope.errors.DistributedError` instead of leaving the
  others waiting.

A world of one communicates nothing: the merges reduce to the one-process computation.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

from mechscope.distributed.group import Ranks, check_ranks
from mechscope.errors import DistributedError, InputTypeError, NonFiniteError
from mechscope.validate import check_int


def _check_list(values: Any, global_index: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """``values`` [n] (real, no NaN) and ``global_index`` [n] (integer), checked."""
    if not isinstance(values, torch.Tensor) or values.dim() != 1 or values.is_complex():
        raise InputTypeError(f"values must be a 1-d real tensor [n]; got "
                             f"{tuple(values.shape) if isinstance(values, torch.Tensor) else type(values).__name__}")
    if (not isinstance(global_index, torch.Tensor) or global_index.shape != values.shape
            or global_index.is_floating_point() or global_index.is_complex() or global_index.dtype == torch.bool):
        described = (f"{global_index.dtype} {tuple(global_index.shape)}" if isinstance(global_index, torch.Tensor)
                     else type(global_index).__name__)
        raise InputTypeError(f"global_index must be an integer tensor of the values' shape {tuple(values.shape)}; "
                             f"got {described}")
    if values.is_floating_point() and bool(values.isnan().any()):
        # NaN has no place in an order: torch.topk and sort would put it first, silently.
        raise NonFiniteError(f"values hold {int(values.isnan().sum())} NaN of {values.numel()}; a top-k needs "
                             "ordered values")
    return values, global_index.long()


def top_k(values: torch.Tensor, global_index: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` largest ``values`` [n] (all of them when n <= k) and their ``global_index`` [n]
    (long), largest first; equal values in order of increasing global index. Returns (values
    [min(n, k)], global_index [min(n, k)]): the same for any order of the input."""
    values, global_index = _check_list(values, global_index)
    k = check_int("k", k, 0)
    if k == 0:
        return values[:0], global_index[:0]
    if k < values.numel():
        # Only values at or above the k-th largest can be in the answer (every tie at the cut
        # included): the exact two-key sort below then runs on about k entries, not n.
        cut = values.topk(k).values[-1]
        keep = (values >= cut).nonzero().flatten()
        values, global_index = values[keep], global_index[keep]
    # Two stable sorts make one sort on (value descending, index ascending): the second keeps
    # the first's order among equal values.
    by_index = global_index.argsort(stable=True)
    by_value = values[by_index].argsort(descending=True, stable=True)
    order = by_index[by_value][:k]
    return values[order], global_index[order]


def merge_top_k_many(ranks: Ranks, values: Sequence[torch.Tensor], global_index: Sequence[torch.Tensor],
                     k: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Several independent top-k lists merged over the ranks in one exchange: list ``j`` is
    this rank's ``values[j]`` [n_j] with ``global_index[j]`` [n_j] (n_j may differ between
    lists and ranks, 0 included). Returns, per list, exactly :func:`top_k` of every rank's
    entries together (values [<= k], global index [<= k] long, on CPU), equal on every rank.
    Every rank must pass the same number of lists, with values of the same dtype."""
    ranks = check_ranks(ranks)
    k = check_int("k", k, 0)
    if len(values) != len(global_index):
        raise InputTypeError(f"values and global_index must hold one tensor per list; got {len(values)} and "
                             f"{len(global_index)}")
    if not ranks.distributed:
        return [(v.cpu(), i.cpu()) for v, i in (top_k(v, i, k) for v, i in zip(values, global_index))]
    try:
        local, bad = [top_k(v, i, k) for v, i in zip(values, global_index)], 0
    except NonFiniteError:  # flagged in the exchange below, so every rank refuses it, not only this one
        local = [(v[:0], i[:0].long()) for v, i in zip(values, global_index)]
        bad = 1
    # Each rank sends only its own top k of each list, tagged with the list's number: two
    # gathers (keys, values) whatever the number of lists. A first key row (-1, number of
    # lists) lets every rank check that the others merge as many lists.
    dtype = functools.reduce(torch.promote_types, [v.dtype for v, _ in local[1:]],
                             local[0][0].dtype if local else torch.float32)
    keys = torch.cat([torch.tensor([[-1, len(local)], [-2, bad]]),
                      *[torch.stack([torch.full_like(i, j).cpu(), i.cpu()], 1) for j, (_, i) in enumerate(local)]])
    sent = torch.cat([torch.zeros(2, dtype=dtype), *[v.detach().to("cpu", dtype) for v, _ in local]])
    every_key = torch.cat(ranks.all_gather_rows(keys, what="merging top-k lists (indices)"))
    every_value = torch.cat(ranks.all_gather_rows(sent, what="merging top-k lists (values)"))
    flagged = [rank for rank, flag in enumerate(every_key[every_key[:, 0] == -2, 1].tolist()) if flag]
    if flagged:
        raise NonFiniteError(f"the top-k values of rank(s) {flagged} hold NaN; a top-k needs ordered values")
    lists = every_key[every_key[:, 0] == -1, 1].tolist()
    if len(set(lists)) > 1:
        raise DistributedError("the ranks merge different numbers of top-k lists ("
                               + ", ".join(f"rank {r}: {n}" for r, n in enumerate(lists))
                               + "): every rank must pass the same lists")
    merged = []
    for j in range(len(local)):
        rows = every_key[:, 0] == j
        merged.append(top_k(every_value[rows], every_key[rows, 1], k))
    return merged


def merge_top_k(ranks: Ranks, values: torch.Tensor, global_index: torch.Tensor,
                k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`top_k` of every rank's ``values`` [n_rank] and ``global_index`` [n_rank] together
    (counts may differ between ranks), equal on every rank: (values [<= k], global index [<= k])."""
    return merge_top_k_many(ranks, [values], [global_index], k)[0]


def merged_histograms(ranks: Ranks, columns: Sequence[torch.Tensor],
                      bins: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """One histogram per entry of ``columns`` (this rank's values [n_j], floating point; n_j may
    be 0) over every rank's values of that column, in two all-reduces for all columns: returns
    per column (edges [bins + 1], counts [bins]), equal to ``torch.histogram(all values,
    bins)`` (its edges and hist) on one process. Every rank must pass the same number of columns."""
    ranks = check_ranks(ranks)
    bins = check_int("bins", bins, 1)
    for j, column in enumerate(columns):
        if not isinstance(column, torch.Tensor) or column.dim() != 1 or not column.is_floating_point():
            raise InputTypeError(f"column {j} must be a 1-d floating-point tensor; got "
                                 f"{column.dtype if isinstance(column, torch.Tensor) else type(column).__name__}")
    if not columns:
        return []
    columns = [column.detach().cpu() for column in columns]
    # The range is the global minimum and maximum, as torch takes its range from all the values
    # (one all-reduce of [-min, max] with max). An empty share sends the neutral (+inf, -inf); a
    # NaN is flagged in the same all-reduce, so every rank refuses it, not only its holder.
    nan = [bool(c.isnan().any()) for c in columns]
    local = torch.tensor([[-math.inf, -math.inf, 1.0] if bad else [-float(c.min()), float(c.max()), 0.0]
                          if c.numel() else [-math.inf, -math.inf, 0.0] for c, bad in zip(columns, nan)],
                         dtype=torch.float64)
    ranges = ranks.all_reduce(local, op="max", what="the histograms' range")
    flagged = [j for j, flag in enumerate(ranges[:, 2].tolist()) if flag > 0]
    if flagged:
        raise NonFiniteError(f"columns {flagged[:8]} hold NaN (on some rank); a histogram needs ordered values")
    results, counts = [], []
    for column, (negative_low, high, _) in zip(columns, ranges.tolist()):
        if high == -math.inf:
            # No value on any rank: torch's own choice of range for an empty input.
            hist, edges = torch.histogram(column, bins=bins)
        else:
            # Same float endpoints, so the same edges as one process; each value then falls in the
            # same bin (the maximum in the last one) whichever rank holds it.
            hist, edges = torch.histogram(column, bins=bins, range=(-negative_low, high))
        results.append((edges, hist.dtype))
        counts.append(hist.round().long())
    summed = ranks.all_reduce(torch.stack(counts), what="the histograms' counts")
    return [(edges, total.to(dtype)) for (edges, dtype), total in zip(results, summed)]


def merged_histogram(ranks: Ranks, values: torch.Tensor, bins: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The histogram of every rank's ``values`` [n_rank] together in ``bins`` equal bins between
    their global minimum and maximum: (edges [bins + 1], counts [bins]), exactly
    ``torch.histogram(all values, bins)`` on one process, equal on every rank."""
    return merged_histograms(ranks, [values], bins)[0]


def contiguous_share(ranks: Ranks, n_items: int, block: int = 1) -> range:
    """This rank's contiguous share of ``n_items`` items (contexts), in rank order: whole
    ``block``s of items (the last block may be short), the blocks split as evenly as possible,
    earlier ranks taking one more. With ``block`` the one-process batch size, every rank's
    batches are batches of the one-process run, so each forward computes the same numbers."""
    ranks = check_ranks(ranks)
    n_items = check_int("n_items", n_items, 0)
    block = check_int("block", block, 1)
    blocks = -(-n_items // block)
    base, extra = divmod(blocks, ranks.world_size)
    first = ranks.rank * base + min(ranks.rank, extra)
    last = first + base + (1 if ranks.rank < extra else 0)
    return range(min(first * block, n_items), min(last * block, n_items))


def rank_jobs(ranks: Ranks, n_jobs: int) -> range:
    """The jobs :func:`spread_jobs` runs on this rank: ``rank, rank + world_size, ...``."""
    ranks = check_ranks(ranks)
    return range(ranks.rank, check_int("n_jobs", n_jobs, 0), ranks.world_size)


def spread_jobs(ranks: Ranks, n_jobs: int, run_job: Callable[[int], Any], what: str = "jobs") -> list[Any]:
    """Run ``run_job(i)`` for i in ``range(n_jobs)``, job i on rank ``i % world_size``, and
    return every result (JSON-serialisable; returned as JSON reads it back: tuples become lists)
    in job order on every rank: what one process returns.

    The ranks exchange results after each round (one job per rank), so a rank waits for the
    others at most one job's time (within the group's ``wait_timeout_s``), and a
    job that raises stops every rank at the end of its round: the failing rank still takes part
    in the exchange, then every rank raises a :class:`~mechscope.errors.DistributedError` naming
    the job, its rank and its error. In a world of one the job's own error is raised."""
    ranks = check_ranks(ranks)
    n_jobs = check_int("n_jobs", n_jobs, 0)
    if not callable(run_job):
        raise InputTypeError(f"run_job must be a function of the job index; got {type(run_job).__name__}")
    if not ranks.distributed:
        return [json.loads(json.dumps(run_job(job))) for job in range(n_jobs)]
    results: list[Any] = []
    # At least one round even without jobs, so ranks that disagree on n_jobs find out.
    for first in range(0, max(n_jobs, 1), ranks.world_size):
        job = first + ranks.rank
        outcome: dict[str, Any] = {"n_jobs": n_jobs}
        failed: BaseException | None = None
        if job < n_jobs:
            try:
                # Serialised here: a result JSON cannot hold fails on its own rank, not inside
                # the exchange where the other ranks would wait for it.
                outcome["result"] = json.loads(json.dumps(run_job(job)))
            except Exception as error:  # re-raised below as a DistributedError on every rank
                failed = error
                outcome["error"] = f"{type(error).__name__}: {error}"
        try:  # a meeting: a rank may wait for the round's slowest job (wait_timeout_s)
            shared = ranks.gather_json(outcome, what=f"{what}, round {first // ranks.world_size + 1}", patient=True)
        except DistributedError as lost:
            if failed is not None:
                raise failed from lost
            raise
        counts = {one["n_jobs"] for one in shared}
        if len(counts) > 1:
            raise DistributedError(f"the ranks disagree on the number of {what} ("
                                   + ", ".join(f"rank {r}: {one['n_jobs']}" for r, one in enumerate(shared))
                                   + "): every rank must run the same command and options")
        errors = [(first + rank, rank, one["error"]) for rank, one in enumerate(shared) if "error" in one]
        if errors:
            listed = "; ".join(f"job {index} failed on rank {rank} of {ranks.world_size}: {message}"
                               for index, rank, message in errors)
            raise DistributedError(f"{what}: {listed}; every rank stopped after this round") from failed
        results.extend(one["result"] for one in shared if "result" in one)
    return results


__all__ = ["contiguous_share", "merge_top_k", "merge_top_k_many", "merged_histogram", "merged_histograms",
           "rank_jobs", "spread_jobs", "top_k"]
