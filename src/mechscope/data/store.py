"""Activations on disk: harvest once from the model, re-read for any number of training runs.

``harvest`` runs the model over packed contexts and writes the activations of one or several
hook points to safetensors shards of ``shard_contexts`` whole contexts each (the BOS position is
dropped: its activations are outliers no dictionary should spend latents on). Each shard is
written to a temporary file and renamed into place, then the manifest (shard files, token
counts, SHA-256 checksums, contexts done) is rewritten the same way, so a kill at any moment
leaves only complete shards that the manifest lists; running ``harvest`` again continues with
the next context, losing and duplicating nothing. Memory holds one shard at most.

The manifest records everything that decides the stored values (contexts, hooks, model name and
a weights fingerprint, dtype, shard and batch sizes); a resume that differs in any of them is
refused, so one folder never mixes two models' activations. A lock file keeps two harvests out
of one folder.

``StoredActivations`` reads them back without the model: ``batch(step)`` is a deterministic
function of (seed, step) — shards in a seeded order, tokens shuffled within each shard — so
training can resume anywhere.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

from mechscope.errors import (
    ConfigError,
    FileFormatError,
    FolderNotEmptyError,
    InputTypeError,
    MissingFileError,
    NonFiniteError,
    NotFoundError,
    OutOfRangeError,
    OutputFolderError,
    ResumeError,
)
from mechscope.files import atomic_file, atomic_text, file_sha256, plain_name, read_json
from mechscope.locks import LOCK_FILE, folder_lock
from mechscope.models.hooked_model import HookedModel
from mechscope.models.weights import model_fingerprint
from mechscope.validate import check_choice, check_finite, check_int, literal_choices

MANIFEST = "manifest.json"
MANIFEST_FORMAT = 2
# Storage dtypes of harvested activations (names as torch spells them).
HarvestDtype = Literal["float32", "float16", "bfloat16", "float64"]
HARVEST_DTYPES: tuple[str, ...] = literal_choices(HarvestDtype)
# Manifest fields that decide the stored values: a resume must match every one of them.
RESUME_FIELDS = ("hook_names", "contexts_sha256", "total_contexts", "context_length", "shard_contexts",
                 "batch_contexts", "model", "model_sha256", "dtype", "dropped_positions")


def _sha256(path: Path) -> str:
    try:
        return file_sha256(path)
    except FileNotFoundError as error:
        raise MissingFileError(f"{path} is listed in its folder's {MANIFEST} but missing: the store is incomplete; "
                               "delete the folder and harvest again") from error


def contexts_sha256(contexts: torch.Tensor) -> str:
    """SHA-256 of token ids [n, pos] as int64 (so int32 and int64 copies of the same ids agree)."""
    return hashlib.sha256(contexts.detach().to("cpu", torch.int64).contiguous().numpy().tobytes()).hexdigest()


def check_rank_share(rank: Any, world_size: Any, batch: int, batch_name: str, unit: str) -> tuple[int, int]:
    """(rank, world_size), checked: each rank takes an equal share of every global batch."""
    check_int("world_size", world_size, 1)
    check_int("rank", rank, 0, world_size - 1)
    if batch % world_size:
        raise ConfigError(f"{batch_name}={batch} does not split evenly over {world_size} ranks: each rank takes an equal "
                          f"share of every batch (unequal shares would weight the ranks' gradients unequally); use a "
                          f"multiple of {world_size} {unit}")
    return rank, world_size


def _check_contexts(contexts: Any, model: HookedModel | None = None) -> torch.Tensor:
    """``contexts`` [n >= 1, pos >= 2] integer token ids (within the model's vocabulary)."""
    if not isinstance(contexts, torch.Tensor):
        raise InputTypeError(f"contexts must be a tensor of token ids [n, pos]; got {type(contexts).__name__}")
    if contexts.dim() != 2 or contexts.dtype == torch.bool or contexts.is_floating_point() or contexts.is_complex():
        raise InputTypeError(f"contexts must be an integer tensor [n, pos]; got {contexts.dtype} of shape "
                             f"{tuple(contexts.shape)}")
    if contexts.shape[0] < 1:
        raise ConfigError("contexts is empty: give at least one context")
    if contexts.shape[1] < 2:
        raise ConfigError(f"contexts must hold at least 2 positions (BOS is dropped); got {contexts.shape[1]}")
    if model is not None and (int(contexts.min()) < 0 or int(contexts.max()) >= model.cfg.d_vocab):
        raise OutOfRangeError(f"contexts hold token ids outside [0, {model.cfg.d_vocab}) (the model's vocabulary); "
                              f"got ids {int(contexts.min())}..{int(contexts.max())}")
    return contexts


def _check_hook_names(model: HookedModel, hook_names: Any) -> list[str]:
    if isinstance(hook_names, str) or not isinstance(hook_names, list | tuple):
        raise InputTypeError(f"hook_names must be a list of hook point names; got {hook_names!r}")
    if not hook_names:
        raise ConfigError("hook_names is empty: name at least one hook point to harvest")
    if len(set(hook_names)) != len(hook_names):
        raise ConfigError(f"hook_names lists a hook point twice: {list(hook_names)}")
    for name in hook_names:
        _check_row_hook(model, name)
    return list(hook_names)


def _check_row_hook(model: HookedModel, name: str) -> None:
    """Stores and batches are rows [tokens, width] of BOS-less [batch, pos, width] points."""
    point = model.hook_point(name)  # raises UnknownHookError with close matches
    if tuple(point.axes[:2]) != ("batch", "pos") or len(point.axes) != 3:
        raise ConfigError(f"{name} has axes {point.axes}; activations are stored as rows of [batch, pos, width] "
                          "points (residual, attention or MLP outputs, MLP hidden); per-head or pattern points "
                          "are not")


def read_manifest(folder: Path) -> dict:
    """The manifest of ``folder``, checked: hook names, and shard entries whose files are plain
    names inside the folder with positive token counts and a checksum. Old manifests (without
    the fields a resume checks) still read."""
    path = folder / MANIFEST
    manifest = read_json(path, "the activation store", "delete the folder and harvest again")
    hint = f"{path} is corrupt: delete the folder and harvest again"
    if not isinstance(manifest, dict):
        raise FileFormatError(f"{path} must hold a JSON object; {hint}")
    hooks = manifest.get("hook_names")
    if not isinstance(hooks, list) or not hooks or not all(isinstance(h, str) for h in hooks):
        raise FileFormatError(f"{path}: 'hook_names' must be a non-empty list of names; got {hooks!r}; {hint}")
    shards = manifest.get("shards")
    if not isinstance(shards, list):
        raise FileFormatError(f"{path}: 'shards' must be a list; got {shards!r}; {hint}")
    seen: set[str] = set()
    for index, entry in enumerate(shards):
        key = f"shards[{index}]"
        if not isinstance(entry, dict) or not {"file", "tokens", "sha256"} <= set(entry):
            raise FileFormatError(f"{path}: {key} must hold 'file', 'tokens' and 'sha256'; got {entry!r}; {hint}")
        plain_name(entry["file"], path, f"{key}.file")
        if entry["file"] in seen:
            raise FileFormatError(f"{path}: {key}.file {entry['file']!r} is listed twice; {hint}")
        seen.add(entry["file"])
        tokens = entry["tokens"]
        if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 1:
            raise FileFormatError(f"{path}: {key}.tokens must be a positive integer; got {tokens!r}; {hint}")
        if not isinstance(entry["sha256"], str) or len(entry["sha256"]) != 64:
            raise FileFormatError(f"{path}: {key}.sha256 must be a SHA-256 hex digest; got {entry['sha256']!r}; {hint}")
    done = manifest.get("contexts_done", 0)
    if isinstance(done, bool) or not isinstance(done, int) or done < 0:
        raise FileFormatError(f"{path}: 'contexts_done' must be a non-negative integer; got {done!r}; {hint}")
    return manifest


def _shard_name(index: int) -> str:
    return f"shard_{index:05d}.safetensors"


def _check_resume(folder: Path, manifest: dict, expected: dict) -> None:
    """Refuse to continue a harvest whose recorded settings differ from this call's."""
    path = folder / MANIFEST
    missing = [key for key in RESUME_FIELDS if key not in manifest]
    if missing:
        raise ResumeError(f"{path} does not record {', '.join(missing)} (written by an older mechscope), so a resume "
                          "cannot prove it continues the same harvest; use another folder or delete this one")
    differences = [f"{key}: the folder has {manifest[key]!r}, this call {expected[key]!r}"
                   for key in RESUME_FIELDS if manifest[key] != expected[key]]
    if differences:
        raise ResumeError(f"{folder} holds a harvest with other settings ({'; '.join(differences)}); resuming would "
                          "mix two harvests: use another folder, delete this one, or repeat the original call")
    shard_contexts, total = manifest["shard_contexts"], manifest["total_contexts"]
    consistent = min(len(manifest["shards"]) * shard_contexts, total)
    if manifest["contexts_done"] != consistent:
        raise FileFormatError(f"{path}: contexts_done={manifest['contexts_done']} does not match its "
                              f"{len(manifest['shards'])} shards of {shard_contexts} contexts; the manifest is "
                              "corrupt: delete the folder and harvest again")
    for index, entry in enumerate(manifest["shards"]):
        # The next shard is named after its index: a manifest listing other names could have
        # one of its shards overwritten.
        if entry["file"] != _shard_name(index):
            raise FileFormatError(f"{path}: shards[{index}].file is {entry['file']!r}, not {_shard_name(index)!r}; "
                                  "the manifest was edited: delete the folder and harvest again")
        if not (folder / entry["file"]).is_file():
            raise MissingFileError(f"{folder / entry['file']} is listed in {path} but missing; delete the folder "
                                   "and harvest again")


@torch.no_grad()
def harvest(model: HookedModel, contexts: torch.Tensor, folder: str | Path, hook_names: list[str],
            shard_contexts: int = 64, batch_contexts: int = 8, dtype: torch.dtype = torch.float32,
            progress: bool = True) -> Path:
    """Write the activations of ``hook_names`` for ``contexts`` [n, pos] under ``folder``:
    shards of [tokens = contexts * (pos - 1), d_hook] per hook, stored as ``dtype``. Resumes a
    previous, interrupted harvest of exactly the same settings; refuses one that differs."""
    contexts = _check_contexts(contexts, model)
    hook_names = _check_hook_names(model, hook_names)
    check_int("shard_contexts", shard_contexts, 1)
    check_int("batch_contexts", batch_contexts, 1)
    if not isinstance(dtype, torch.dtype):
        raise InputTypeError(f"dtype must be a torch dtype, e.g. torch.float32; got {dtype!r}")
    dtype_name = check_choice("dtype", str(dtype).split(".")[-1], HarvestDtype)
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise OutputFolderError(f"{folder} is a file, not a folder: give harvest a folder for its shards")
    folder.mkdir(parents=True, exist_ok=True)
    expected = {"hook_names": hook_names, "contexts_sha256": contexts_sha256(contexts),
                "total_contexts": len(contexts), "context_length": contexts.shape[1], "shard_contexts": shard_contexts,
                "batch_contexts": batch_contexts, **model_fingerprint(model), "dtype": dtype_name,
                "dropped_positions": [0]}
    with folder_lock(folder, "harvest"):
        manifest_path = folder / MANIFEST
        if manifest_path.exists():
            manifest = read_manifest(folder)
            _check_resume(folder, manifest, expected)
        else:
            strays = sorted(p.name for p in folder.glob("shard_*.safetensors"))
            if strays:  # shards without a manifest: of unknown origin, and ours would overwrite them
                raise FolderNotEmptyError(f"{folder} holds {len(strays)} shard file(s) ({strays[0]}, ...) but no "
                                          f"{MANIFEST}; delete them or use another folder")
            manifest = {"format": MANIFEST_FORMAT, **expected, "shards": [], "contexts_done": 0}
            atomic_text(manifest_path, json.dumps(manifest, indent=1))
        _harvest_shards(model, contexts, folder, manifest, dtype, progress)
    return folder


def _harvest_shards(model: HookedModel, contexts: torch.Tensor, folder: Path, manifest: dict, dtype: torch.dtype,
                    progress: bool) -> None:
    hook_names, shard_contexts, batch_contexts = (manifest["hook_names"], manifest["shard_contexts"],
                                                  manifest["batch_contexts"])
    start = manifest["contexts_done"]
    bar = tqdm(total=len(contexts), initial=start, desc="harvesting activations", unit="ctx", disable=not progress)
    for shard_start in range(start, len(contexts), shard_contexts):
        shard = contexts[shard_start:shard_start + shard_contexts]
        parts: dict[str, list[torch.Tensor]] = {name: [] for name in hook_names}
        for offset in range(0, len(shard), batch_contexts):
            _, cache = model.run_with_cache(shard[offset:offset + batch_contexts], names=list(hook_names))
            for name in hook_names:
                # Checked after the cast: float16 can overflow to inf where float32 did not.
                values = cache[name][:, 1:].flatten(0, 1).to("cpu", dtype)
                first, last = shard_start + offset, shard_start + min(offset + batch_contexts, len(shard)) - 1
                try:
                    check_finite(f"activations of {name} for contexts {first}..{last}", values)
                except NonFiniteError as error:
                    raise NonFiniteError(f"{error} (stored as {dtype}); nothing of this shard was written. A model "
                                         "that overflows in float16 may fit in bfloat16 or float32") from error
                parts[name].append(values)
            bar.update(min(batch_contexts, len(shard) - offset))
        tensors = {name: torch.cat(values).contiguous() for name, values in parts.items()}
        file_name = _shard_name(len(manifest["shards"]))
        atomic_file(folder / file_name, lambda path, tensors=tensors: save_file(tensors, str(path)))
        manifest["shards"].append({"file": file_name, "tokens": int(next(iter(tensors.values())).shape[0]),
                                   "sha256": _sha256(folder / file_name)})
        manifest["contexts_done"] = shard_start + len(shard)
        atomic_text(folder / MANIFEST, json.dumps(manifest, indent=1))
    bar.close()


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
        if index not in self._verified and _sha256(path) != entry["sha256"]:
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
            _check_row_hook(model, name)
        contexts = _check_contexts(contexts, model)
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
