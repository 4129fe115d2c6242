"""Training checkpoints that survive kill -9: the one scheme every resumable trainer uses.

A checkpoint is a folder ``step-N`` of safetensors files and a ``state.json``, written into a
temporary folder and renamed into place; the text file ``latest`` then names it (written
atomically) and older checkpoints are removed. At any moment the folder holds at least one
complete checkpoint or none, never a half-written one. ``state.json`` records whatever
decides the result (settings, a fingerprint of the data and model), so a resume that would
not continue the same run can be refused with every difference named.

Optimiser state (Adam's ``step``, ``exp_avg``, ``exp_avg_sq``) is stored per named parameter,
so a checkpoint can be checked against the parameters it is loaded into.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from mechscope.errors import FileFormatError, MissingFileError
from mechscope.files import atomic_file, atomic_text, plain_name

STEP_NAME = re.compile(r"step-(\d+)")
LATEST = "latest"
STATE = "state.json"


def save_checkpoint(folder: Path, step: int, files: Mapping[str, Mapping[str, torch.Tensor]],
                    state: Mapping[str, Any]) -> Path:
    """Write ``files`` ({file name: {tensor name: tensor}}) and ``state`` (JSON, with ``step``
    added) as checkpoint ``folder/step-{step}``, point ``folder/latest`` at it and remove older
    checkpoints. Returns the checkpoint folder."""
    temporary = folder / f".step-{step}.tmp"
    shutil.rmtree(temporary, ignore_errors=True)
    temporary.mkdir(parents=True)
    for name, tensors in files.items():
        plain = {key: value.detach().cpu().contiguous() for key, value in tensors.items()}
        atomic_file(temporary / name, lambda path, t=plain: save_file(t, str(path)))
    atomic_text(temporary / STATE, json.dumps({**state, "step": step}))
    final = folder / f"step-{step}"
    shutil.rmtree(final, ignore_errors=True)
    os.replace(temporary, final)
    atomic_text(folder / LATEST, final.name)
    for old in folder.iterdir():  # keep the newest complete checkpoint only; touch nothing else
        bare = old.name.removeprefix(".").removesuffix(".tmp")
        if old.is_dir() and old.name != final.name and STEP_NAME.fullmatch(bare):
            shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(folder: Path, remedy: str) -> Path | None:
    """The checkpoint folder that ``folder/latest`` names (a plain ``step-N`` inside
    ``folder``), or None when there is no checkpoint yet."""
    pointer = folder / LATEST
    if not pointer.exists():
        return None
    try:
        name = pointer.read_text(encoding="utf-8").strip()
    except (UnicodeDecodeError, IsADirectoryError) as error:
        raise FileFormatError(f"{pointer} is not the text pointer to a checkpoint: it is corrupt; {remedy}") from error
    plain_name(name, pointer, "the latest pointer")
    if not STEP_NAME.fullmatch(name):
        raise FileFormatError(f"{pointer} must name a checkpoint step-N inside {folder}; got {name!r}; {remedy}")
    checkpoint = folder / name
    if not checkpoint.is_dir():
        raise MissingFileError(f"{pointer} names {name}, but {checkpoint} is missing; {remedy}")
    return checkpoint


def differences(label: str, recorded: Any, current: Mapping[str, Any], skip: tuple[str, ...] = ()) -> list[str]:
    """"label key: checkpoint X, this run Y" for every key whose values differ."""
    if not isinstance(recorded, dict):
        return [f"{label}: checkpoint records {recorded!r}, this run {dict(current)!r}"]
    keys = sorted(set(recorded) | set(current), key=lambda key: (key not in current, key))
    return [f"{label}{key}: checkpoint {recorded.get(key, '<not recorded>')!r}, this run {current.get(key, '<none>')!r}"
            for key in keys if key not in skip and recorded.get(key, object()) != current.get(key, object())]


def as_json(value: Any) -> Any:
    """``value`` as a JSON file gives it back (tuples become lists), for comparing with a checkpoint."""
    return json.loads(json.dumps(value))


def optimiser_tensors(optimiser: torch.optim.Optimizer, names: Mapping[int, str]) -> dict[str, torch.Tensor]:
    """The optimiser's per-parameter state as ``{"{name}.{field}": tensor}``; ``names`` maps
    ``id(parameter)`` to its name."""
    tensors = {}
    for group in optimiser.param_groups:
        for param in group["params"]:
            for key, value in optimiser.state.get(param, {}).items():
                tensors[f"{names[id(param)]}.{key}"] = torch.as_tensor(value).detach().clone().contiguous()
    return tensors


def load_optimiser_tensors(optimiser: torch.optim.Optimizer, parameters: Mapping[str, torch.nn.Parameter],
                           tensors: Mapping[str, torch.Tensor], path: Path, remedy: str) -> None:
    """Restore what :func:`optimiser_tensors` wrote; a tensor that fits no parameter (unknown
    name, wrong shape, unknown field) is a FileFormatError naming it."""
    for key, value in tensors.items():
        name, field = key.rpartition(".")[::2]
        parameter = parameters.get(name)
        fits = field == "step" and value.numel() == 1 or (
            field in ("exp_avg", "exp_avg_sq") and parameter is not None and value.shape == parameter.shape)
        if parameter is None or not fits:
            raise FileFormatError(f"{path}: optimiser tensor {key} {tuple(value.shape)} fits no trained parameter; "
                                  f"{remedy}")
        # Adam's moments live beside their parameter (saved from any device, loaded onto any).
        optimiser.state.setdefault(parameter, {})[field] = value.clone() if field == "step" else \
            value.to(parameter.device, copy=True)


__all__ = ["LATEST", "STATE", "STEP_NAME", "as_json", "differences", "latest_checkpoint", "load_optimiser_tensors",
           "optimiser_tensors", "save_checkpoint"]
