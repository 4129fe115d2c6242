"""The organisms that ship with mechscope (LoRA factors as package data, a few MB each), and
one resolver for everything a command accepts as a model: a shipped organism's name, an
organism folder, or anything :func:`mechscope.load` takes.

Each shipped organism's folder records the recipe and settings that rebuild it
(``examples/build_organisms.py``); CI never retrains them.
"""

from __future__ import annotations

from pathlib import Path

from mechscope.errors import MissingFileError
from mechscope.models.hooked_model import HookedModel
from mechscope.models.weights import model_fingerprint
from mechscope.organisms.folder import is_organism_folder, load_organism, read_manifest

SHIPPED_DIR = Path(__file__).parent / "shipped"


def shipped_organisms() -> dict[str, Path]:
    """{name: folder} of the organisms installed with mechscope (e.g. ``smollm2-backdoor``)."""
    if not SHIPPED_DIR.is_dir():
        return {}
    return {folder.name: folder for folder in sorted(SHIPPED_DIR.iterdir()) if is_organism_folder(folder)}


def shipped_organism(name: str) -> Path:
    """The folder of the shipped organism ``name``."""
    found = shipped_organisms()
    if name not in found:
        raise MissingFileError(f"no shipped organism {name!r}; shipped: {', '.join(found) or 'none'}")
    return found[name]


def organism_path(name: str | Path) -> Path | None:
    """The folder of a shipped organism's name or of an organism folder; None for anything else."""
    label = str(name)
    if label in shipped_organisms():
        return shipped_organism(label)
    path = Path(label).expanduser()
    return path if is_organism_folder(path) else None


def is_shipped(folder: str | Path) -> bool:
    """Whether ``folder`` lies in the installed package's shipped organisms (never written to)."""
    return SHIPPED_DIR.resolve() in Path(folder).resolve().parents


def resolve_model(name: str | Path | None, base: HookedModel | None = None) -> HookedModel:
    """A shipped organism's name or an organism folder -> the organism, merged onto ``base``
    when that is the base it was trained on (saving a second load), else onto its recorded
    base; anything else -> :func:`mechscope.load`."""
    from mechscope.models.loading import load

    folder = organism_path(name) if name is not None else None
    if folder is None:
        return load(name)
    if base is not None and model_fingerprint(base)["model_sha256"] != read_manifest(folder)["base_sha256"]:
        base = None
    return load_organism(folder, base)


__all__ = ["SHIPPED_DIR", "is_shipped", "organism_path", "resolve_model", "shipped_organism", "shipped_organisms"]
