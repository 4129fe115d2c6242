"""A disk cache of completions, keyed by a hash of the backend's identity and the request.

One small JSON file per answer (``folder/ab/abcdef....json``, written atomically), so a cache
of any size is never held in memory, a killed run keeps every answer it had, and a rerun asks
the model only what it has not answered yet. Requests are sent in chunks of ``chunk`` and each
chunk is stored before the next is sent: when the backend fails midway (an unreachable endpoint,
a timeout), what was answered stays cached and the error names how much.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from mechscope.autointerp.backends.base import Backend, BackendError, ChatRequest, Completion, TokenLogprobs
from mechscope.files import READ_ERRORS, atomic_text
from mechscope.validate import check_int


@dataclass
class CachedBackend(Backend):
    """``inner`` with answers kept under ``folder``."""

    inner: Backend
    folder: Path
    chunk: int = 16

    def __post_init__(self) -> None:
        if not isinstance(self.inner, Backend):
            raise BackendError(f"CachedBackend wraps a Backend, got {type(self.inner).__name__}")
        self.folder = Path(self.folder)
        check_int("chunk", self.chunk, 1)
        if self.folder.exists() and not self.folder.is_dir():
            raise BackendError(f"cache folder {self.folder} is a file")

    @property
    def identity(self) -> str:
        return self.inner.identity

    @property
    def logprobs(self) -> bool:
        return self.inner.logprobs

    @property
    def echoes(self) -> bool:
        return self.inner.echoes

    def _path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.json"

    def _read(self, key: str) -> Completion | None:
        path = self._path(key)
        if not path.exists():
            return None
        try:
            return Completion.from_json(json.loads(path.read_text()), cached=True)
        except (*READ_ERRORS, KeyError, TypeError):
            return None  # a damaged entry is asked again and rewritten, never trusted

    def _answer(self, requests: Sequence[ChatRequest], progress: bool) -> list[Completion]:
        keys = [request.key(self.identity) for request in requests]
        answers: list[Completion | None] = [self._read(key) for key in keys]
        missing = [i for i, answer in enumerate(answers) if answer is None]
        bar = tqdm(total=len(missing), desc="asking", unit="request", disable=not progress or not missing)
        for start in range(0, len(missing), self.chunk):
            indices = missing[start:start + self.chunk]
            try:
                fresh = self.inner.chat([requests[i] for i in indices])
            except BackendError as error:
                bar.close()
                kept = len(requests) - len(missing) + start
                raise BackendError(f"{error} ({kept} of {len(requests)} answers are cached in {self.folder}; "
                                   "rerun to ask only the rest)") from error
            for index, completion in zip(indices, fresh):
                atomic_text(self._path(keys[index]), json.dumps(completion.to_json()))
                answers[index] = completion
            bar.update(len(indices))
        bar.close()
        return answers  # type: ignore[return-value]

    def echo(self, texts: Sequence[str], top_logprobs: int = 5) -> list[list[TokenLogprobs]]:
        return self.inner.echo(texts, top_logprobs)


__all__ = ["CachedBackend"]
