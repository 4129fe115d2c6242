"""The results store: runs registered from their output folders, searched, removed; migrations;
two processes registering at once."""

import json
import multiprocessing
import sqlite3

import pytest

from mechscope.errors import FileFormatError, MechscopeError, NotFoundError
from mechscope.files import prepare_output_folder
from mechscope.store import SCHEMA_VERSION, RunStore


def finished_run(folder, kind="explain", options=None, explanation="fires on the word cat", record=True):
    """A finished run folder as a command leaves it: marker, a summary and a nested JSON file."""
    run = prepare_output_folder(folder, kind, ["summary.md", "units"],
                                options=options or {"model": "tiny-llama", "prompts": ["When Mary and John"]})
    (run / "summary.md").write_text("# summary\n")
    (run / "units").mkdir()
    (run / "units" / "latent_0.json").write_text(json.dumps({"unit": "latent 0", "explanation": explanation,
                                                             "scores": {"lexicon": {"value": 0.9}}}))
    if record:
        run.record()
    return run.path


def test_a_registered_run_keeps_its_config_models_and_artifacts_and_is_found_by_its_text(tmp_path):
    folder = finished_run(tmp_path / "ioi-explained")
    (folder / "units" / "outside.json").symlink_to(tmp_path / "elsewhere.json")  # never indexed
    with RunStore(tmp_path / "runs.sqlite") as store:
        record = store.register(folder)
        assert (record.name, record.kind, record.path) == ("ioi-explained", "explain", folder.resolve())
        assert record.config == {"model": "tiny-llama", "prompts": ["When Mary and John"]}
        assert record.models == {"model": {"name": "tiny-llama", "weights_sha256": None}}
        assert sorted(record.artifacts.values()) == ["summary.md", "units/latent_0.json"]
        assert record.mechscope_version and record.created > 0
        # Explanations inside the run's JSON files, prompts in its config, and its name are searchable.
        assert [r.id for r in store.search("cat")] == [record.id]
        assert [r.id for r in store.search('"Mary and John"')] == [record.id]
        assert [r.id for r in store.search("ioi*")] == [record.id]
        assert store.search("zebra") == []
        # find: a search narrowed to a kind, or the newest runs of a kind.
        assert [r.id for r in store.find("cat", "explain")] == [record.id] and store.find("cat", "patch") == []
        assert [r.id for r in store.find(None, "explain")] == [record.id] and store.find(None, "patch") == []
        # Registering the folder again (a resumed run) replaces its record.
        again = store.register(folder, name="renamed")
        assert store.count() == 1 and again.name == "renamed" and store.search("ioi*") == []
        removed = store.remove(again.id)
        assert removed.id == again.id and store.count() == 0
        assert (folder / "summary.md").is_file()  # the files stay: the store only forgets the record
        with pytest.raises(NotFoundError, match="mechscope runs list"):
            store.get(again.id)


def test_unfinished_foreign_and_bad_input_are_refused(tmp_path):
    with RunStore(tmp_path / "runs.sqlite") as store:
        with pytest.raises(MechscopeError, match="has not finished"):
            store.register(finished_run(tmp_path / "half", record=False))
        (tmp_path / "plain").mkdir()
        with pytest.raises(NotFoundError, match="no mechscope run"):
            store.register(tmp_path / "plain")
        with pytest.raises(MechscopeError, match="empty search"):
            store.search("  ")
        with pytest.raises(MechscopeError, match="cannot search"):
            store.search('"unclosed')
    with pytest.raises(FileFormatError, match="is a folder"):
        RunStore(tmp_path)


def test_an_older_store_is_migrated_and_a_newer_or_foreign_file_is_refused_untouched(tmp_path):
    old = tmp_path / "old.sqlite"
    sqlite3.connect(old).close()  # version 0: an empty database, as before the first migration
    with RunStore(old) as store:
        assert store.opened_version == 0 and store.count() == 0
    assert sqlite3.connect(old).execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION

    # A store written at version 1 (before weight hashes were kept) keeps its runs and gains the table.
    from mechscope.store import MIGRATIONS

    v1 = tmp_path / "v1.sqlite"
    connection = sqlite3.connect(v1)
    connection.executescript(MIGRATIONS[0] + "; PRAGMA user_version = 1;")
    connection.execute("INSERT INTO runs (name, kind, path, config, mechscope_version, created) "
                       "VALUES ('kept', 'patch', '/nowhere', '{}', '0.0.1', 1.0)")
    connection.commit()
    connection.close()
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"weights v1")
    with RunStore(v1) as store:
        assert store.opened_version == 1 and [r.name for r in store.runs()] == ["kept"]
        first = store.weights_sha256([weights])
        assert store.weights_sha256([weights]) == first and len(first) == 64
        weights.write_bytes(b"weights v2, longer")  # another version of the file: hashed again
        assert store.weights_sha256([weights]) != first and store.weights_sha256([]) is None

    newer = tmp_path / "newer.sqlite"
    connection = sqlite3.connect(newer)
    connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 5}")
    connection.close()
    before = newer.read_bytes()
    with pytest.raises(FileFormatError, match=f"newer mechscope .*schema version {SCHEMA_VERSION + 5}"):
        RunStore(newer)
    assert newer.read_bytes() == before

    foreign = tmp_path / "notes.sqlite"
    foreign.write_text("my notes, not a database\n" * 100)
    with pytest.raises(FileFormatError, match="not a mechscope results store"):
        RunStore(foreign)
    assert foreign.read_text().startswith("my notes")


