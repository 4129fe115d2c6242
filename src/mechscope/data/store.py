"""Activations on disk: harvest once from the model, re-read for any number of training runs.

``harvest`` runs the model over packed contexts and writes the activations of one or several
hook points to safetensors shards of ``shard_contexts`` whole contexts each (the BOS position is
dropped: its activations are outliers no dictionary should spend latents on). Each shard is
written to a temporary file and renamed into place, then the manifest (shard files, token
counts, SHA-256 checksums, contexts done) is rewritten the same way, so a kill at any moment
leaves only complete shards that the manifest lists; running ``harvest`` again continues with
the next context, losing and duplicating nothing. Memory holds one shard at most.

``StoredActivations`` reads them back without the model: ``batch(step)`` is a deterministic
function of (seed, step) — shards in a seeded order, tokens shuffled within each shard — so
training can resume anywhere.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from mechscope.errors import MechscopeError, MissingFileError
from mechscope.files import atomic_file, atomic_text
from mechscope.models.hooked_model import HookedModel

MANIFEST = "manifest.json"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@torch.no_grad()
def harvest(model: HookedModel, contexts: torch.Tensor, folder: str | Path, hook_names: list[str],
            shard_contexts: int = 64, batch_contexts: int = 8, dtype: torch.dtype = torch.float32,
            progress: bool = True) -> Path:
    """Write the activations of ``hook_names`` for ``contexts`` [n, pos] under ``folder``
    (resuming a previous, interrupted harvest of the same contexts and hooks)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fingerprint = hashlib.sha256(contexts.cpu().numpy().tobytes()).hexdigest()
    manifest_path = folder / MANIFEST
    if manifest_path.exists():
        manifest = json.loads(manifest_path.read_text())
        if manifest["contexts_sha256"] != fingerprint or manifest["hook_names"] != list(hook_names):
            raise MechscopeError(f"{folder} holds a harvest of other contexts or hook points; use another folder")
    else:
        manifest = {"hook_names": list(hook_names), "contexts_sha256": fingerprint, "total_contexts": len(contexts),
                    "context_length": contexts.shape[1], "shard_contexts": shard_contexts, "model": model.cfg.name,
                    "dtype": str(dtype).split(".")[-1], "dropped_positions": [0], "shards": [], "contexts_done": 0}
        atomic_text(manifest_path, json.dumps(manifest, indent=1))
    shard_contexts = manifest["shard_contexts"]
    start = manifest["contexts_done"]
    bar = tqdm(total=len(contexts), initial=start, desc="harvesting activations", unit="ctx", disable=not progress)
    for shard_start in range(start, len(contexts), shard_contexts):
        shard = contexts[shard_start:shard_start + shard_contexts]
        parts: dict[str, list[torch.Tensor]] = {name: [] for name in hook_names}
        for offset in range(0, len(shard), batch_contexts):
            _, cache = model.run_with_cache(shard[offset:offset + batch_contexts], names=list(hook_names))
            for name in hook_names:
                parts[name].append(cache[name][:, 1:].flatten(0, 1).to("cpu", dtype))
            bar.update(min(batch_contexts, len(shard) - offset))
        tensors = {name: torch.cat(values).contiguous() for name, values in parts.items()}
        file_name = f"shard_{len(manifest['shards']):05d}.safetensors"
        atomic_file(folder / file_name, lambda path, tensors=tensors: save_file(tensors, str(path)))
        manifest["shards"].append({"file": file_name, "tokens": int(next(iter(tensors.values())).shape[0]),
                                   "sha256": _sha256(folder / file_name)})
        manifest["contexts_done"] = shard_start + len(shard)
        atomic_text(manifest_path, json.dumps(manifest, indent=1))
    bar.close()
    return folder


