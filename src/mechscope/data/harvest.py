"""Harvesting activations to disk, on one process or sharded over the ranks of a group.

``harvest`` runs the model over packed contexts and writes the activations of one or several
hook points to safetensors shards of ``shard_contexts`` whole contexts each (the BOS position is
dropped: its activations are outliers no dictionary should spend latents on). Shard ``i`` holds
contexts [i * shard_contexts, (i + 1) * shard_contexts), the last one the remainder: no context
is dropped or duplicated, whatever the number of ranks.

Under ``ranks`` (torchrun), the shards still to do are dealt round-robin to the ranks; each rank
writes its shards (temporary file, then a rename) and, after each, a small JSON record beside
it (``shard_00003.json``: file, tokens, SHA-256, contexts, writer rank and world size). Rank 0
owns ``manifest.json``: it merges the records into it after each of its own shards and, once
every rank is done, lists every shard in order. A kill at any moment leaves only complete,
recorded shards; running ``harvest`` again, with any number of ranks, collects the records
and does only the shards nobody finished. Shards are the unit of work and ranks never wait on
each other per batch, so uneven shares need no padding: a rank with fewer shards finishes
earlier, and the last, shorter shard is written as it is.

The manifest records everything that decides the stored values; a resume that differs in any
of them is refused, so one folder never mixes two models' activations. Rank 0 holds the
folder's lock for the whole group, so two harvests never write into one folder.
"""

from __future__ import annotations

import json
import time
from collections import deque
from pathlib import Path

import torch
from safetensors.torch import save_file
from tqdm.auto import tqdm

from mechscope.data.manifest import (
    MANIFEST,
    MANIFEST_FORMAT,
    HarvestDtype,
    check_contexts,
    check_hook_names,
    check_resume,
    contexts_sha256,
    read_manifest,
    shard_contexts_of,
    shard_count,
    shard_name,
    stored_sha256,
)
from mechscope.distributed import Ranks, check_ranks, check_same_settings, main_rank_lock
from mechscope.errors import (
    FileFormatError,
    FolderNotEmptyError,
    InputTypeError,
    MissingFileError,
    NonFiniteError,
    OutputFolderError,
)
from mechscope.files import atomic_file, atomic_text, read_json
from mechscope.models.hooked_model import HookedModel
from mechscope.models.weights import model_fingerprint
from mechscope.validate import check_choice, check_finite, check_int

# What a shard's own record holds, besides the manifest's entry fields.
RECORD_FIELDS = ("file", "tokens", "sha256", "contexts", "rank", "world_size")


def record_path(folder: Path, index: int) -> Path:
    """The JSON record written beside shard ``index`` once the shard is complete."""
    return folder / shard_name(index).replace(".safetensors", ".json")


@torch.no_grad()
def harvest(model: HookedModel, contexts: torch.Tensor, folder: str | Path, hook_names: list[str],
            shard_contexts: int = 64, batch_contexts: int = 8, dtype: torch.dtype = torch.float32,
            progress: bool = True, ranks: Ranks | None = None) -> Path:
    """Write the activations of ``hook_names`` for ``contexts`` [n, pos] under ``folder``:
    shards of [tokens = contexts * (pos - 1), d_hook] per hook, stored as ``dtype``. Resumes a
    previous, interrupted harvest of exactly the same settings (also one run on another number
    of ranks); refuses one that differs. With ``ranks``, every rank calls this with the same
    arguments and writes its share of the shards into the same (shared) folder."""
    contexts = check_contexts(contexts, model)
    hook_names = check_hook_names(model, hook_names)
    check_int("shard_contexts", shard_contexts, 1)
    check_int("batch_contexts", batch_contexts, 1)
    if not isinstance(dtype, torch.dtype):
        raise InputTypeError(f"dtype must be a torch dtype, e.g. torch.float32; got {dtype!r}")
    dtype_name = check_choice("dtype", str(dtype).split(".")[-1], HarvestDtype)
    ranks = check_ranks(ranks)
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise OutputFolderError(f"{folder} is a file, not a folder: give harvest a folder for its shards")
    expected = {"hook_names": hook_names, "contexts_sha256": contexts_sha256(contexts),
                "total_contexts": len(contexts), "context_length": contexts.shape[1], "shard_contexts": shard_contexts,
                "batch_contexts": batch_contexts, **model_fingerprint(model), "dtype": dtype_name,
                "dropped_positions": [0]}
    check_same_settings(ranks, "harvest settings", expected)
    folder.mkdir(parents=True, exist_ok=True)
    with main_rank_lock(ranks, folder, "harvest"):
        found: dict[int, dict] = {}  # rank 0's view of the complete shards

        def open_folder() -> list[int]:
            found.update(_open_folder(folder, expected))
            return sorted(found)

        done = set(ranks.on_main(open_folder, "checking the harvest folder"))
        remaining = [i for i in range(shard_count(len(contexts), shard_contexts)) if i not in done]
        progress_view = _Progress(folder, expected, found, remaining) if ranks.is_main else None
        ranks.everywhere(lambda: _write_shards(model, contexts, folder, expected, remaining[ranks.rank::ranks.world_size],
                                               dtype, progress, ranks, progress_view), "harvesting shards")
        ranks.on_main(lambda: progress_view.finish(), "writing the manifest")
    return folder


