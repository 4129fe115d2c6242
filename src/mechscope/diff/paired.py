"""Paired activations: a base model and its fine-tune run on the SAME tokens, stored side by side.

``harvest_pair`` writes the activations of both models with the ordinary resumable
:func:`mechscope.data.store.harvest` into ``folder/base`` and ``folder/ft`` (the same contexts,
hooks, shard and batch sizes), after checking that the two models can be diffed at all.
``PairedActivations`` reads them back as one training stream for a crosscoder:
``batch(step)`` -> [batch, 2 * n_hooks * d], the concatenation

    [base hook_0 | base hook_1 | ... | base hook_{n-1} | ft hook_0 | ... | ft hook_{n-1}]

so ``x.view(batch, 2, n_hooks, d)[:, 0]`` is the base model and ``[:, 1]`` the fine-tune (see
:func:`split_pair`). Row i of the base half and row i of the ft half are the same token of the same
context. That rests on three facts, all checked when the stream is opened: both stores were
harvested on identical contexts (their manifests' ``contexts_sha256``, context length and count),
with the same shard layout (tokens per shard, so shard i holds the same contexts in both), and both
are read with the same seed and batch size (``StoredActivations.batch`` picks rows as a function of
exactly those, so every reader picks the same rows).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import torch

from mechscope.data.manifest import check_rank_share
from mechscope.data.store import MANIFEST, StoredActivations, harvest, read_manifest
from mechscope.diff.compat import IncompatibleModelsError, check_comparable, model_label
from mechscope.errors import ConfigError, FileFormatError, InputTypeError, MissingFileError
from mechscope.models.hooked_model import HookedModel
from mechscope.validate import check_int

BASE_FOLDER = "base"
FT_FOLDER = "ft"
MODELS = (BASE_FOLDER, FT_FOLDER)  # the order of the two halves of every paired row
# Manifest fields that must agree for row i of one store to be the same token as row i of the other.
ALIGNMENT_FIELDS = ("contexts_sha256", "total_contexts", "context_length", "shard_contexts", "dropped_positions")


def _hook_list(hook_names: str | Sequence[str]) -> list[str]:
    names = [hook_names] if isinstance(hook_names, str) else hook_names
    if not isinstance(names, list | tuple) or not names or not all(isinstance(n, str) and n for n in names):
        raise InputTypeError(f"hook_names must be a hook point name or a non-empty list of them; got {hook_names!r}")
    if len(set(names)) != len(names):
        raise ConfigError(f"hook_names lists a hook point twice: {list(names)}")
    return list(names)


def check_pair_widths(base: HookedModel, ft: HookedModel, hook_names: Sequence[str]) -> int:
    """The common width d of ``hook_names`` in both models; refuses models that cannot be diffed
    (:func:`check_comparable`), hooks whose width differs between the two, and hooks of
    different widths (a paired row is [2, n_hooks, d])."""
    check_comparable(base, ft)
    widths: dict[str, tuple[int | None, int | None]] = {}
    for name in hook_names:
        # hook_point raises UnknownHookError (with close matches) for a name the model lacks.
        widths[name] = (base.hook_point(name).shape[-1], ft.hook_point(name).shape[-1])
    differing = [f"{name}: base {b}, ft {f}" for name, (b, f) in widths.items() if b != f]
    if differing:
        raise IncompatibleModelsError(f"base {model_label(base)!r} and fine-tune {model_label(ft)!r} differ in the "
                                      f"width of {'; '.join(differing)}: their activations cannot be paired")
    distinct = sorted({b for b, _ in widths.values()}, key=str)
    if len(distinct) != 1 or distinct[0] is None:
        raise ConfigError(f"paired hooks must all have one fixed width (a paired row is [2, n_hooks, d]); got "
                          f"{ {name: b for name, (b, _) in widths.items()} }: pair hooks of one kind, e.g. resid_post")
    return int(distinct[0])


def harvest_pair(base: HookedModel, ft: HookedModel, contexts: torch.Tensor, folder: str | Path,
                 hook_names: str | Sequence[str], shard_contexts: int = 64, batch_contexts: int = 8,
                 dtype: torch.dtype = torch.float32, progress: bool = True) -> Path:
    """Harvest ``hook_names`` of both models on ``contexts`` [n, pos] into ``folder/base`` and
    ``folder/ft`` (each a store :class:`StoredActivations` reads: shards of [tokens, d], BOS
    dropped). Resumable: an interrupted call, repeated with the same arguments, continues where
    each store stopped; a call with other settings is refused by the store. Refuses models that
    cannot be diffed or whose hook widths differ. Returns ``folder``."""
    hook_names = _hook_list(hook_names)
    check_pair_widths(base, ft, hook_names)
    folder = Path(folder)
    for name, model in zip(MODELS, (base, ft)):
        harvest(model, contexts, folder / name, hook_names, shard_contexts=shard_contexts,
                batch_contexts=batch_contexts, dtype=dtype, progress=progress)
    return folder


def split_pair(x: torch.Tensor, n_hooks: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(base [..., n_hooks, d], ft [..., n_hooks, d]) of paired rows x [..., 2 * n_hooks * d]
    (views, not copies)."""
    check_int("n_hooks", n_hooks, 1)
    width = x.shape[-1]
    if width % (2 * n_hooks):
        raise ConfigError(f"a paired row of width {width} cannot hold 2 x {n_hooks} hook(s) of equal width")
    pair = x.view(*x.shape[:-1], 2, n_hooks, width // (2 * n_hooks))
    return pair[..., 0, :, :], pair[..., 1, :, :]


def join_pair(base: torch.Tensor, ft: torch.Tensor) -> torch.Tensor:
    """Paired rows [..., 2 * n_hooks * d] from base and ft activations [..., n_hooks, d] (the
    inverse of :func:`split_pair`)."""
    if base.shape != ft.shape or base.dim() < 2:
        raise ConfigError(f"base and ft activations must both be [..., n_hooks, d] of one shape; got "
                          f"{tuple(base.shape)} and {tuple(ft.shape)}")
    return torch.stack([base, ft], dim=-3).flatten(-3)


class PairedActivations:
    """Training batches of paired activations (see the module docstring for the row layout):
    ``batch(step)`` -> [batch_size, 2 * n_hooks * d], a deterministic function of (seed, step).
    ``hook_names`` picks the harvested hooks to pair, in that order. ``base_model`` /
    ``ft_model`` are the {"model", "model_sha256"} the two harvests recorded. ``rank`` of
    ``world_size`` reads its equal share of every global batch (data-parallel training; the
    fingerprint stays the global one)."""

    def __init__(self, folder: str | Path, hook_names: str | Sequence[str], batch_size: int = 4096, seed: int = 0,
                 allow_partial: bool = False, rank: int = 0, world_size: int = 1):
        self.folder = Path(folder)
        self.hook_names = _hook_list(hook_names)
        check_int("batch_size", batch_size, 1)
        check_int("seed", seed, None)
        self.rank, self.world_size = check_rank_share(rank, world_size, batch_size, "batch_size", "rows")
        for name in MODELS:
            if not (self.folder / name / MANIFEST).is_file():
                raise MissingFileError(f"no {MANIFEST} in {self.folder / name}: a paired folder holds {BASE_FOLDER}/ "
                                       f"and {FT_FOLDER}/ stores; write them with harvest_pair")
        manifests = {name: read_manifest(self.folder / name) for name in MODELS}
        self._check_alignment(manifests)
        # One reader per (model, hook): each picks rows from (seed, step, shard layout) alone, and
        # the layouts were just checked equal, so every reader picks the same tokens.
        self.stores = {name: [StoredActivations(self.folder / name, hook, batch_size, seed, allow_partial=allow_partial)
                              for hook in self.hook_names] for name in MODELS}
        self.batch_size, self.seed = batch_size, seed
        self.base_model = {key: manifests[BASE_FOLDER].get(key) for key in ("model", "model_sha256")}
        self.ft_model = {key: manifests[FT_FOLDER].get(key) for key in ("model", "model_sha256")}
        self.total_tokens = self.stores[BASE_FOLDER][0].total_tokens

    def _check_alignment(self, manifests: dict[str, dict]) -> None:
        base, ft = manifests[BASE_FOLDER], manifests[FT_FOLDER]
        remedy = "harvest both models with harvest_pair (same contexts and settings) into one folder"
        missing = [f"{name}: {key}" for name, manifest in manifests.items() for key in ALIGNMENT_FIELDS
                   if key not in manifest]
        if missing:
            raise FileFormatError(f"{self.folder}: the stores do not record {', '.join(missing)}, so their rows cannot "
                                  f"be shown to be the same tokens; {remedy}")
        differing = [f"{key}: base {base[key]!r}, ft {ft[key]!r}" for key in ALIGNMENT_FIELDS if base[key] != ft[key]]
        if differing:
            what = ("were harvested on different contexts" if base["contexts_sha256"] != ft["contexts_sha256"]
                    else "were harvested with different layouts")
            raise ConfigError(f"the stores in {self.folder / BASE_FOLDER} and {self.folder / FT_FOLDER} {what} "
                              f"({'; '.join(differing)}): row i would not be the same token in both; {remedy}")
        base_tokens = [shard["tokens"] for shard in base["shards"]]
        ft_tokens = [shard["tokens"] for shard in ft["shards"]]
        if base_tokens != ft_tokens:
            # Same settings but a different number of complete shards: one harvest is unfinished.
            raise ConfigError(f"{self.folder}: the base store has {len(base_tokens)} shard(s) of {base_tokens[:4]}... "
                              f"tokens, the ft store {len(ft_tokens)} of {ft_tokens[:4]}...: one harvest is "
                              "unfinished; run harvest_pair again with the same arguments to finish both")
        for name, manifest in manifests.items():
            absent = [hook for hook in self.hook_names if hook not in manifest["hook_names"]]
            if absent:
                raise ConfigError(f"{', '.join(absent)} was not harvested in {self.folder / name}; harvested: "
                                  f"{', '.join(manifest['hook_names'])}")

    @property
    def n_hooks(self) -> int:
        return len(self.hook_names)

    def fingerprint(self) -> dict:
        """What decides the batches: every reader's fingerprint (stored shards, contexts, model,
        hook, batch size, seed) for both models, in row order. Recorded by training checkpoints."""
        parts = {name: [store.fingerprint() for store in stores] for name, stores in self.stores.items()}
        digest = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()
        return {"kind": "paired_activations", "pair_sha256": digest, "hook_names": list(self.hook_names),
                "base_model": self.base_model, "ft_model": self.ft_model, "batch_size": self.batch_size,
                "seed": self.seed, "total_tokens": self.total_tokens}

    def rows(self, start: int, count: int) -> torch.Tensor:
        """``count`` paired rows from position ``start`` of the endless shuffled stream:
        [count, 2 * n_hooks * d] float32."""
        halves = []
        for name in MODELS:
            parts = [store.tokens(start, count)[hook].float() for store, hook in zip(self.stores[name], self.hook_names)]
            widths = {part.shape[-1] for part in parts}
            if len(widths) != 1:
                raise FileFormatError(f"{self.folder / name}: the paired hooks have widths "
                                      f"{dict(zip(self.hook_names, (p.shape[-1] for p in parts)))}; pair hooks of one "
                                      "width")
            halves.append(torch.stack(parts, dim=-2))  # [count, n_hooks, d]
        if halves[0].shape != halves[1].shape:
            raise FileFormatError(f"{self.folder}: base rows are {tuple(halves[0].shape)}, ft rows "
                                  f"{tuple(halves[1].shape)}: the two stores hold different widths")
        return join_pair(*halves)

    def batch(self, step: int) -> torch.Tensor:
        """[batch_size / world_size, 2 * n_hooks * d] for ``step`` >= 0 (this rank's share of the
        global batch): base hooks in order, then ft hooks."""
        check_int("step", step, 0)
        share = self.batch_size // self.world_size
        return self.rows(step * self.batch_size + self.rank * share, share)


__all__ = ["ALIGNMENT_FIELDS", "BASE_FOLDER", "FT_FOLDER", "PairedActivations", "check_pair_widths", "harvest_pair",
           "join_pair", "split_pair"]