class StoredActivations:
    """Batches of stored activations for training: ``batch(step)`` -> [batch_size, d] of
    ``hook_name`` (or ``(input, target)`` when ``target_hook`` is given, for transcoders).
    Checksums are verified on first use of each shard."""

    def __init__(self, folder: str | Path, hook_name: str, batch_size: int = 4096, seed: int = 0,
                 target_hook: str | None = None):
        self.folder = Path(folder)
        manifest_path = self.folder / MANIFEST
        if not manifest_path.exists():
            raise MissingFileError(f"no {MANIFEST} in {self.folder}: harvest activations there first")
        self.manifest = json.loads(manifest_path.read_text())
        for name in (hook_name, target_hook):
            if name is not None and name not in self.manifest["hook_names"]:
                raise MechscopeError(f"{name!r} was not harvested; harvested: {', '.join(self.manifest['hook_names'])}")
        if not self.manifest["shards"]:
            raise MechscopeError(f"{self.folder} has no complete shard yet")
        self.hook_name, self.target_hook, self.batch_size, self.seed = hook_name, target_hook, batch_size, seed
        self.shard_tokens = [shard["tokens"] for shard in self.manifest["shards"]]
        self.total_tokens = sum(self.shard_tokens)
        self._cached: tuple[int, int, dict[str, torch.Tensor]] | None = None
        self._verified: set[int] = set()

    def _epoch_order(self, epoch: int) -> list[int]:
        generator = torch.Generator().manual_seed(self.seed * 7919 + epoch)
        return torch.randperm(len(self.shard_tokens), generator=generator).tolist()

    def _shard(self, epoch: int, index: int) -> dict[str, torch.Tensor]:
        if self._cached is not None and self._cached[:2] == (epoch, index):
            return self._cached[2]
        entry = self.manifest["shards"][index]
        path = self.folder / entry["file"]
        if index not in self._verified:
            if _sha256(path) != entry["sha256"]:
                raise MechscopeError(f"{path} does not match its checksum in the manifest: the file is corrupt")
            self._verified.add(index)
        tensors = load_file(str(path))
        generator = torch.Generator().manual_seed(self.seed * 104729 + epoch * 1009 + index)
        order = torch.randperm(entry["tokens"], generator=generator)
        shuffled = {name: tensors[name][order] for name in (self.hook_name, self.target_hook) if name is not None}
        self._cached = (epoch, index, shuffled)
        return shuffled

    def tokens(self, start: int, count: int) -> dict[str, torch.Tensor]:
        """``count`` tokens from position ``start`` of the endless shuffled stream."""
        pieces: dict[str, list[torch.Tensor]] = {}
        while count > 0:
            epoch, offset = divmod(start, self.total_tokens)
            order = self._epoch_order(epoch)
            for index in order:
                if offset < self.shard_tokens[index]:
                    break
                offset -= self.shard_tokens[index]
            shard = self._shard(epoch, index)
            take = min(count, self.shard_tokens[index] - offset)
            for name, values in shard.items():
                pieces.setdefault(name, []).append(values[offset:offset + take])
            start, count = start + take, count - take
        return {name: torch.cat(values) for name, values in pieces.items()}

    def batch(self, step: int):
        tokens = self.tokens(step * self.batch_size, self.batch_size)
        x = tokens[self.hook_name]
        return x if self.target_hook is None else (x, tokens[self.target_hook])


class ModelActivations:
    """Training batches computed from the model on the fly (no disk): ``batch(step)`` runs
    ``batch_contexts`` contexts, chosen by a seeded permutation (re-drawn each epoch), and
    returns all their tokens but BOS: [batch_contexts * (pos - 1), d] (or ``(input, target)``
    with ``target_hook``). Deterministic in (seed, step), so training resumes exactly."""

    def __init__(self, model: HookedModel, contexts: torch.Tensor, hook_name: str, batch_contexts: int = 32,
                 seed: int = 0, target_hook: str | None = None):
        model.hook_point(hook_name)  # raises with close matches on a bad name
        if target_hook is not None:
            model.hook_point(target_hook)
        if batch_contexts > len(contexts):
            raise MechscopeError(f"batch_contexts={batch_contexts} exceeds the {len(contexts)} contexts given")
        self.model, self.contexts, self.hook_name, self.target_hook = model, contexts, hook_name, target_hook
        self.batch_contexts, self.seed = batch_contexts, seed
        self.steps_per_epoch = len(contexts) // batch_contexts

    @torch.no_grad()
    def batch(self, step: int):
        epoch, index = divmod(step, self.steps_per_epoch)
        order = torch.randperm(len(self.contexts), generator=torch.Generator().manual_seed(self.seed * 7919 + epoch))
        chosen = self.contexts[order[index * self.batch_contexts:(index + 1) * self.batch_contexts]]
        names = [self.hook_name] + ([self.target_hook] if self.target_hook else [])
        _, cache = self.model.run_with_cache(chosen, names=names)
        x = cache[self.hook_name][:, 1:].flatten(0, 1).float().cpu()
        return x if self.target_hook is None else (x, cache[self.target_hook][:, 1:].flatten(0, 1).float().cpu())
