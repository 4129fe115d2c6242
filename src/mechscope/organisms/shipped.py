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
from mechscope.organisms.folder import is_organism_folder, load_organism

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


def resolve_model(name: str | Path | None, base: HookedModel | None = None) -> HookedModel:
    """A shipped organism's name or an organism folder -> the organism (merged onto ``base``
    when given, else onto its recorded base); anything else -> :func:`mechscope.load`."""
    from mechscope.models.loading import load

    if name is not None:
        label = str(name)
        if label in shipped_organisms():
            return load_organism(shipped_organism(label), base)
        if is_organism_folder(Path(label).expanduser()):
            return load_organism(Path(label).expanduser(), base)
    return load(name)


__all__ = ["SHIPPED_DIR", "resolve_model", "shipped_organism", "shipped_organisms"]
