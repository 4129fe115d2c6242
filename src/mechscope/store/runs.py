"""The results store: every finished run's output folder indexed in one SQLite database.

A record holds the run's name and kind, its configuration (the options its output folder's
marker recorded), the models it used (name and weights hash, per role: "model", "base", "ft"),
the mechscope version and git commit that wrote it, when it was registered, and its artifacts:
the files of its declared outputs, as paths relative to the folder. The artifacts stay where
the run wrote them; the database indexes them and never copies them. Run names, configuration
strings (prompts, model names) and the explanations and prompts found in the run's JSON files
are searchable with SQLite's FTS5 (:meth:`RunStore.search`).

Concurrency: the database runs in WAL mode with a busy timeout, and every write is one
``BEGIN IMMEDIATE`` transaction, so two jobs registering at once both land (tested with two
processes). Registering a folder that is already registered updates its record (a resumed run).
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from mechscope.errors import FileFormatError, MechscopeError, NotFoundError
from mechscope.files import file_sha256, read_run_marker
from mechscope.store.features import (
    FEATURES_FILE,
    FeatureRow,
    feature_row,
    find_features,
    forget_features,
    index_features,
    present_latents,
    read_feature,
)
from mechscope.store.schema import SCHEMA_VERSION, StoreVersionError, migrate

DEFAULT_STORE = Path("~/.mechscope/runs.sqlite")
BUSY_TIMEOUT_MS = 30_000
# JSON keys whose string values are searchable text (explanations, labels, prompts).
TEXT_KEYS = frozenset({"explanation", "label", "prompt", "prompts", "text", "hypothesis", "surface"})
MAX_JSON_BYTES = 1 << 20  # larger JSON artifacts are indexed as artifacts, not read for text
MAX_TEXT_CHARS = 200_000


@dataclass(frozen=True)
class RunRecord:
    """One registered run; ``models`` {role: {"name", "weights_sha256"}}; ``artifacts`` {id:
    path relative to ``path``}."""

    id: int
    name: str
    kind: str
    path: Path
    config: dict[str, Any]
    mechscope_version: str
    git_commit: str | None
    created: float
    models: dict[str, dict[str, str | None]] = field(default_factory=dict)
    artifacts: dict[int, str] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"id": self.id, "name": self.name, "kind": self.kind, "path": str(self.path), "config": self.config,
                "mechscope_version": self.mechscope_version, "git_commit": self.git_commit,
                "created": self.created, "models": self.models,
                "artifacts": {str(key): value for key, value in self.artifacts.items()}}


def mechscope_version() -> str:
    """The installed mechscope's version ("unknown" when it is not installed as a package)."""
    try:
        return metadata.version("mechscope")
    except metadata.PackageNotFoundError:
        return "unknown"


