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

T = TypeVar("T")
_END = object()


class ModelWorker:
    """Runs ``job(model)`` calls one at a time on one thread; ``load()`` gives the model (called
    once, in that thread, on the first job)."""

    def __init__(self, load: Callable[[], Any], name: str = "") -> None:
        self._load, self.name = load, name
        self._model: Any = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mechscope-model")
        self.jobs_run = 0

    @property
    def loaded(self) -> bool:
        return self._model is not None

    def _with_model(self, job: Callable[[Any], T]) -> T:
        if self._model is None:
            self._model = self._load()
        self.jobs_run += 1
        return job(self._model)

    def submit(self, job: Callable[[Any], T]) -> Future:
        """Queue ``job``; its result (or exception) arrives on the returned future."""
        return self._executor.submit(self._with_model, job)

    def run(self, job: Callable[[Any], T], timeout: float | None = 600) -> T:
        """``job``'s result, waiting for the jobs queued before it."""
        return self.submit(job).result(timeout)

    def stream(self, job: Callable[[Any, Callable[[Any], None], Callable[[], bool]], None]) -> Iterator[Any]:
        """Items that ``job(model, emit, cancelled)`` emits, as they come. Closing the iterator
        (a client that went away) makes ``cancelled()`` true, so the job can stop early and free
        the worker; an exception in the job is raised here after the items before it."""
        items: queue.Queue = queue.Queue()
        stop = threading.Event()

        def run(model) -> None:
            try:
                job(model, items.put, stop.is_set)
            finally:
                items.put(_END)

        future = self.submit(run)
        try:
            while True:
                item = items.get()
                if item is _END:
                    break
                yield item
            future.result()  # re-raises the job's exception, if any
        finally:
            stop.set()

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def model_loader(name: str) -> Callable[[], Any]:
    """A loader for :class:`ModelWorker`: ``mechscope.load(name)`` when called (a bad name fails
    the first job with the loader's own message)."""
    def load():
        from mechscope.models.loading import load as load_model

        return load_model(name)
    return load


__all__ = ["ModelWorker", "model_loader"]
