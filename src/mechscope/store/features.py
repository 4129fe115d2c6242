"""Dictionary features in the results store: each feature of a dashboard run's ``features.jsonl``
indexed by its line's byte offset (the page reads that line alone), with its explanation and top
tokens searchable (FTS5). The file stays the only copy of the data."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from mechscope.errors import FileFormatError, MechscopeError

FEATURES_FILE = "features.jsonl"  # written by mechscope.sae.feature_data, which takes these names from here
FORMAT = "mechscope-features"


@dataclass(frozen=True)
class FeatureRow:
    """One indexed feature: where its data lies and what the list shows."""

    run_id: int
    latent: int
    relpath: str
    offset: int
    length: int
    density: float
    max_activation: float
    explanation: str | None


def _top_tokens(feature: dict) -> str:
    """The activating tokens of the top contexts, for search."""
    return " ".join(window["tokens"][window["at"]] for window in feature.get("top", [])
                    if 0 <= window.get("at", -1) < len(window.get("tokens", [])))


def index_features(db: sqlite3.Connection, run_id: int, folder: Path, relpath: str) -> int:
    """Index ``folder``/``relpath`` (a features.jsonl) under run ``run_id``; returns the count.
    Runs inside the caller's transaction."""
    path = folder / relpath
    rows, texts = [], []
    seen: set[int] = set()
    with open(path, "rb") as handle:
        header = handle.readline()
        try:
            if json.loads(header).get("format") != FORMAT:
                raise FileFormatError(f"{path} is not a {FORMAT} file")
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as error:
            raise FileFormatError(f"{path} is not a {FORMAT} file ({error})") from error
        offset = len(header)
        for line in handle:
            if line.strip():
                try:
                    feature = json.loads(line)
                    explanation = (feature.get("explanation") or {}).get("text")
                    latent = int(feature["latent"])
                    rows.append((run_id, latent, relpath, offset, len(line),
                                 float(feature["density"]), float(feature["max_activation"]),
                                 None if explanation is None else str(explanation)))
                    texts.append((str(explanation or ""), _top_tokens(feature)))
                except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError,
                        AttributeError) as error:
                    raise FileFormatError(f"{path}: the line at byte {offset} is not a feature ({error!r})") from error
                if latent in seen:
                    raise FileFormatError(f"{path}: latent {latent} appears twice (the second at byte {offset})")
                seen.add(latent)
            offset += len(line)
    for row, text in zip(rows, texts):
        cursor = db.execute("INSERT INTO features (run_id, latent, relpath, offset, length, density, max_activation, "
                            "explanation) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", row)
        db.execute("INSERT INTO feature_text (rowid, explanation, tokens) VALUES (?, ?, ?)",
                   (cursor.lastrowid, *text))
    return len(rows)


def forget_features(db: sqlite3.Connection, run_id: int) -> None:
    """Drop run ``run_id``'s features and their search text (inside the caller's transaction)."""
    db.execute("DELETE FROM feature_text WHERE rowid IN (SELECT id FROM features WHERE run_id = ?)", (run_id,))
    db.execute("DELETE FROM features WHERE run_id = ?", (run_id,))


_COLUMNS = "f.run_id, f.latent, f.relpath, f.offset, f.length, f.density, f.max_activation, f.explanation"
ORDERS = {"latent": "f.latent", "density": "f.density DESC, f.latent", "max": "f.max_activation DESC, f.latent"}


