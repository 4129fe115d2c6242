"""The on-disk model cache: dequantised GGUF models kept as safetensors for fast reloads.

Writes are atomic: a model is saved into a temporary folder beside its final place and renamed
into place in one step, so an interrupted conversion never leaves a half-written cache entry.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from mechscope.errors import FileFormatError, OutputFolderError

CACHE_ENV = "MECHSCOPE_CACHE"
COMPLETE_MARKER = "config.json"


def cache_root() -> Path:
    """``$MECHSCOPE_CACHE`` if set, else ``~/.cache/mechscope``."""
    configured = os.environ.get(CACHE_ENV)
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "mechscope"


def cached_model_dir(key: str) -> Path:
    return cache_root() / "models" / key


def is_cached(key: str) -> bool:
    return (cached_model_dir(key) / COMPLETE_MARKER).is_file()


def write_atomically(key: str, save: Callable[[Path], None]) -> Path:
    """Run ``save(tmp_dir)`` and move the folder to its cache place in one rename.

    If another process finished the same entry first, its copy is kept and ours discarded.
    """
    final = cached_model_dir(key)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=final.parent))
    except OSError as error:
        raise OutputFolderError(f"cannot write the model cache {final.parent} ({error.strerror or error}); set "
                                f"{CACHE_ENV} to a writable folder") from error
    try:
        try:
            save(tmp)
        except OSError as error:  # a full disk or a quota: the entry cannot be written at all
            raise OutputFolderError(f"cannot write the model cache entry {final} ({error.strerror or error}); free "
                                    f"space or set {CACHE_ENV} to another folder") from error
        try:
            os.rename(tmp, final)
        except OSError as error:
            if not is_cached(key):  # the place holds something that is not a complete entry
                raise FileFormatError(f"the model cache folder {final} holds an incomplete or damaged entry "
                                      f"({error.strerror or error}); delete that folder and load again") from error
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def list_cached() -> list[str]:
    models = cache_root() / "models"
    if not models.is_dir():
        return []
    try:
        return sorted(p.name for p in models.iterdir() if not p.name.startswith(".") and is_cached(p.name))
    except OSError as error:
        raise OutputFolderError(f"cannot read the model cache {models} ({error.strerror or error}); set "
                                f"{CACHE_ENV} to a readable folder") from error
