"""The activation store's manifest: what a harvest folder holds and the checks that keep one
folder from mixing two harvests.

``manifest.json`` records the settings that decide the stored values (contexts, hooks, model and
a weights fingerprint, dtype, shard and batch sizes) and the complete shards: file, token count,
SHA-256, the contexts it holds and the rank (of which world size) that wrote it. Shard ``i``
always holds contexts [i * shard_contexts, (i + 1) * shard_contexts), whoever wrote it, so the
union of the shards of any world size is one harvest.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Literal

import torch

from mechscope.errors import (
    ConfigError,
    FileFormatError,
    InputTypeError,
    MissingFileError,
    OutOfRangeError,
    ResumeError,
)
from mechscope.files import file_sha256, plain_name, read_json
from mechscope.models.hooked_model import HookedModel
from mechscope.validate import check_int, literal_choices

MANIFEST = "manifest.json"
MANIFEST_FORMAT = 3  # 3: shards may be listed out of order, with their contexts and writer rank
# Storage dtypes of harvested activations (names as torch spells them).
HarvestDtype = Literal["float32", "float16", "bfloat16", "float64"]
HARVEST_DTYPES: tuple[str, ...] = literal_choices(HarvestDtype)
# Manifest fields that decide the stored values: a resume must match every one of them.
RESUME_FIELDS = ("hook_names", "contexts_sha256", "total_contexts", "context_length", "shard_contexts",
                 "batch_contexts", "model", "model_sha256", "dtype", "dropped_positions")


def stored_sha256(path: Path) -> str:
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
                          f"multiple of {world_size} {unit}, e.g. {max(world_size, batch - batch % world_size)} or "
                          f"{batch - batch % world_size + world_size}")
    return rank, world_size


def check_contexts(contexts: Any, model: HookedModel | None = None) -> torch.Tensor:
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


def check_hook_names(model: HookedModel, hook_names: Any) -> list[str]:
    if isinstance(hook_names, str) or not isinstance(hook_names, list | tuple):
        raise InputTypeError(f"hook_names must be a list of hook point names; got {hook_names!r}")
    if not hook_names:
        raise ConfigError("hook_names is empty: name at least one hook point to harvest")
    if len(set(hook_names)) != len(hook_names):
        raise ConfigError(f"hook_names lists a hook point twice: {list(hook_names)}")
    for name in hook_names:
        check_row_hook(model, name)
    return list(hook_names)


def check_row_hook(model: HookedModel, name: str) -> None:
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


def shard_name(index: int) -> str:
    return f"shard_{index:05d}.safetensors"


def shard_count(total_contexts: int, shard_contexts: int) -> int:
    return -(-total_contexts // shard_contexts)


def shard_contexts_of(index: int, shard_contexts: int, total_contexts: int) -> list[int]:
    """[first, end) of the contexts that shard ``index`` holds."""
    return [index * shard_contexts, min((index + 1) * shard_contexts, total_contexts)]


def listed_shards(folder: Path, manifest: dict) -> dict[int, dict]:
    """{shard index: entry} of the shards ``manifest`` lists, each checked: named after its
    index, holding the contexts that index stands for, present on disk. Entries written by
    mechscope before distributed harvests (no ``contexts``) are the first shards in order."""
    path = folder / MANIFEST
    shard_contexts, total = manifest["shard_contexts"], manifest["total_contexts"]
    found: dict[int, dict] = {}
    for position, entry in enumerate(manifest["shards"]):
        contexts = entry.get("contexts")
        index = position if contexts is None else (contexts[0] // shard_contexts if isinstance(contexts, list) and
                                                   contexts and isinstance(contexts[0], int) else -1)
        if not 0 <= index < shard_count(total, shard_contexts) or (
                contexts is not None and contexts != shard_contexts_of(index, shard_contexts, total)):
            raise FileFormatError(f"{path}: shards[{position}].contexts is {contexts!r}, not the range of a shard of "
                                  f"{shard_contexts} of {total} contexts; the manifest was edited: delete the folder "
                                  "and harvest again")
        # The next shard is named after its index: a manifest listing other names could have
        # one of its shards overwritten.
        if entry["file"] != shard_name(index):
            raise FileFormatError(f"{path}: shards[{position}].file is {entry['file']!r}, not {shard_name(index)!r}; "
                                  "the manifest was edited: delete the folder and harvest again")
        if index in found:
            raise FileFormatError(f"{path}: shards[{position}] lists shard {index} a second time; delete the folder "
                                  "and harvest again")
        if not (folder / entry["file"]).is_file():
            raise MissingFileError(f"{folder / entry['file']} is listed in {path} but missing; delete the folder "
                                   "and harvest again")
        found[index] = {**entry, "contexts": shard_contexts_of(index, shard_contexts, total)}
    done = sum(end - first for first, end in (entry["contexts"] for entry in found.values()))
    if manifest["contexts_done"] != done:
        raise FileFormatError(f"{path}: contexts_done={manifest['contexts_done']} does not match its "
                              f"{len(found)} shards of {shard_contexts} contexts ({done}); the manifest is "
                              "corrupt: delete the folder and harvest again")
    return found


def check_resume(folder: Path, manifest: dict, expected: dict) -> dict[int, dict]:
    """Refuse to continue a harvest whose recorded settings differ from this call's; returns
    the shards it lists ({index: entry}, see :func:`listed_shards`)."""
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
    return listed_shards(folder, manifest)
