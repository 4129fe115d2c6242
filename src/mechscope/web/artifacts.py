"""Artifacts served by id: a run's file is found through the store's record, never from a path in
the request. A NUL, an absolute or ``..`` path in the record, a symlink on the way or a file
outside the run's folder is refused (None: the app answers 404)."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from mechscope.store import RunRecord


def artifact_file(record: RunRecord, artifact_id: str) -> Path | None:
    """The file of artifact ``artifact_id`` of ``record``, or None when it must not be served."""
    if not is_id(artifact_id) or int(artifact_id) not in record.artifacts:
        return None
    relpath = record.artifacts[int(artifact_id)]
    relative = PurePosixPath(relpath)
    if "\x00" in relpath or relative.is_absolute() or ".." in relative.parts:
        return None
    root = record.path
    path = root.joinpath(*relative.parts)
    walked = root
    for part in relative.parts:  # no symlink anywhere between the run's folder and the file
        walked = walked / part
        if walked.is_symlink():
            return None
    resolved = path.resolve()
    if not resolved.is_file() or not resolved.is_relative_to(root.resolve()):
        return None
    return resolved


def is_id(text: str) -> bool:
    """Whether ``text`` is a store id: ASCII digits only (``str.isdigit`` also takes "²")."""
    return text.isascii() and text.isdigit()


def run_file(record: RunRecord, relpath: str) -> Path | None:
    """The file the run registered as ``relpath`` (e.g. ``circuit.json``), under the same rules."""
    for key, registered in record.artifacts.items():
        if registered == relpath:
            return artifact_file(record, str(key))
    return None


__all__ = ["artifact_file", "is_id", "run_file"]
