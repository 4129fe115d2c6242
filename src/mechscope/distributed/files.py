"""Shared output folders under several ranks: one writer holds the folder's lock.

Every rank of a run writes into the same folder (shards, checkpoints), so the per-folder lock
that keeps two runs apart is taken by rank 0 for the whole group: a second run is refused on
every rank, and ranks of one run never refuse each other.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path

from mechscope.distributed.group import Ranks
from mechscope.errors import OutputFolderError
from mechscope.files import OutputFolder
from mechscope.locks import folder_lock


@contextlib.contextmanager
def main_rank_lock(ranks: Ranks, folder: Path, purpose: str) -> Iterator[None]:
    """Hold ``folder``'s lock on rank 0 while the block runs on every rank; if rank 0 cannot
    take it (another run writes there), every rank raises the same OutputFolderError."""
    with contextlib.ExitStack() as stack:
        outcome = {"ok": True}
        if ranks.is_main:
            try:
                stack.enter_context(folder_lock(folder, purpose))
            except Exception as error:  # e.g. an unwritable folder: the others must not wait for rank 0
                if not ranks.distributed:
                    raise
                outcome = {"ok": False, "error": f"{type(error).__name__}: {error}"}
        shared = ranks.broadcast_json(outcome, f"taking the lock of {folder}", patient=True)
        if not shared["ok"]:
            raise OutputFolderError(f"rank 0 could not take the lock of {folder}: {shared['error']}")
        yield
        # Nobody leaves (and rank 0 releases the lock) before every rank is done writing.
        ranks.gather_json(None, f"finishing in {folder}", patient=True)


def output_folder_on_ranks(ranks: Ranks, prepare: Callable[[], OutputFolder], what: str) -> OutputFolder:
    """``prepare()`` (check, claim or clear a command's output folder) on rank 0 only: the folder
    is shared, and two ranks clearing it would race. Every rank gets the same OutputFolder, or
    the same error."""
    def prepared() -> dict:
        folder = prepare()
        return {**asdict(folder), "path": str(folder.path)}

    fields = ranks.on_main(prepared, f"preparing the output folder {what}")
    return OutputFolder(**{**fields, "path": Path(fields["path"])})


__all__ = ["main_rank_lock", "output_folder_on_ranks"]
