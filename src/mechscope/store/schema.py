"""The results store's SQLite schema and its versioned migrations.

The schema version lives in SQLite's ``PRAGMA user_version``. Opening a store applies, in one
transaction each, every migration newer than its version, so a store written by an older
mechscope opens; a store written by a newer one (a version above :data:`SCHEMA_VERSION`) is
refused with a message naming both versions, never modified.
"""

from __future__ import annotations

import sqlite3

# Each migration takes the store from version i to i + 1 (list index i); append, never edit.
# Ids are AUTOINCREMENT: a removed run's id (or an artifact's) is never given to another, so a
# link to it can never show something else.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE runs (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        name TEXT NOT NULL,
        kind TEXT NOT NULL,
        path TEXT NOT NULL UNIQUE,
        config TEXT NOT NULL,
        mechscope_version TEXT NOT NULL,
        git_commit TEXT,
        created REAL NOT NULL
    );
    CREATE TABLE models (
        run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
        role TEXT NOT NULL,
        name TEXT,
        weights_sha256 TEXT,
        PRIMARY KEY (run_id, role)
    );
    CREATE TABLE artifacts (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
        relpath TEXT NOT NULL,
        UNIQUE (run_id, relpath)
    );
    CREATE VIRTUAL TABLE run_text USING fts5(name, kind, body, tokenize = 'unicode61');
    """,
    # 2: weight files' hashes, kept by (path, size, mtime), so a model is hashed once per version.
    """
    CREATE TABLE weight_hashes (
        path TEXT NOT NULL,
        size INTEGER NOT NULL,
        mtime_ns INTEGER NOT NULL,
        sha256 TEXT NOT NULL,
        PRIMARY KEY (path, size, mtime_ns)
    );
    """,
    # 3: dictionary features of dashboard runs: where each one's line lies in its features.jsonl
    # (read by offset, never copied here) and its explanation and top tokens for full-text search.
    """
    CREATE TABLE features (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
        latent INTEGER NOT NULL,
        relpath TEXT NOT NULL,
        offset INTEGER NOT NULL,
        length INTEGER NOT NULL,
        density REAL NOT NULL,
        max_activation REAL NOT NULL,
        explanation TEXT,
        UNIQUE (run_id, latent)
    );
    CREATE VIRTUAL TABLE feature_text USING fts5(explanation, tokens, tokenize = 'unicode61');
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)


class StoreVersionError(Exception):
    """Raised (wrapped by the store into a MechscopeError) for a store newer than this mechscope."""


def migrate(connection: sqlite3.Connection) -> int:
    """Bring ``connection``'s database (in autocommit mode) to :data:`SCHEMA_VERSION`; returns
    the version it had. The version is read inside the write transaction, so two processes
    opening a new store at once migrate it once: the second waits, then finds it current. A
    current store is only read (no write lock), so opening one is cheap."""
    if connection.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION:
        return SCHEMA_VERSION
    connection.execute("BEGIN IMMEDIATE")
    try:
        found = connection.execute("PRAGMA user_version").fetchone()[0]
        if found > SCHEMA_VERSION:
            raise StoreVersionError(f"schema version {found}, newer than this mechscope's {SCHEMA_VERSION}")
        for version in range(found, SCHEMA_VERSION):
            for statement in MIGRATIONS[version].split(";"):
                if statement.strip():
                    connection.execute(statement)
        connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        connection.execute("COMMIT")
    except BaseException:
        connection.execute("ROLLBACK")
        raise
    return found
