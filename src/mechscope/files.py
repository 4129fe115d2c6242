"""Writing results safely.

Atomic file writes: write beside the target, then rename over it in one step, so a crash or
kill -9 never leaves a half-written file (the old file, if any, stays until the rename).

Output folders: :func:`prepare_output_folder` checks a run's folder before any work starts (not
a file, writable, not holding another kind of run or, unless asked, an earlier run's results)
and claims it with a small marker, ``mechscope-run.json``, naming the kind of run and its outputs.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mechscope.errors import (
    FileFormatError,
    FolderNotEmptyError,
    MissingFileError,
    OutputFolderError,
    ResumeError,
)

try:
    from safetensors import SafetensorError
except ImportError:  # pragma: no cover - safetensors comes with transformers
    SafetensorError = OSError

MARKER = "mechscope-run.json"
# What reading a damaged file raises (truncated safetensors or GGUF, bad JSON, bad bytes):
# callers that read user files turn these into one FileFormatError naming the file, and keep
# the original's type and text in the message. Only what parsers raise for bad bytes: a
# KeyError, TypeError or RuntimeError is more often a bug, and keeps its traceback rather than
# becoming "corrupt file, delete it".
READ_ERRORS: tuple[type[BaseException], ...] = (OSError, ValueError, EOFError, struct.error, SafetensorError)
_LISTED = 8  # names quoted in a message before "and N more"


def atomic_file(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Run ``write(temporary_path)`` and rename the result to ``path``; creates parent folders."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A name of its own, so two writers of the same file never write into one temporary.
    handle, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    temporary = Path(name)
    try:
        write(temporary)
        os.replace(temporary, path)
    finally:
        if temporary.exists():  # a failed write leaves neither a temporary nor a half file behind
            temporary.unlink()
    return path


def atomic_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_file(path, lambda temporary: temporary.write_text(text, encoding="utf-8"))


def atomic_figure(path: str | Path, figure: Any) -> Path:
    """Write a plotly figure as a standalone HTML page (plotly.js embedded, so it opens offline),
    atomically: ``write_html`` would write in place, so the page is rendered to a string first."""
    return atomic_text(path, figure.to_html(include_plotlyjs=True, full_html=True))


def staged_writes(folder: str | Path, write: Callable[[Path], Any]) -> Any:
    """Run ``write(staging_folder)`` for a writer that fills a folder with plain ``open()``
    writes, then move each entry it made into ``folder`` with one rename each, so no file in
    ``folder`` is ever half-written. Returns what ``write`` returned, with paths inside the
    staging folder mapped to their final place."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    # Staged beside the folder, not in it: a kill leaves no debris inside the results folder
    # (which would make it look non-empty, or foreign, to the next run).
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.staging-", dir=folder.parent))
    try:
        result = write(staging)
        for entry in sorted(staging.iterdir()):
            target = folder / entry.name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)  # os.replace cannot put a folder over a non-empty one
            os.replace(entry, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if isinstance(result, Path) and staging in result.parents:
        return folder / result.relative_to(staging)
    return result


@dataclass
class OutputFolder:
    """A checked, claimed output folder. ``replaced`` names the earlier outputs this run
    rewrites (shown to the user before the work starts); ``resumed`` is True when the run
    continues an earlier one of the same kind (``reused`` names what it keeps)."""

    path: Path
    kind: str
    outputs: list[str]
    replaced: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    resumed: bool = False

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def describe(self) -> str | None:
        """One line on what this run replaces or resumes in its folder; None for a fresh folder."""
        parts = []
        if self.resumed:
            parts.append(f"resuming the earlier `{self.kind}` run in {self.path}: reusing {_names(self.reused)}")
        if self.replaced:
            parts.append(f"replacing in {self.path}: {_names(self.replaced)}")
        if self.removed:
            parts.append(f"removed the earlier run's {_names(self.removed)}")
        return "; ".join(parts) or None

    def record(self, outputs: Iterable[str] | None = None) -> None:
        """Mark the run complete in the marker, with the outputs it wrote (default: those declared)."""
        if outputs is not None:
            self.outputs = list(dict.fromkeys(outputs))
        marker = _read_marker(self.path) or {}
        marker.update(kind=self.kind, outputs=self.outputs, complete=True)
        atomic_text(self.path / MARKER, json.dumps(marker, indent=1))


def _names(names: Sequence[str]) -> str:
    shown = ", ".join(names[:_LISTED])
    return shown + (f" and {len(names) - _LISTED} more" if len(names) > _LISTED else "")


def read_run_marker(folder: str | Path) -> dict | None:
    """The run marker of ``folder`` ({"kind", "outputs", "options", "complete", ...}), or None
    when it holds none; an unreadable marker is an :class:`OutputFolderError`."""
    return _read_marker(Path(folder))


def _read_marker(folder: Path) -> dict | None:
    path = folder / MARKER
    if not path.is_file():
        return None
    try:
        marker = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise OutputFolderError(f"{path} is unreadable ({error}); delete it if {folder} holds nothing you "
                                "need, or choose another output folder") from error
    if not isinstance(marker, dict) or not isinstance(marker.get("kind"), str):
        raise OutputFolderError(f"{path} is not a mechscope run marker; choose another output folder")
    return marker


def _check_location(path: Path) -> None:
    """Refuse a path that is a file, or lies under a file, before anything is created."""
    if path.exists() and not path.is_dir():
        raise OutputFolderError(f"output folder {path} is an existing file, not a folder; choose a folder")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise OutputFolderError(f"output folder {path} lies under {parent}, which is a file")
            if not os.access(parent, os.W_OK | os.X_OK) and not path.exists():
                raise OutputFolderError(f"cannot create output folder {path}: {parent} is not writable")
            break
    if path.is_dir() and not os.access(path, os.W_OK | os.X_OK):
        raise OutputFolderError(f"output folder {path} is not writable")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def prepare_output_folder(
    path: str | Path,
    kind: str,
    outputs: Iterable[str] = (),
    *,
    overwrite: bool = False,
    resumable: Iterable[str] = (),
    options: Mapping[str, Any] | None = None,
) -> OutputFolder:
    """Check and claim ``path`` for a run of ``kind`` (e.g. "patch") that writes the top-level
    entries ``outputs`` (files or folders), before any model loads or work starts.

    Refused, with a message naming the folder and files: a path that is a file or lies under
    one; a folder that cannot be written; a folder holding a run of another kind; a folder
    holding an earlier run of the same kind whose outputs still exist, unless ``overwrite``
    (then the earlier run's outputs are deleted, so results never mix); a non-empty folder
    that is no mechscope run, unless ``overwrite`` (then only this run's outputs are replaced).

    ``resumable`` names outputs an interrupted or finished run of the same kind may continue
    from (e.g. an activation store and checkpoints): such a run resumes when its ``options``
    equal the earlier run's; differing options are a :class:`ResumeError` listing them, and
    ``overwrite`` starts afresh instead.
    """
    path = Path(path).expanduser()
    outputs = list(dict.fromkeys(outputs))
    reusable = list(dict.fromkeys(resumable))
    # As stored in the marker (JSON), so a resume compares like with like (tuples become lists).
    options = json.loads(json.dumps(dict(options or {}), default=str))
    _check_location(path)
    folder = OutputFolder(path, kind, outputs)
    marker = _read_marker(path) if path.is_dir() else None
    if marker is not None and marker["kind"] != kind:
        raise OutputFolderError(f"{path} holds a `mechscope {marker['kind']}` run; a `mechscope {kind}` run "
                                "needs another output folder (or delete that one)")
    if marker is not None:
        # Only plain names inside the folder: a hand-edited marker must never point a deletion elsewhere.
        earlier = [name for name in map(str, marker.get("outputs", []))
                   if Path(name).name == name and name not in (".", "..", MARKER)]
        present = [name for name in dict.fromkeys(earlier + outputs) if (path / name).exists()]
        kept = [name for name in present if name in reusable]
        if kept and not overwrite:
            _check_resume(path, kind, marker.get("options", {}), options, present)
            folder.resumed, folder.reused = True, kept
            folder.replaced = [name for name in present if name not in reusable]
        elif present and not overwrite:
            raise FolderNotEmptyError(f"{path} already holds a `mechscope {kind}` run ({_names(present)}); pass "
                                      "--overwrite to replace it, or choose another output folder")
        elif present:
            for name in present:  # an overwrite starts clean, so none of the earlier results remain
                _remove(path / name)
            folder.removed = present
    elif path.is_dir():
        entries = sorted(entry.name for entry in path.iterdir())
        if entries and not overwrite:
            raise FolderNotEmptyError(f"{path} is not empty ({_names(entries)}) and holds no mechscope run; choose "
                                      "an empty or new output folder, or pass --overwrite to write into it")
        folder.replaced = [name for name in outputs if (path / name).exists()]
    _claim(folder, options)
    return folder


def _check_resume(path: Path, kind: str, earlier: Mapping[str, Any], options: Mapping[str, Any],
                  present: list[str]) -> None:
    differ = [f"{key} {earlier.get(key)!r} -> {options.get(key)!r}"
              for key in sorted(set(earlier) | set(options)) if earlier.get(key) != options.get(key)]
    if differ:
        raise ResumeError(f"{path} holds a `mechscope {kind}` run with other options ({'; '.join(differ)}): resuming "
                          f"would mix them; repeat its options, choose another output folder, or pass --overwrite "
                          f"to start afresh (deletes {_names(present)})")


def _claim(folder: OutputFolder, options: Mapping[str, Any]) -> None:
    """Create the folder and write the marker; this is also the real test that it is writable
    (access checks do not see read-only mounts, and root passes them)."""
    marker = {"kind": folder.kind, "outputs": folder.outputs, "options": dict(options), "complete": False}
    try:
        folder.path.mkdir(parents=True, exist_ok=True)
        atomic_text(folder.path / MARKER, json.dumps(marker, indent=1))
    except OSError as error:
        raise OutputFolderError(f"cannot write into output folder {folder.path}: "
                                f"{error.strerror or error}") from error


def read_json(path: str | Path, what: str = "a mechscope file",
              remedy: str = "delete it and write it again") -> Any:
    """The JSON in ``path``; a missing file is a MissingFileError, a truncated or corrupt one a
    FileFormatError that names the path, ``what`` it belongs to and the ``remedy``. JSON only:
    nothing is ever unpickled."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as error:
        raise MissingFileError(f"{path} not found ({what}); {remedy}") from error
    except IsADirectoryError as error:
        raise FileFormatError(f"{path} is a folder, not the JSON file of {what}; {remedy}") from error
    except UnicodeDecodeError as error:
        raise FileFormatError(f"{path} ({what}) is not UTF-8 text: it is corrupt; {remedy}") from error
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise FileFormatError(f"{path} ({what}) is not valid JSON ({error}): it is corrupt or truncated; "
                              f"{remedy}") from error


def plain_name(value: Any, source: Path, key: str) -> str:
    """``value`` if it names a file directly inside ``source``'s folder (no separators, not
    absolute, not "." or ".."): files that a folder lists must never lead out of it."""
    if (not isinstance(value, str) or not value or value in (".", "..") or "/" in value or "\\" in value
            or "\0" in value or Path(value).is_absolute() or Path(value).name != value):
        raise FileFormatError(f"{source}: {key} must be a plain file name inside {source.parent}; got {value!r}. "
                              "The file is corrupt or was edited: delete it (and its folder's run) and start again")
    return value


def read_safetensors(path: str | Path, what: str = "file", remedy: str = "delete it and write it again") -> dict:
    """{name: tensor} from the safetensors file ``path``, or a :class:`MissingFileError` /
    :class:`FileFormatError` naming the path, ``what`` it holds and the ``remedy`` (a truncated
    file is reported, not a traceback)."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"{path} not found (the {what}); {remedy}")
    try:
        return load_file(str(path))
    except READ_ERRORS as error:
        raise FileFormatError(f"{path} is not a readable safetensors file ({type(error).__name__}: {error}); the "
                              f"{what} is corrupt or truncated; {remedy}") from error


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB blocks (memory stays flat for large shards)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def required_keys(data: Any, keys: Sequence[str], path: str | Path, what: str = "file") -> Any:
    """``data`` if it is a JSON object holding every one of ``keys``, else a FileFormatError
    naming the file and the missing keys (a default would silently change what was saved)."""
    if not isinstance(data, dict):
        raise FileFormatError(f"{path} does not hold a JSON object (the {what})")
    missing = [key for key in keys if key not in data]
    if missing:
        raise FileFormatError(f"{path} lacks the key(s) {', '.join(missing)} (the {what}); it was not written by "
                              "this version of mechscope, or it was edited")
    return data