def _open_folder(folder: Path, expected: dict) -> dict[int, dict]:
    """Check (or start) the folder's manifest; returns the shards already complete, from the
    manifest and the records of shards finished since it was last written."""
    if not (folder / MANIFEST).exists():
        strays = sorted(p.name for p in folder.glob("shard_*.safetensors"))
        if strays:  # shards without a manifest: of unknown origin, and ours would overwrite them
            raise FolderNotEmptyError(f"{folder} holds {len(strays)} shard file(s) ({strays[0]}, ...) but no "
                                      f"{MANIFEST}; delete them or use another folder")
    shards = _collect(folder, expected, _listed(folder, expected))
    _write_manifest(folder, expected, shards)
    return shards


def _listed(folder: Path, expected: dict) -> dict[int, dict]:
    """The shards the manifest lists (checked against this call's settings), {} without one."""
    return check_resume(folder, read_manifest(folder), expected) if (folder / MANIFEST).exists() else {}


def _record(folder: Path, index: int, expected: dict) -> dict | None:
    """Shard ``index``'s record, checked; None when the shard is not complete."""
    path = record_path(folder, index)
    if not path.exists():
        return None
    record = read_json(path, "a shard record", "delete the folder and harvest again")
    wanted = shard_contexts_of(index, expected["shard_contexts"], expected["total_contexts"])
    if not isinstance(record, dict) or set(record) != set(RECORD_FIELDS) or record["file"] != shard_name(index) \
            or record["contexts"] != wanted:
        raise FileFormatError(f"{path} is not the record of {shard_name(index)} (contexts {wanted}); it is corrupt: "
                              "delete it and its shard, then harvest again")
    return record if (folder / record["file"]).is_file() else None  # a record without its shard is redone


def _collect(folder: Path, expected: dict, shards: dict[int, dict]) -> dict[int, dict]:
    """{index: entry} of every complete shard: ``shards`` (listed) and those with a record."""
    for index in range(shard_count(expected["total_contexts"], expected["shard_contexts"])):
        record = None if index in shards else _record(folder, index, expected)
        if record is not None:
            shards[index] = record
    return shards


