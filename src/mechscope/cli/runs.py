"""``mechscope runs list | show | add | rm``: the results store, and the registration of every
command's output folder in it.

The store is ``--store PATH``, else the ``MECHSCOPE_STORE`` environment variable, else
``~/.mechscope/runs.sqlite``. Every command that writes an output folder (``--out``) registers
it there when it finishes (:func:`registering`): its configuration, the models it used (name and
weights hash) and its artifacts. A store that cannot be written does not fail the finished run:
the command says so and names ``mechscope runs add`` to register it later.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from mechscope.cli.core import console, new_app
from mechscope.errors import MechscopeError
from mechscope.files import MARKER

STORE_ENV = "MECHSCOPE_STORE"
# Command options that name a model, and the role each has in the record.
MODEL_OPTIONS = {"model": "model", "base": "base", "ft": "ft", "base_model": "base"}

StoreOption = Annotated[Path | None, typer.Option(help=f"the results store (default: ${STORE_ENV}, else "
                                                       "~/.mechscope/runs.sqlite)")]


def store_path(store: Path | None = None) -> Path:
    from mechscope.store import DEFAULT_STORE

    return Path(store or os.environ.get(STORE_ENV) or DEFAULT_STORE).expanduser()


def _models(store, options: dict[str, Any]) -> dict[str, dict[str, str | None]]:
    """{role: {"name", "weights_sha256"}} of the model options a command was given (the default
    model when it takes ``--model`` and none was given)."""
    import mechscope
    from mechscope.models.loading import weight_files

    found = {}
    for option, role in MODEL_OPTIONS.items():
        if option not in options or role in found:
            continue
        name = options[option] if options[option] is not None else (mechscope.DEFAULT_MODEL if option == "model"
                                                                    else None)
        if name is None:
            continue
        try:
            files = weight_files(str(name))
        except MechscopeError:
            files = []
        found[role] = {"name": str(name), "weights_sha256": store.weights_sha256(files)}
    return found


def register_run(folder: Path, options: dict[str, Any], store: Path | None = None) -> None:
    """Register the finished run in ``folder``; a failure is said, not raised (the run is done)."""
    import sqlite3

    from mechscope.store import RunStore

    path = store_path(store)
    try:
        with RunStore(path) as opened:
            record = opened.register(folder, models=_models(opened, options))
    except (MechscopeError, OSError, sqlite3.Error) as error:
        console.print(f"warning: the run in {folder} was not registered in {path} ({error}); register it later with "
                      f"`mechscope runs add {folder}`", highlight=False, markup=False, soft_wrap=True)
        return
    console.print(f"registered as run {record.id} in {path}", highlight=False, markup=False, soft_wrap=True)


def registering(command: Callable) -> Callable:
    """``command``, registering its output folder (its ``out`` option) once it has finished."""

    @functools.wraps(command)
    def run(*args, **kwargs):
        result = command(*args, **kwargs)
        out = kwargs.get("out")
        # Under torchrun every rank runs the command; rank 0 alone registers the shared folder.
        if out is not None and (Path(out) / MARKER).is_file() and os.environ.get("RANK", "0") == "0":
            register_run(Path(out), kwargs)
        return result

    return run


runs_app = new_app("The results store: every finished run's output folder, indexed (SQLite).")


@runs_app.command("list")
def list_runs(
    search: Annotated[str | None, typer.Option(help="full-text search over run names, configurations, explanations "
                                                    "and prompts (words, \"a phrase\", prefix*, AND/OR/NOT)")] = None,
    kind: Annotated[str | None, typer.Option(help="only runs of this command, e.g. explain, circuit, audit")] = None,
    limit: Annotated[int, typer.Option(min=1, help="at most this many runs")] = 50,
    store: StoreOption = None,
) -> None:
    """List registered runs, newest first (or best match first with --search)."""
    from rich.table import Table

    from mechscope.store import RunStore

    with RunStore(store_path(store)) as opened:
        records = opened.find(search, kind, limit)
        total = opened.count()
    table = Table("id", "name", "kind", "model", "created", "path")
    for record in records:
        model = next(iter(record.models.values()), {}).get("name") or ""
        table.add_row(str(record.id), record.name, record.kind, model,
                      datetime.fromtimestamp(record.created).strftime("%Y-%m-%d %H:%M"), str(record.path))
    console.print(table)
    console.print(f"{len(records)} shown of {total} runs in {store_path(store)}", highlight=False, markup=False, soft_wrap=True)


@runs_app.command("show")
def show(run_id: Annotated[int, typer.Argument(help="the run's id (mechscope runs list)")],
         store: StoreOption = None) -> None:
    """Print one run's record as JSON: configuration, models, version, artifacts."""
    from mechscope.store import RunStore

    with RunStore(store_path(store)) as opened:
        typer.echo(json.dumps(opened.get(run_id).to_json(), indent=1))


@runs_app.command("add")
def add(folder: Annotated[Path, typer.Argument(help="a finished command's output folder")],
        name: Annotated[str | None, typer.Option(help="the run's name (default: the folder's name)")] = None,
        store: StoreOption = None) -> None:
    """Register an output folder by hand (e.g. one written before the store existed)."""
    from mechscope.files import read_run_marker
    from mechscope.store import RunStore

    marker = read_run_marker(folder) or {}  # no marker: register() says so
    with RunStore(store_path(store)) as opened:
        record = opened.register(folder, name, models=_models(opened, marker.get("options") or {}))
    console.print(f"registered {record.path} as run {record.id} ({record.kind}, {len(record.artifacts)} files)",
                  highlight=False, markup=False, soft_wrap=True)


@runs_app.command("rm")
def rm(run_id: Annotated[int, typer.Argument(help="the run's id (mechscope runs list)")],
       store: StoreOption = None) -> None:
    """Forget a run: its record leaves the store; its folder and files stay where they are."""
    from mechscope.store import RunStore

    with RunStore(store_path(store)) as opened:
        record = opened.remove(run_id)
    console.print(f"removed run {record.id} ({record.name}) from the store; its files stay in {record.path}",
                  highlight=False, markup=False, soft_wrap=True)
