"""The process group every distributed run shares: who am I, how many are we, and collectives
that fail with a clear error instead of hanging.

mechscope runs on ``torch.distributed`` as ``torchrun`` launches it (or any launcher that sets
``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``). One code path:
gloo on CPU, NCCL when the ranks have GPUs; a single process is a world of one and calls no
collective at all, so every run is the same script with or without ``torchrun``.

``Ranks`` is a value passed to whatever runs distributed (no global state of mechscope's own;
torch keeps its default group). Its collectives move CPU tensors to the backend's device and
back, count the bytes they send (for the benchmarks' communication volume), and turn a
backend failure (a peer that died, or one that stalled past ``timeout_s``) into a
:class:`~mechscope.errors.DistributedError` that says what to do.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.distributed as torch_dist

from mechscope.errors import ConfigError, DistributedError, InputTypeError
from mechscope.validate import check_choice, check_int, check_number

Backend = Literal["auto", "gloo", "nccl"]
# torchrun's environment: a process launched with these is one rank of a group.
LAUNCH_VARIABLES = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class DistributedConfig:
    """How to join the group. ``backend="auto"`` takes NCCL when CUDA is available, else gloo.
    ``timeout_s`` bounds every collective: a rank that died or stalled stops the others with
    a :class:`DistributedError` after at most this long. ``wait_timeout_s`` bounds the meetings
    at the end of a phase (a harvest, a rank's layers, a round of jobs), where a rank that is
    done waits for slower ones: they go through a second, gloo group with this longer timeout (a
    rank that died still ends them at once: its connections close). ``init_method`` overrides
    torchrun's environment rendezvous (e.g. ``file:///shared/rendezvous`` with explicit rank and
    world size)."""

    backend: Backend = "auto"
    timeout_s: float = 600.0
    wait_timeout_s: float = 86_400.0
    init_method: str | None = None
    rank: int | None = None
    world_size: int | None = None

    def __post_init__(self) -> None:
        check_choice("backend", self.backend, Backend)
        check_number("timeout_s", self.timeout_s, 1.0)
        check_number("wait_timeout_s", self.wait_timeout_s, 1.0)
        if self.init_method is not None and not isinstance(self.init_method, str):
            raise ConfigError(f"init_method must be a URL string such as file:///tmp/rendezvous; got {self.init_method!r}")
        if (self.rank is None) != (self.world_size is None):
            raise ConfigError("give rank and world_size together (or neither, to read torchrun's RANK / WORLD_SIZE)")
        if self.world_size is not None:
            check_int("world_size", self.world_size, 1)
            check_int("rank", self.rank, 0, self.world_size - 1)


@dataclass
class Ranks:
    """This process's place in the group: ``rank`` of ``world_size``, the ``backend`` and the
    ``device`` its collectives use. ``sent_bytes`` counts what this rank sent (per collective,
    the payload it contributes), for the benchmarks."""

    rank: int = 0
    world_size: int = 1
    backend: str = "none"
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    timeout_s: float = 600.0
    sent_bytes: int = 0
    wait_timeout_s: float = 86_400.0
    meeting: Any = None  # the gloo group of the end-of-phase meetings (None: the default group)

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that writes shared files and shows progress."""
        return self.rank == 0

    # ------------------------------------------------------------------ collectives
    def _run(self, what: str, operation, patient: bool = False):
        try:
            return operation()
        except (RuntimeError, torch_dist.DistBackendError) as error:
            limit = f"wait_timeout_s={self.wait_timeout_s:g}" if patient else f"timeout_s={self.timeout_s:g}"
            raise DistributedError(
                f"rank {self.rank} of {self.world_size}: {what} failed ({str(error).splitlines()[0][:300]}). Another "
                f"rank died or stalled for more than {limit} s, so this rank stopped too; "
                "relaunch the same command to resume from the last checkpoint or shard") from error

    def all_reduce(self, tensor: torch.Tensor, op: Literal["sum", "max", "min"] = "sum",
                   what: str = "an all-reduce") -> torch.Tensor:
        """``tensor`` reduced over every rank (a new tensor on the input's device; the input is
        left alone). A world of one returns a copy."""
        if not self.distributed:
            return tensor.clone()
        ops = {"sum": torch_dist.ReduceOp.SUM, "max": torch_dist.ReduceOp.MAX, "min": torch_dist.ReduceOp.MIN}
        moved = tensor.detach().to(self.device, copy=True).contiguous()
        self.sent_bytes += moved.numel() * moved.element_size()
        self._run(what, lambda: torch_dist.all_reduce(moved, op=ops[op]))
        return moved.to(tensor.device)

    def all_gather(self, tensor: torch.Tensor, what: str = "an all-gather", patient: bool = False) -> list[torch.Tensor]:
        """Every rank's ``tensor`` (same shape and dtype on every rank), in rank order.
        ``patient``: an end-of-phase meeting (the long ``wait_timeout_s``; gloo, on CPU)."""
        if not self.distributed:
            return [tensor.clone()]
        group = self.meeting if patient else None
        device = torch.device("cpu") if group is not None else self.device
        moved = tensor.detach().to(device).contiguous()
        parts = [torch.empty_like(moved) for _ in range(self.world_size)]
        self.sent_bytes += moved.numel() * moved.element_size()
        self._run(what, lambda: torch_dist.all_gather(parts, moved, group=group), patient)
        return [part.to(tensor.device) for part in parts]

    def all_gather_rows(self, tensor: torch.Tensor, what: str = "an all-gather",
                        patient: bool = False) -> list[torch.Tensor]:
        """Every rank's ``tensor`` [n_rank, ...] when the row counts differ between ranks: padded
        to the longest, gathered, and cut back (nothing is dropped)."""
        if not self.distributed:
            return [tensor.clone()]
        counts = self.all_gather(torch.tensor([tensor.shape[0]]), what=f"{what} (row counts)", patient=patient)
        longest = int(max(int(c) for c in counts))
        padded = torch.zeros((longest, *tensor.shape[1:]), dtype=tensor.dtype)
        padded[:tensor.shape[0]] = tensor.detach().cpu()
        return [part[:int(count)] for part, count in zip(self.all_gather(padded, what, patient), counts)]

    def gather_json(self, value: Any, what: str = "gathering results", patient: bool = False) -> list[Any]:
        """Every rank's JSON-serialisable ``value``, in rank order (JSON, never pickle)."""
        if not self.distributed:
            return [json.loads(json.dumps(value))]
        payload = torch.frombuffer(bytearray(json.dumps(value).encode()), dtype=torch.uint8)
        return [json.loads(bytes(part.tolist()).decode()) for part in self.all_gather_rows(payload, what, patient)]

    def broadcast_json(self, value: Any, what: str = "a broadcast", patient: bool = False) -> Any:
        """Rank 0's JSON-serialisable ``value`` on every rank."""
        return self.gather_json(value if self.is_main else None, what, patient)[0]

    def barrier(self, what: str = "waiting for every rank") -> None:
        if self.distributed:
            # An all-reduce rather than torch's barrier: it honours the group's timeout on every backend.
            self.all_reduce(torch.zeros(1), what=what)

    def everywhere(self, operation, what: str):
        """Run ``operation`` on every rank and return its result, but only once every rank has
        finished: if it raised on any rank, every rank raises (that rank its own error, the
        others a DistributedError naming it), so none waits for a partner that gave up."""
        failure: BaseException | None = None
        try:
            value, outcome = operation(), {}
        except Exception as error:
            if not self.distributed:
                raise
            failure, outcome = error, {"error": f"{type(error).__name__}: {error}"}
        try:
            outcomes = self.gather_json(outcome, what, patient=True)
        except DistributedError as lost:
            if failure is not None:  # this rank's own error is the news, not the meeting that failed after it
                raise failure from lost
            raise
        if failure is not None:
            raise failure
        failed = [f"rank {rank}: {one['error']}" for rank, one in enumerate(outcomes) if "error" in one]
        if failed:
            raise DistributedError(f"rank {self.rank}: another rank failed while {what} ({'; '.join(failed)}); this "
                                   "rank's own part is complete")
        return value

    def on_main(self, operation, what: str):
        """Run ``operation`` on rank 0 only; every rank then returns its JSON result, or raises
        the same error if it failed there (so no rank waits for a partner that gave up)."""
        outcome: dict = {}
        if self.is_main:
            try:
                outcome = {"value": json.loads(json.dumps(operation()))}  # serialised here: a failure is caught
            except Exception as error:
                if not self.distributed:
                    raise
                try:
                    self.broadcast_json({"error": f"{type(error).__name__}: {error}"}, what, patient=True)
                except DistributedError as lost:
                    raise error from lost
                raise  # rank 0 keeps its own error; the others raise the DistributedError below
        shared = self.broadcast_json(outcome, what, patient=True)
        if "error" in shared:
            raise DistributedError(f"rank {self.rank}: rank 0 failed while {what}: {shared['error']}")
        return shared["value"]


