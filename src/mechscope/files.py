"""Atomic file writes: write beside the target, then rename over it in one step, so a crash or
kill -9 never leaves a half-written file (the old file, if any, stays until the rename)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path


def atomic_file(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Run ``write(temporary_path)`` and rename the result to ``path``; creates parent folders."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    write(temporary)
    os.replace(temporary, path)
    return path


def atomic_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_file(path, lambda temporary: temporary.write_text(text, encoding="utf-8"))
