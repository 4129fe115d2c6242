"""The one thread that owns the app's model: every request that runs it is a job on this queue.

Hooks are state on the model's modules, so two requests running at once could see each other's
hooks (a steered forward leaking into an unsteered one). One worker thread runs the jobs one after
another: a job finishes, with its hooks removed, before the next starts. The model loads in that
thread on the first job, so the server starts at once and a store-only session never loads one."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

from mechscope.errors import MechscopeError

T = TypeVar("T")
_END = object()


class WorkerBusyError(MechscopeError):
    """More jobs are waiting for the model than the worker takes; try again shortly."""


class ModelWorker:
    """Runs ``job(model)`` calls one at a time on one thread; ``load()`` gives the model (called
    once, in that thread, on the first job). At most ``max_pending`` jobs wait or run at once;
    past that, :meth:`submit` refuses with :class:`WorkerBusyError` (the server answers 503)
    instead of letting waiting requests pile up and hold the server's threads."""

    def __init__(self, load: Callable[[], Any], name: str = "", max_pending: int = 8) -> None:
        self._load, self.name, self.max_pending = load, name, max_pending
        self._model: Any = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mechscope-model")
        self._lock = threading.Lock()
        self.pending = 0
        self.jobs_run = 0

    @property
    def loaded(self) -> bool:
        return self._model is not None

    def _with_model(self, job: Callable[[Any], T]) -> T:
        try:
            if self._model is None:
                self._model = self._load()
            self.jobs_run += 1
            return job(self._model)
        finally:
            with self._lock:
                self.pending -= 1

    def submit(self, job: Callable[[Any], T]) -> Future:
        """Queue ``job``; its result (or exception) arrives on the returned future."""
        with self._lock:
            if self.pending >= self.max_pending:
                raise WorkerBusyError(f"{self.pending} requests are already waiting for the model; try again when "
                                      "they are done")
            self.pending += 1
        try:
            return self._executor.submit(self._with_model, job)
        except BaseException:
            with self._lock:
                self.pending -= 1
            raise

    def run(self, job: Callable[[Any], T]) -> T:
        """``job``'s result, waiting for the jobs queued before it."""
        return self.submit(job).result()

    def stream(self, job: Callable[[Any, Callable[[Any], None], Callable[[], bool]], None]) -> Iterator[Any]:
        """Queue ``job(model, emit, cancelled)`` now (so a busy worker refuses at once) and return
        the items it emits, as they come. Closing the iterator (a client that went away) makes
        ``cancelled()`` true, so the job can stop early and free the worker; an exception in the
        job is raised from the iterator after the items before it."""
        items: queue.Queue = queue.Queue()
        stop = threading.Event()

        def run(model) -> None:
            job(model, items.put, stop.is_set)

        future = self.submit(run)
        # Marks the end however the job ends, even when the model failed to load and it never ran.
        future.add_done_callback(lambda _: items.put(_END))

        def drain() -> Iterator[Any]:
            try:
                while True:
                    item = items.get()
                    if item is _END:
                        break
                    yield item
                future.result()  # re-raises the job's exception, if any
            finally:
                stop.set()

        return drain()

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def model_loader(name: str) -> Callable[[], Any]:
    """A loader for :class:`ModelWorker`: ``mechscope.load(name)`` when called (a bad name fails
    the first job with the loader's own message)."""
    def load():
        from mechscope.models.loading import load as load_model

        return load_model(name)
    return load


__all__ = ["ModelWorker", "WorkerBusyError", "model_loader"]