def check_ranks(ranks: Any) -> Ranks:
    """``ranks`` if it is a :class:`Ranks`, a world of one for None, else an InputTypeError
    (what a function taking ``ranks: Ranks | None = None`` starts with)."""
    if ranks is None:
        return Ranks()
    if not isinstance(ranks, Ranks):
        raise InputTypeError(f"ranks must be a mechscope.distributed.Ranks (from join()); got {type(ranks).__name__}")
    return ranks


def settings_digest(settings: Any) -> str:
    """SHA-256 of ``settings`` as sorted JSON."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()


def check_same_settings(ranks: Ranks, what: str, settings: dict) -> None:
    """Refuse to start (a :class:`DistributedError` on every rank) unless every rank has the
    same ``settings``; the message names each differing key and what each rank has."""
    if not ranks.distributed:
        return
    digest = torch.tensor(list(bytes.fromhex(settings_digest(settings))), dtype=torch.uint8)
    digests = ranks.all_gather(digest, what=f"comparing the {what}", patient=True)  # ranks start at their own pace
    if all(torch.equal(d, digests[0]) for d in digests):
        return
    every = ranks.gather_json(json.loads(json.dumps(settings, default=str)), what=f"comparing the {what}",
                              patient=True)
    keys = sorted({key for one in every for key in one})
    lines = [f"{key}: " + ", ".join(f"rank {r} {one.get(key, '<missing>')!r}" for r, one in enumerate(every))
             for key in keys if len({json.dumps(one.get(key), sort_keys=True) for one in every}) > 1]
    raise DistributedError(f"the ranks were started with different {what} ({'; '.join(lines)}): every rank must run "
                           "the same command and options; nothing was written")


def launched_by_torchrun() -> bool:
    """True in a process that torchrun (or a launcher like it) started as one rank of several."""
    return all(name in os.environ for name in LAUNCH_VARIABLES) and int(os.environ.get("WORLD_SIZE", "1")) > 1


def join(config: DistributedConfig | None = None) -> Ranks:
    """This process's :class:`Ranks`: joins the group (once; an existing default group is
    reused) when launched as one of several ranks or given rank/world_size; a world of one
    otherwise. NCCL ranks use ``cuda:LOCAL_RANK``."""
    config = config or DistributedConfig()
    explicit = config.world_size is not None
    if not explicit and not launched_by_torchrun():
        return Ranks(timeout_s=config.timeout_s)
    backend = config.backend
    if torch_dist.is_initialized():  # joined before (or by the caller): keep that group's backend
        backend = torch_dist.get_backend()
    elif backend == "auto":
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl" and not torch.cuda.is_available():
        raise ConfigError("backend='nccl' needs CUDA on every rank; this process has no GPU: use 'gloo' (or 'auto')")
    device = torch.device("cpu")
    if backend == "nccl":  # one GPU per rank, chosen before the group starts (as NCCL wants)
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not torch_dist.is_initialized():
        options = {"backend": backend, "timeout": datetime.timedelta(seconds=config.timeout_s)}
        if config.init_method is not None:
            options["init_method"] = config.init_method
        if explicit:
            options.update(rank=config.rank, world_size=config.world_size)
        try:
            torch_dist.init_process_group(**options)
        except (RuntimeError, ValueError, torch_dist.DistError) as error:
            raise DistributedError(f"could not join the process group ({error}); check MASTER_ADDR/MASTER_PORT or "
                                   "init_method, and that every rank was started") from error
    # The end-of-phase meetings: gloo (CPU tensors, any backend) with the long timeout. Created
    # by every rank, as new_group must be.
    meeting = torch_dist.new_group(backend="gloo", timeout=datetime.timedelta(seconds=config.wait_timeout_s))
    return Ranks(rank=torch_dist.get_rank(), world_size=torch_dist.get_world_size(), backend=backend, device=device,
                 timeout_s=config.timeout_s, wait_timeout_s=config.wait_timeout_s, meeting=meeting)


def leave() -> None:
    """Leave the process group (if one was joined)."""
    if torch_dist.is_initialized():
        torch_dist.destroy_process_group()


@contextlib.contextmanager
def joined(config: DistributedConfig | None = None) -> Iterator[Ranks]:
    """``with joined() as ranks:``: :func:`join` for the block, :func:`leave` after it (also
    when it raises), as a command run once per rank does."""
    ranks = join(config)
    try:
        yield ranks
    finally:
        leave()


__all__ = ["Backend", "DistributedConfig", "LAUNCH_VARIABLES", "Ranks", "check_ranks", "check_same_settings", "join", "joined",
           "launched_by_torchrun", "leave", "settings_digest"]
