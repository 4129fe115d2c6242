"""Run N ranks on this machine without torchrun: what the tests and benchmarks use.

``run_ranks(target, world_size, workdir)`` starts ``world_size`` fresh processes (the spawn
start method, as torchrun's are fresh interpreters), joins them into one gloo group through a
``file://`` rendezvous inside ``workdir`` (no TCP port to collide with other runs), calls
``target(ranks, *args)`` in each, and waits at most ``timeout_s``. It returns each rank's exit
code and error (type and message, read back from JSON); a rank still running at the deadline
is killed and reported as such, so a test of a hang fails instead of hanging.
"""

from __future__ import annotations

import json
import multiprocessing
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from mechscope.distributed.group import DistributedConfig, join, leave
from mechscope.validate import check_int, check_number


@dataclass(frozen=True)
class RankOutcome:
    """How one rank ended: its exit code (None: killed at the deadline) and, when it raised,
    the error's type name and message."""

    rank: int
    exit_code: int | None
    error_type: str | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


def _rank_main(target: Callable, rank: int, world_size: int, workdir: str, backend: str, timeout_s: float,
               threads: int, args: tuple) -> None:
    torch.set_num_threads(threads)
    folder = Path(workdir)
    config = DistributedConfig(backend=backend, timeout_s=timeout_s, init_method=f"file://{folder / 'rendezvous'}",
                               rank=rank, world_size=world_size)
    try:
        ranks = join(config)
        try:
            target(ranks, *args)
        finally:
            leave()
    except BaseException as error:  # reported to the parent, which decides what failed
        (folder / f"rank-{rank}.error.json").write_text(json.dumps(
            {"type": type(error).__name__, "message": str(error), "traceback": traceback.format_exc()}))
        raise SystemExit(1) from None


def run_ranks(target: Callable, world_size: int, workdir: str | Path, *args, backend: str = "gloo",
              timeout_s: float = 120.0, collective_timeout_s: float = 60.0, threads: int = 1) -> list[RankOutcome]:
    """Run ``target(ranks, *args)`` on ``world_size`` local ranks; ``target`` must be importable
    (a module-level function). Returns one :class:`RankOutcome` per rank, in rank order."""
    check_int("world_size", world_size, 1)
    check_number("timeout_s", timeout_s, 1.0)
    check_int("threads", threads, 1)
    folder = Path(workdir)
    folder.mkdir(parents=True, exist_ok=True)
    for stale in [folder / "rendezvous", *folder.glob("rank-*.error.json")]:
        stale.unlink(missing_ok=True)  # a file store must start empty; old errors are not this run's
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=_rank_main, args=(target, rank, world_size, str(folder), backend,
                                                          collective_timeout_s, threads, args), daemon=True)
                 for rank in range(world_size)]
    for process in processes:
        process.start()
    deadline = time.monotonic() + timeout_s
    for process in processes:
        process.join(max(0.0, deadline - time.monotonic()))
    outcomes = []
    for rank, process in enumerate(processes):
        if process.is_alive():
            process.kill()
            process.join()
            outcomes.append(RankOutcome(rank, None, "Timeout", f"still running after {timeout_s:g} s; killed"))
            continue
        report = folder / f"rank-{rank}.error.json"
        error = json.loads(report.read_text()) if report.exists() else {}
        outcomes.append(RankOutcome(rank, process.exitcode, error.get("type"), error.get("message")))
    return outcomes


__all__ = ["RankOutcome", "run_ranks"]