class _Progress:
    """Rank 0's manifest during a harvest, kept current at a cost independent of the store's
    size: the other ranks' shards are looked up in order as they fall behind rank 0's position,
    and the manifest (O(shards) to write) is rewritten after each of the first 100 shards, then
    at most every 30 s; the records beside the shards are what a resume reads."""

    FIRST_SHARDS, INTERVAL_S = 100, 30.0

    def __init__(self, folder: Path, expected: dict, found: dict[int, dict], remaining: list[int]):
        self.folder, self.expected, self.found = folder, expected, found
        self.pending = deque(remaining)  # shards not complete when the harvest started
        self.written = time.monotonic()

    def _look_up(self, index: int) -> bool:
        """Whether shard ``index`` is complete (noted in ``found`` if so)."""
        written = self.found.get(index) or _record(self.folder, index, self.expected)
        if written is not None:
            self.found[index] = written
        return written is not None

    def add(self, index: int, record: dict) -> None:
        self.found[index] = record
        # A shard not written yet is looked up again after rank 0's next shard.
        while self.pending and self.pending[0] <= index and self._look_up(self.pending[0]):
            self.pending.popleft()
        if len(self.found) <= self.FIRST_SHARDS or time.monotonic() - self.written >= self.INTERVAL_S:
            _write_manifest(self.folder, self.expected, self.found)
            self.written = time.monotonic()

    def finish(self) -> None:
        """Once every rank is done: the records of the shards still pending, then the final
        manifest; refuses a harvest with shards missing (a folder not shared by every rank, so
        rank 0 does not see the others' shards)."""
        for other in self.pending:
            self._look_up(other)
        self.pending.clear()
        _write_manifest(self.folder, self.expected, self.found)
        missing = shard_count(self.expected["total_contexts"], self.expected["shard_contexts"]) - len(self.found)
        if missing:
            raise MissingFileError(f"{self.folder}: {missing} shard(s) written by other ranks are not in this folder: "
                                   "a harvest on several ranks needs a folder every rank sees (a shared file system); "
                                   "run the same call again to harvest what is missing")


def _write_manifest(folder: Path, expected: dict, shards: dict[int, dict]) -> None:
    entries = [shards[index] for index in sorted(shards)]
    manifest = {"format": MANIFEST_FORMAT, **expected, "shards": entries,
                "contexts_done": sum(end - first for first, end in (entry["contexts"] for entry in entries))}
    atomic_text(folder / MANIFEST, json.dumps(manifest, indent=1))


def _write_shards(model: HookedModel, contexts: torch.Tensor, folder: Path, expected: dict, indices: list[int],
                  dtype: torch.dtype, progress: bool, ranks: Ranks, view: _Progress | None) -> None:
    """Harvest shards ``indices``, each written atomically and then recorded."""
    hook_names, shard_contexts, batch_contexts = (expected["hook_names"], expected["shard_contexts"],
                                                  expected["batch_contexts"])
    total = sum(end - first for first, end in (shard_contexts_of(i, shard_contexts, len(contexts)) for i in indices))
    bar = tqdm(total=total, desc="harvesting activations", unit="ctx", disable=not (progress and ranks.is_main))
    for index in indices:
        first, end = shard_contexts_of(index, shard_contexts, len(contexts))
        shard = contexts[first:end]
        parts: dict[str, list[torch.Tensor]] = {name: [] for name in hook_names}
        for offset in range(0, len(shard), batch_contexts):
            _, cache = model.run_with_cache(shard[offset:offset + batch_contexts], names=list(hook_names))
            for name in hook_names:
                # Checked after the cast: float16 can overflow to inf where float32 did not.
                values = cache[name][:, 1:].flatten(0, 1).to("cpu", dtype)
                last = first + min(offset + batch_contexts, len(shard)) - 1
                try:
                    check_finite(f"activations of {name} for contexts {first + offset}..{last}", values)
                except NonFiniteError as error:
                    raise NonFiniteError(f"{error} (stored as {dtype}); nothing of this shard was written. A model "
                                         "that overflows in float16 may fit in bfloat16 or float32") from error
                parts[name].append(values)
            bar.update(min(batch_contexts, len(shard) - offset))
        tensors = {name: torch.cat(values).contiguous() for name, values in parts.items()}
        path = folder / shard_name(index)
        atomic_file(path, lambda target, tensors=tensors: save_file(tensors, str(target)))
        record = {"file": path.name, "tokens": int(next(iter(tensors.values())).shape[0]),
                  "sha256": stored_sha256(path), "contexts": [first, end], "rank": ranks.rank,
                  "world_size": ranks.world_size}
        atomic_text(record_path(folder, index), json.dumps(record))
        if view is not None:  # rank 0: the manifest shows progress (a partial store can be read meanwhile)
            view.add(index, record)
    bar.close()


__all__ = ["harvest", "record_path"]
