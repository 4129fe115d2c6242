"""Many dictionaries (one per layer) spread over ranks: each rank trains whole dictionaries.

Data parallelism splits every batch and all-reduces every gradient; for a many-layer run
(a transcoder per MLP, an SAE per residual stream) it is cheaper to give each rank its own
dictionaries: dictionary ``i`` trains on rank ``i % world_size`` on whole batches, with no
traffic at all until the end. Each dictionary has its own checkpoint folder
``checkpoint_dir/dictionary_{i:03d}``, the very folder a one-process
``train(configs[i], data, replace(config, seed=config.seed + i), that folder)`` writes (the
seed is the one ``train(configs, ...)`` gives dictionary ``i``), so a run resumes on any
number of ranks and a folder moves between this mode and one process. A finished dictionary
is saved in ``final/`` beside its checkpoints (with the digest of what decided it); once every
rank is done, every rank loads all of them.

(sparsify's layer-distributed mode hangs when ranks save checkpoints at different times;
here ranks never wait on each other before the end, and a rank's failure reaches the others
at that one meeting point.)
"""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path

from mechscope.distributed import Ranks, check_ranks, check_same_settings, settings_digest
from mechscope.errors import ConfigError, InputTypeError
from mechscope.files import atomic_text, read_json
from mechscope.sae.config import SAEConfig
from mechscope.sae.io import load_sae, save_sae
from mechscope.sae.model import SAE
from mechscope.sae.train import TrainConfig, _data_fingerprint, train

FINAL = "final"
FINAL_DIGEST = "final.json"


def dictionary_folder(checkpoint_dir: Path, index: int) -> Path:
    return checkpoint_dir / f"dictionary_{index:03d}"


def _decided_by(cfg: SAEConfig, config: TrainConfig, fingerprint: dict) -> str:
    return settings_digest({"config": cfg.to_dict(), "train": asdict(config), "data": fingerprint})


def train_spread(configs: list[SAEConfig], data, config: TrainConfig, checkpoint_dir: str | Path, ranks: Ranks,
                 progress: bool = True) -> list[SAE]:
    """Train ``configs`` [n] with dictionary ``i`` on rank ``i % world_size``; every rank
    returns all n trained dictionaries, in order. ``data`` gives whole batches on every rank
    (not a per-rank share); ``checkpoint_dir`` must be on a filesystem every rank sees."""
    if not isinstance(configs, list | tuple) or not configs or not all(isinstance(c, SAEConfig) for c in configs):
        raise InputTypeError(f"train_spread needs a non-empty list of SAEConfig; got {configs!r}")
    ranks = check_ranks(ranks)
    if getattr(data, "world_size", 1) != 1:
        raise ConfigError("train_spread gives each rank whole batches: build the data with world_size=1 (a per-rank "
                          "share is for data-parallel train(..., ranks=...))")
    checkpoint_dir = Path(checkpoint_dir)
    fingerprint = _data_fingerprint(data)
    check_same_settings(ranks, "training settings", {"configs": [cfg.to_dict() for cfg in configs],
                                                     "train": asdict(config), "data": fingerprint})
    own = [index for index in range(len(configs)) if index % ranks.world_size == ranks.rank]

    def train_own() -> None:
        for index in own:
            folder = dictionary_folder(checkpoint_dir, index)
            settings = replace(config, seed=config.seed + index)
            digest = _decided_by(configs[index], settings, fingerprint)
            if _finished(folder) == digest:
                continue
            (sae,) = train(configs[index], data, settings, folder, progress=progress and ranks.is_main)
            save_sae(sae, folder / FINAL)
            atomic_text(folder / FINAL_DIGEST, json.dumps({"sha256": digest}))

    ranks.everywhere(train_own, "training the dictionaries of each rank")
    return [load_sae(dictionary_folder(checkpoint_dir, index) / FINAL) for index in range(len(configs))]


def _finished(folder: Path) -> str | None:
    """The digest recorded with a finished dictionary (None: not finished)."""
    path = folder / FINAL_DIGEST
    if not path.is_file() or not (folder / FINAL).is_dir():
        return None
    recorded = read_json(path, "a finished dictionary's digest", f"delete {folder} to train it again")
    return recorded.get("sha256") if isinstance(recorded, dict) else None


__all__ = ["dictionary_folder", "train_spread"]