def find_features(db: sqlite3.Connection, run_id: int, search: str | None = None, order: str = "latent",
                  limit: int = 100, offset: int = 0) -> tuple[list[FeatureRow], int]:
    """(features of run ``run_id``, how many match in all): all of them in ``order`` ("latent",
    "density", "max"), or those whose explanation or top tokens match ``search`` (FTS5 syntax,
    best first; a number finds that latent)."""
    if order not in ORDERS:
        raise MechscopeError(f"unknown feature order {order!r}; valid: {', '.join(ORDERS)}")
    if search is not None and search.strip().isascii() and search.strip().isdigit():
        rows = db.execute(f"SELECT {_COLUMNS} FROM features f WHERE f.run_id = ? AND f.latent = ?",
                          (run_id, int(search))).fetchall()
        return [FeatureRow(*row) for row in rows], len(rows)
    if search is None or not search.strip():
        total = db.execute("SELECT COUNT(*) FROM features WHERE run_id = ?", (run_id,)).fetchone()[0]
        rows = db.execute(f"SELECT {_COLUMNS} FROM features f WHERE f.run_id = ? ORDER BY {ORDERS[order]} "
                          "LIMIT ? OFFSET ?", (run_id, int(limit), int(offset))).fetchall()
        return [FeatureRow(*row) for row in rows], total
    try:
        # The full-text match first, then the run: written the other way round, SQLite walks
        # the run's features and tests each against the index (100x slower on 16k latents).
        total = db.execute("SELECT COUNT(*) FROM features f WHERE f.run_id = ? AND f.id IN "
                           "(SELECT rowid FROM feature_text WHERE feature_text MATCH ?)", (run_id, search)).fetchone()[0]
        rows = db.execute(f"SELECT {_COLUMNS} FROM (SELECT rowid AS id, rank AS score FROM feature_text WHERE "
                          "feature_text MATCH ?) m JOIN features f ON f.id = m.id WHERE f.run_id = ? "
                          "ORDER BY m.score, f.latent LIMIT ? OFFSET ?", (search, run_id, int(limit), int(offset))).fetchall()
    except sqlite3.OperationalError as error:
        raise MechscopeError(f"cannot search features for {search!r} ({error}); use words, \"a phrase\", prefix* "
                             "and AND/OR/NOT, or a latent's number") from error
    return [FeatureRow(*row) for row in rows], total


def feature_row(db: sqlite3.Connection, run_id: int, latent: int) -> FeatureRow | None:
    """Latent ``latent`` of run ``run_id``, or None."""
    row = db.execute(f"SELECT {_COLUMNS} FROM features f WHERE f.run_id = ? AND f.latent = ?",
                     (int(run_id), int(latent))).fetchone()
    return None if row is None else FeatureRow(*row)


def present_latents(db: sqlite3.Connection, run_id: int, latents: list[int]) -> set[int]:
    """Which of ``latents`` run ``run_id`` has indexed."""
    latents = [latent for latent in latents if isinstance(latent, int) and not isinstance(latent, bool)]
    if not latents:
        return set()
    marks = ", ".join("?" * len(latents))
    rows = db.execute(f"SELECT latent FROM features WHERE run_id = ? AND latent IN ({marks})",
                      (run_id, *map(int, latents))).fetchall()
    return {row[0] for row in rows}


def read_feature(folder: Path, row: FeatureRow) -> dict:
    """The feature's line of its features.jsonl, read at its offset (checked to be that latent:
    a file rewritten since it was registered is an error that says to register it again)."""
    path = folder / row.relpath
    try:
        with open(path, "rb") as handle:
            handle.seek(row.offset)
            line = handle.read(row.length)
    except OSError as error:
        raise FileFormatError(f"cannot read {path} ({error.strerror or error}); it was moved or deleted since the run "
                              "was registered: put it back, or forget the run (`mechscope runs rm`)") from error
    try:
        feature = json.loads(line)
        if feature.get("latent") != row.latent:
            raise ValueError("another latent")
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError, AttributeError) as error:
        raise FileFormatError(f"{path} changed since it was registered ({error}); register the run again "
                              f"(`mechscope runs add {folder}`)") from error
    return feature


__all__ = ["FEATURES_FILE", "ORDERS", "FeatureRow", "find_features", "forget_features", "feature_row",
           "index_features", "present_latents", "read_feature"]