def _register_many(store_path, folders, barrier, errors):
    try:
        barrier.wait(120)  # both processes start writing together
        with RunStore(store_path) as store:
            for folder in folders:
                store.register(folder)
    except BaseException:
        import traceback

        errors.put(traceback.format_exc())
        raise


def test_two_processes_registering_at_once_lose_nothing(tmp_path):
    folders = [finished_run(tmp_path / f"run{i}", explanation=f"word{i}") for i in range(24)]
    store_path = tmp_path / "runs.sqlite"  # created by the racing processes themselves
    context = multiprocessing.get_context("spawn")
    barrier, errors = context.Barrier(2), context.Queue()
    jobs = [context.Process(target=_register_many, args=(store_path, folders[i::2], barrier, errors))
            for i in range(2)]
    for job in jobs:
        job.start()
    for job in jobs:
        job.join(600)
    assert errors.empty(), errors.get()
    assert [job.exitcode for job in jobs] == [0, 0]
    with RunStore(store_path) as store:
        assert store.count() == 24
        assert {record.path.name for record in store.runs()} == {f"run{i}" for i in range(24)}
        assert [r.path.name for r in store.search("word17")] == ["run17"]


def test_a_command_registers_its_run_and_runs_lists_shows_and_forgets_it(tiny_llama_folder, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from mechscope.cli.app import app

    runner = CliRunner()
    store = tmp_path / "store.sqlite"
    monkeypatch.setenv("MECHSCOPE_STORE", str(store))
    out = tmp_path / "heads"
    result = runner.invoke(app, ["explain", "--heads", "1:0-1", "--explainer", "tokens", "--scorers", "lexicon",
                                 "--model", str(tiny_llama_folder), "--contexts", "16", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert f"registered as run 1 in {store}" in result.output
    with RunStore(store) as opened:
        record = opened.get(1)
    assert record.kind == "explain" and record.path == out.resolve() and "summary.md" in record.artifacts.values()
    # The model by name and by the hash of its weight files (the same in every run of it).
    assert record.models["model"]["name"] == str(tiny_llama_folder)
    assert len(record.models["model"]["weights_sha256"]) == 64
    listed = runner.invoke(app, ["runs", "list", "--store", str(store)])
    assert listed.exit_code == 0 and "heads" in listed.output and "1 shown of 1 runs" in listed.output
    shown = runner.invoke(app, ["runs", "show", "1", "--store", str(store)])
    assert json.loads(shown.output)["config"]["source"] == "1:0-1"
    missing = runner.invoke(app, ["runs", "show", "7", "--store", str(store)])
    assert missing.exit_code == 2 and "no run 7" in missing.output
    removed = runner.invoke(app, ["runs", "rm", "1", "--store", str(store)])
    assert removed.exit_code == 0 and "files stay" in removed.output and (out / "summary.md").is_file()
    readded = runner.invoke(app, ["runs", "add", str(out), "--name", "my heads", "--store", str(store)])
    assert readded.exit_code == 0 and "as run 2" in readded.output
    found = runner.invoke(app, ["runs", "list", "--search", "my", "--store", str(store)])
    assert "my heads" in found.output
    # A store that cannot be opened does not fail a finished run: it is said, with the way to fix it.
    monkeypatch.setenv("MECHSCOPE_STORE", str(tmp_path))  # a folder, not a database file
    again = runner.invoke(app, ["explain", "--heads", "1:0", "--explainer", "tokens", "--scorers", "lexicon",
                                "--model", str(tiny_llama_folder), "--contexts", "16", "--out", str(tmp_path / "h2")])
    assert again.exit_code == 0 and "was not registered" in again.output and "mechscope runs add" in again.output
