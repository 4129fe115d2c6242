"""Activations on disk, read back for training: ``StoredActivations`` reads a harvest folder
(see :mod:`mechscope.data.harvest`) without the model; ``ModelActivations`` computes the same
kind of batches from the model on the fly.

``StoredActivations.batch(step)`` is a deterministic function of (seed, step) — shards in a
seeded order, tokens shuffled within each shard — so training can resume anywhere; under
data-parallel training each rank reads its equal share of every global batch.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from mechscope.data.harvest import harvest
from mechscope.data.manifest import (
    HARVEST_DTYPES,
    MANIFEST,
    HarvestDtype,
    check_contexts,
    check_rank_share,
    check_row_hook,
    contexts_sha256,
    read_manifest,
    stored_sha256,
)
from mechscope.errors import (
    ConfigError,
    FileFormatError,
    InputTypeError,
    MissingFileError,
    NotFoundError,
)
from mechscope.files import plain_name, read_json
from mechscope.locks import LOCK_FILE, folder_lock
from mechscope.models.hooked_model import HookedModel
from mechscope.models.weights import model_fingerprint
from mechscope.validate import check_int


class StoredActivations:
    """Batches of stored activations for training: ``batch(step)`` -> [batch_size, d] of
    ``hook_name`` (or ``(input, target)`` when ``target_hook`` is given, for transcoders).
    Checksums, tensor names, token counts and widths are verified on first use of each shard.
    An unfinished harvest is refused unless ``allow_partial=True``.

    Data-parallel training: ``rank`` of ``world_size`` gets rows [rank * b, (rank + 1) * b) of
    each global batch of ``batch_size`` rows (b = batch_size / world_size, which must divide);
    the union over ranks is exactly the one-process batch, and the fingerprint (what a
    checkpoint records) is the global one, so checkpoints move between world sizes."""

    def __init__(self, folder: str | Path, hook_name: str, batch_size: int = 4096, seed: int = 0,
                 target_hook: str | None = None, allow_partial: bool = False, rank: int = 0, world_size: int = 1):
        self.folder = Path(folder)
        check_int("batch_size", batch_size, 1)
        check_int("seed", seed, None)
        self.rank, self.world_size = check_rank_share(rank, world_size, batch_size, "batch_size", "rows")
        if not (self.folder / MANIFEST).exists():
            raise MissingFileError(f"no {MANIFEST} in {self.folder}: harvest activations there first")
        self.manifest = read_manifest(self.folder)
        harvested = self.manifest["hook_names"]
        for name in (hook_name, target_hook):
            if name is not None and name not in harvested:
                raise NotFoundError(f"{name!r} was not harvested in {self.folder}; harvested: {', '.join(harvested)}")
        if not self.manifest["shards"]:
            raise MissingFileError(f"{self.folder} has no complete shard yet: let the harvest run longer")
        done, total = self.manifest.get("contexts_done"), self.manifest.get("total_contexts")
        if not allow_partial and isinstance(done, int) and isinstance(total, int) and done < total:
            # A killed (or still running) harvest: training on it would silently use a prefix.
            raise MissingFileError(f"the harvest in {self.folder} is incomplete ({done} of {total} contexts): run "
                                   "harvest again with the same arguments to finish it, or pass allow_partial=True")
        self.hook_name, self.target_hook, self.batch_size, self.seed = hook_name, target_hook, batch_size, seed
        self.shard_tokens = [shard["tokens"] for shard in self.manifest["shards"]]
        self.total_tokens = sum(self.shard_tokens)
        self._cached: tuple[int, int, dict[str, torch.Tensor]] | None = None
        self._verified: set[int] = set()
        self._widths: dict[str, int] = {}

    def fingerprint(self) -> dict:
        """What decides the batches: the stored shards (their checksums), the harvest's
        contexts and model, the hooks read, batch size and seed. Recorded by checkpoints."""
        shards = json.dumps([[s["file"], s["tokens"], s["sha256"]] for s in self.manifest["shards"]])
        return {"kind": "stored_activations", "shards_sha256": hashlib.sha256(shards.encode()).hexdigest(),
                "contexts_sha256": self.manifest.get("contexts_sha256"), "model": self.manifest.get("model"),
                "model_sha256": self.manifest.get("model_sha256"), "total_tokens": self.total_tokens,
                "hook_name": self.hook_name, "target_hook": self.target_hook, "batch_size": self.batch_size,
                "seed": self.seed}

    def _epoch_order(self, epoch: int) -> list[int]:
        generator = torch.Generator().manual_seed(self.seed * 7919 + epoch)
        return torch.randperm(len(self.shard_tokens), generator=generator).tolist()

    def _read_shard(self, index: int) -> dict[str, torch.Tensor]:
        """The needed tensors [tokens, d] of shard ``index``, checked against the manifest."""
        entry = self.manifest["shards"][index]
        path = self.folder / entry["file"]
        if index not in self._verified and stored_sha256(path) != entry["sha256"]:
            raise FileFormatError(f"{path} does not match its checksum in the manifest: the file is corrupt; "
                                  "delete the folder and harvest again")
        names = [name for name in (self.hook_name, self.target_hook) if name is not None]
        try:
            with safe_open(str(path), framework="pt") as handle:
                missing = [name for name in names if name not in handle.keys()]
                if missing:
                    raise FileFormatError(f"{path} lacks the tensor(s) {', '.join(missing)} that {MANIFEST} lists")
                tensors = {name: handle.get_tensor(name) for name in names}
        except SafetensorError as error:
            raise FileFormatError(f"{path} is not a readable safetensors file ({error}); delete the folder and "
                                  "harvest again") from error
        for name, values in tensors.items():
            width = self._widths.setdefault(name, values.shape[-1] if values.dim() == 2 else -1)
            if values.dim() != 2 or values.shape != (entry["tokens"], width) or not values.is_floating_point():
                raise FileFormatError(f"{path}: {name} is {values.dtype} {tuple(values.shape)}; the manifest and the "
                                      f"other shards need floating [{entry['tokens']}, {width}]")
        self._verified.add(index)
        return tensors

    def _shard(self, epoch: int, index: int) -> dict[str, torch.Tensor]:
        if self._cached is not None and self._cached[:2] == (epoch, index):
            return self._cached[2]
        tensors = self._read_shard(index)
        generator = torch.Generator().manual_seed(self.seed * 104729 + epoch * 1009 + index)
        order = torch.randperm(self.shard_tokens[index], generator=generator)
        shuffled = {name: values[order] for name, values in tensors.items()}
        self._cached = (epoch, index, shuffled)
        return shuffled

    def tokens(self, start: int, count: int) -> dict[str, torch.Tensor]:
        """``count`` tokens from position ``start`` of the endless shuffled stream: {hook: [count, d]}."""
        check_int("start", start, 0)
        check_int("count", count, 1)
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
        """[batch_size / world_size, d] (or ``(input, target)``) for ``step`` >= 0: this rank's
        share of the global batch (all of it in a world of one)."""
        check_int("step", step, 0)
        share = self.batch_size // self.world_size
        tokens = self.tokens(step * self.batch_size + self.rank * share, share)
        x = tokens[self.hook_name]
        return x if self.target_hook is None else (x, tokens[self.target_hook])


class ModelActivations:
    """Training batches computed from the model on the fly (no disk): ``batch(step)`` runs
    ``batch_contexts`` contexts, chosen by a seeded permutation (re-drawn each epoch), and
    returns all their tokens but BOS: [batch_contexts * (pos - 1), d] (or ``(input, target)``
    with ``target_hook``). ``hook_name`` may also be a list of hooks: then ``batch`` gives
    {hook: [rows, d]}, every hook from the same forward pass (what trains one dictionary per
    layer at the cost of one model run). Deterministic in (seed, step), so training resumes
    exactly. ``rank`` of ``world_size`` runs only its equal share of each batch's contexts
    (data-parallel training; the fingerprint stays the global one)."""

    def __init__(self, model: HookedModel, contexts: torch.Tensor, hook_name: str | list[str] | tuple[str, ...],
                 batch_contexts: int = 32, seed: int = 0, target_hook: str | None = None, rank: int = 0,
                 world_size: int = 1):
        several = isinstance(hook_name, list | tuple)
        if several and target_hook is not None:
            raise ConfigError("with a list of hooks every hook is returned by name: list the target hook among them "
                              "instead of passing target_hook")
        if several and not hook_name:
            raise ConfigError("hook_name is an empty list: name at least one hook")
        hooks = list(dict.fromkeys(hook_name)) if several else [hook_name]
        for name in hooks + ([target_hook] if target_hook is not None else []):
            if not isinstance(name, str):
                raise InputTypeError(f"hook names must be strings; got {name!r}")
            check_row_hook(model, name)
        contexts = check_contexts(contexts, model)
        check_int("batch_contexts", batch_contexts, 1)
        check_int("seed", seed, None)
        if batch_contexts > len(contexts):
            raise ConfigError(f"batch_contexts={batch_contexts} exceeds the {len(contexts)} contexts given")
        self.rank, self.world_size = check_rank_share(rank, world_size, batch_contexts, "batch_contexts", "contexts")
        self.model, self.contexts, self.target_hook = model, contexts, target_hook
        self.hook_name: str | list[str] = hooks if several else hooks[0]
        self.batch_contexts, self.seed = batch_contexts, seed
        self.steps_per_epoch = len(contexts) // batch_contexts

    def fingerprint(self) -> dict:
        """What decides the batches: the model (name and weights fingerprint), the contexts,
        hooks, batch_contexts and seed. Recorded by checkpoints."""
        return {"kind": "model_activations", **model_fingerprint(self.model),
                "contexts_sha256": contexts_sha256(self.contexts), "contexts_shape": list(self.contexts.shape),
                "hook_name": self.hook_name, "target_hook": self.target_hook, "batch_contexts": self.batch_contexts,
                "seed": self.seed}

    @torch.no_grad()
    def batch(self, step: int):
        """[batch_contexts * (pos - 1), d] (or ``(input, target)``, or {hook: [rows, d]}) for ``step`` >= 0."""
        check_int("step", step, 0)
        epoch, index = divmod(step, self.steps_per_epoch)
        order = torch.randperm(len(self.contexts), generator=torch.Generator().manual_seed(self.seed * 7919 + epoch))
        share = self.batch_contexts // self.world_size  # this rank's contexts of the global batch
        first = index * self.batch_contexts + self.rank * share
        chosen = self.contexts[order[first:first + share]]
        several = isinstance(self.hook_name, list)
        names = list(self.hook_name) if several else [self.hook_name] + ([self.target_hook] if self.target_hook else [])
        _, cache = self.model.run_with_cache(chosen, names=names)
        rows = {name: cache[name][:, 1:].flatten(0, 1).float().cpu() for name in names}
        if several:
            return rows
        x = rows[self.hook_name]
        return x if self.target_hook is None else (x, rows[self.target_hook])


__all__ = ["HARVEST_DTYPES", "LOCK_FILE", "MANIFEST", "HarvestDtype", "ModelActivations", "StoredActivations",
           "contexts_sha256", "folder_lock", "harvest", "model_fingerprint", "plain_name", "read_json", "read_manifest"]