def mechscope_commit() -> str | None:
    """The git commit of the mechscope checkout this code runs from, or None (an installed
    wheel, no git)."""
    source = Path(__file__).resolve().parent
    try:
        done = subprocess.run(["git", "-C", str(source), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return (done.stdout.strip() or None) if done.returncode == 0 else None


def _artifact_files(folder: Path, outputs: list[str]) -> list[str]:
    """Files of the declared ``outputs`` (paths relative to ``folder``, sorted); a symlink, or a
    file reached through one, is left out: the store indexes only what lies in the folder."""
    found = []
    for name in outputs:
        path = folder / name
        candidates = [path] if path.is_file() else sorted(path.rglob("*")) if path.is_dir() else []
        found += [str(p.relative_to(folder)) for p in candidates
                  if p.is_file() and not p.is_symlink() and p.resolve() == folder / p.relative_to(folder)]
    return sorted(found)


def _strings(value: Any, outside_text_keys: bool, out: list[str]) -> None:
    """Collect the strings of ``value``: every one, or, while ``outside_text_keys``, only those
    that lie under one of TEXT_KEYS (everything below such a key counts)."""
    if isinstance(value, str):
        if not outside_text_keys:
            out.append(value)
    elif isinstance(value, Mapping):
        for key, item in value.items():
            _strings(item, outside_text_keys and key not in TEXT_KEYS, out)
    elif isinstance(value, list | tuple):
        for item in value:
            _strings(item, outside_text_keys, out)


def _search_text(folder: Path, config: dict, artifacts: list[str]) -> str:
    """Configuration strings, then the explanations and prompts of the run's JSON artifacts."""
    parts: list[str] = []
    _strings(config, False, parts)
    for relpath in artifacts:
        path = folder / relpath
        if path.suffix != ".json" or path.stat().st_size > MAX_JSON_BYTES:
            continue
        try:
            _strings(json.loads(path.read_text(encoding="utf-8")), True, parts)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            continue  # an unreadable artifact is still listed; it just adds no search text
        if sum(map(len, parts)) > MAX_TEXT_CHARS:
            break
    return "\n".join(parts)[:MAX_TEXT_CHARS]


class RunStore:
    """The store at ``path`` (created, with its folder, when missing). Use as a context manager
    or call :meth:`close`."""

    def __init__(self, path: str | Path = DEFAULT_STORE):
        self.path = Path(path).expanduser()
        if self.path.exists() and not self.path.is_file():
            raise FileFormatError(f"the results store {self.path} is a folder, not a database file; pass --store with "
                                  "a file path")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.connection = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
            self.connection.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            # Checked before anything is written: a newer store is refused untouched.
            found = self.connection.execute("PRAGMA user_version").fetchone()[0]
            if found > SCHEMA_VERSION:
                raise StoreVersionError(f"schema version {found}, newer than this mechscope's {SCHEMA_VERSION}")
            self._retry_locked(lambda: self.connection.execute("PRAGMA journal_mode = WAL"))
            self.connection.execute("PRAGMA foreign_keys = ON")
            self.opened_version = self._retry_locked(lambda: migrate(self.connection))
        except StoreVersionError as error:
            self.connection.close()
            raise FileFormatError(f"the results store {self.path} was written by a newer mechscope ({error}); upgrade "
                                  "mechscope, or pass --store with another file") from error
        except sqlite3.DatabaseError as error:
            self.connection.close()
            raise FileFormatError(f"{self.path} is not a mechscope results store ({error}); pass --store with another "
                                  "file, or move this one away") from error

    @staticmethod
    def _retry_locked(step: Callable[[], Any]) -> Any:
        """``step()``, retried while another process holds a lock SQLite's busy handler does not
        wait for (switching to WAL needs the database to itself for a moment)."""
        deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
        while True:
            try:
                return step()
            except sqlite3.OperationalError as error:
                if "locked" not in str(error) or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def close(self) -> None:
        self.connection.close()

    def __enter__(self) -> RunStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @contextmanager
    def _writing(self) -> Iterator[sqlite3.Connection]:
        self.connection.execute("BEGIN IMMEDIATE")
        try:
            yield self.connection
            self.connection.execute("COMMIT")
        except BaseException:
            self.connection.execute("ROLLBACK")
            raise

    def weights_sha256(self, files: list[Path]) -> str | None:
        """SHA-256 over ``files``' names and contents (None for no files). Each file's own hash is
        kept by (path, size, mtime), so a model is read once per version, not once per run."""
        if not files:
            return None
        total = hashlib.sha256()
        for path in sorted(Path(f).resolve() for f in files):
            info = path.stat()
            key = (str(path), info.st_size, info.st_mtime_ns)
            row = self.connection.execute("SELECT sha256 FROM weight_hashes WHERE path = ? AND size = ? AND "
                                          "mtime_ns = ?", key).fetchone()
            if row is None:
                row = (file_sha256(path),)
                with self._writing() as db:
                    db.execute("INSERT OR REPLACE INTO weight_hashes VALUES (?, ?, ?, ?)", (*key, row[0]))
            total.update(f"{path.name}:{row[0]};".encode())
        return total.hexdigest()

    def register(self, folder: str | Path, name: str | None = None,
                 models: Mapping[str, Mapping[str, str | None]] | None = None) -> RunRecord:
        """Index the finished run in ``folder`` (its marker must say complete) under ``name``
        (default: the folder's name); ``models`` {role: {"name", "weights_sha256"}} (default:
        the marker's "models", else the configuration's model options, without a hash)."""
        folder = Path(folder).expanduser().resolve()
        marker = read_run_marker(folder)
        if marker is None:
            raise NotFoundError(f"{folder} holds no mechscope run (no marker file); only a command's output folder can "
                                "be registered")
        if not marker.get("complete"):
            raise MechscopeError(f"the `{marker['kind']}` run in {folder} has not finished; rerun its command to "
                                 "finish it, then register it")
        config = dict(marker.get("options") or {})
        if models is None:
            models = marker.get("models") or {role: {"name": config.get(role), "weights_sha256": None}
                                              for role in ("model", "base", "ft") if config.get(role)}
        artifacts = _artifact_files(folder, [str(o) for o in marker.get("outputs", [])])
        name = name or folder.name
        text = _search_text(folder, config, artifacts)
        with self._writing() as db:
            old = db.execute("SELECT id FROM runs WHERE path = ?", (str(folder),)).fetchone()
            if old is not None:  # a resumed or rerun folder: its record is replaced, not duplicated
                forget_features(db, old[0])
                db.execute("DELETE FROM runs WHERE id = ?", (old[0],))
                db.execute("DELETE FROM run_text WHERE rowid = ?", (old[0],))
            cursor = db.execute(
                "INSERT INTO runs (name, kind, path, config, mechscope_version, git_commit, created) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (name, marker["kind"], str(folder), json.dumps(config), mechscope_version(), mechscope_commit(),
                 time.time()))
            run_id = cursor.lastrowid
            db.executemany("INSERT INTO models (run_id, role, name, weights_sha256) VALUES (?, ?, ?, ?)",
                           [(run_id, role, info.get("name"), info.get("weights_sha256"))
                            for role, info in models.items()])
            db.executemany("INSERT INTO artifacts (run_id, relpath) VALUES (?, ?)",
                           [(run_id, relpath) for relpath in artifacts])
            db.execute("INSERT INTO run_text (rowid, name, kind, body) VALUES (?, ?, ?, ?)",
                       (run_id, name, marker["kind"], text))
            if FEATURES_FILE in artifacts:
                index_features(db, run_id, folder, FEATURES_FILE)
        return self.get(run_id)

    def _record(self, row: tuple) -> RunRecord:
        run_id = row[0]
        models = {role: {"name": model, "weights_sha256": digest} for role, model, digest in self.connection.execute(
            "SELECT role, name, weights_sha256 FROM models WHERE run_id = ? ORDER BY role", (run_id,))}
        artifacts = dict(self.connection.execute(
            "SELECT id, relpath FROM artifacts WHERE run_id = ? ORDER BY relpath", (run_id,)).fetchall())
        return RunRecord(run_id, row[1], row[2], Path(row[3]), json.loads(row[4]), row[5], row[6], row[7], models,
                         artifacts)

    _COLUMNS = "id, name, kind, path, config, mechscope_version, git_commit, created"

    def get(self, run_id: int) -> RunRecord:
        """The run with id ``run_id``."""
        row = self.connection.execute(f"SELECT {self._COLUMNS} FROM runs WHERE id = ?", (int(run_id),)).fetchone()
        if row is None:
            raise NotFoundError(f"no run {run_id} in {self.path}; `mechscope runs list` shows the ids")
        return self._record(row)

    def runs(self, kind: str | None = None, limit: int | None = None) -> list[RunRecord]:
        """Registered runs, newest first (of ``kind`` only, when given)."""
        query = f"SELECT {self._COLUMNS} FROM runs" + (" WHERE kind = ?" if kind else "") + " ORDER BY created DESC, id DESC"
        rows = self.connection.execute(query + (f" LIMIT {int(limit)}" if limit else ""), (kind,) if kind else ())
        return [self._record(row) for row in rows.fetchall()]

    def count(self) -> int:
        return self.connection.execute("SELECT COUNT(*) FROM runs").fetchone()[0]

    def search(self, query: str, limit: int = 50) -> list[RunRecord]:
        """Runs whose name, kind, configuration or explanations and prompts match ``query``
        (FTS5: words, "a phrase", prefix*, AND/OR/NOT), best match first."""
        if not query.strip():
            raise MechscopeError("an empty search; give words to look for, e.g. `mechscope runs list --search cat`")
        try:
            rows = self.connection.execute(
                f"SELECT {', '.join('runs.' + c.strip() for c in self._COLUMNS.split(','))} FROM run_text "
                "JOIN runs ON runs.id = run_text.rowid WHERE run_text MATCH ? ORDER BY rank LIMIT ?",
                (query, int(limit))).fetchall()
        except sqlite3.OperationalError as error:
            raise MechscopeError(f"cannot search for {query!r} ({error}); use words, \"a phrase\", prefix* and "
                                 "AND/OR/NOT") from error
        return [self._record(row) for row in rows]

    def find(self, search: str | None = None, kind: str | None = None, limit: int = 50) -> list[RunRecord]:
        """:meth:`runs` when ``search`` is None, else :meth:`search` (a blank search is an error
        there); either way only runs of ``kind`` when it is given."""
        if search is None:
            return self.runs(kind, limit)
        return [r for r in self.search(search, limit) if not kind or r.kind == kind]

    def remove(self, run_id: int) -> RunRecord:
        """Forget run ``run_id`` (its files stay where they are); returns what was removed."""
        record = self.get(run_id)
        with self._writing() as db:
            forget_features(db, record.id)
            db.execute("DELETE FROM runs WHERE id = ?", (record.id,))
            db.execute("DELETE FROM run_text WHERE rowid = ?", (record.id,))
        return record

    def features(self, run_id: int, search: str | None = None, order: str = "latent", limit: int = 100,
                 offset: int = 0) -> tuple[list[FeatureRow], int]:
        """(features of run ``run_id``, how many match in all); see :func:`find_features`."""
        return find_features(self.connection, run_id, search, order, limit, offset)

    def feature(self, run_id: int, latent: int) -> dict:
        """Latent ``latent`` of run ``run_id``: its line of the run's features.jsonl."""
        row = feature_row(self.connection, run_id, latent)
        if row is None:
            raise NotFoundError(f"run {run_id} has no feature {latent}")
        return read_feature(self.get(run_id).path, row)

    def artifact_pairs(self, suffix: str, partner: str, limit: int = 1000) -> list[tuple[int, int, str]]:
        """(run id, artifact id, path) of every artifact ending in ``suffix`` that has a partner
        of the same stem ending in ``partner`` in its run (e.g. a saved direction's ``.json``
        beside its ``.safetensors``), newest runs first."""
        rows = self.connection.execute(
            "SELECT a.run_id, a.id, a.relpath FROM artifacts a JOIN runs r ON r.id = a.run_id "
            "WHERE a.relpath LIKE ? ESCAPE '\\' AND EXISTS (SELECT 1 FROM artifacts b WHERE b.run_id = a.run_id AND "
            "b.relpath = substr(a.relpath, 1, length(a.relpath) - ?) || ?) ORDER BY r.created DESC, a.id LIMIT ?",
            ("%" + suffix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_"), len(suffix), partner,
             int(limit))).fetchall()
        return [tuple(row) for row in rows]

    def present_latents(self, run_id: int, latents: list[int]) -> set[int]:
        """Which of ``latents`` run ``run_id`` has features for."""
        return present_latents(self.connection, run_id, latents)


__all__ = ["DEFAULT_STORE", "SCHEMA_VERSION", "RunRecord", "RunStore", "mechscope_commit", "mechscope_version"]
