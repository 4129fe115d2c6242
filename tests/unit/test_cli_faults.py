"""Bad input on the command line: every error mechscope raises on purpose is one line on stderr
and exit status 2, checked before the model loads where it can be; real bugs keep their
traceback. Output folders are never silently mixed or overwritten."""

import json
import os
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

import mechscope
from mechscope import errors
from mechscope.cli.main import app
from mechscope.files import MARKER, prepare_output_folder

runner = CliRunner()
SRC = Path(mechscope.__file__).resolve().parent


@pytest.fixture
def model_folder(tiny_llama_folder):
    return tiny_llama_folder


@pytest.fixture(autouse=True)
def _own_cache(private_cache):
    """Never the user's model cache (conftest's private_cache, for every test here)."""
    return private_cache


@pytest.fixture
def loads(monkeypatch):
    """Counts model loads, so a test can assert a check came before any load."""
    calls = []
    real = mechscope.load

    def spy(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(mechscope, "load", spy)
    return calls


@pytest.fixture(scope="module")
def dictionary(tmp_path_factory):
    from mechscope.sae import SAE, SAEConfig, save_sae

    folder = tmp_path_factory.mktemp("sae") / "sae"
    save_sae(SAE(SAEConfig(64, 32, "topk", k=4, hook_name="blocks.1.hook_resid_post")), folder)
    return folder


def refused(args, *needles, alone=True):
    """Run ``args``; assert exit status 2 and one ``error: ...`` line holding every needle (and,
    when ``alone``, nothing else printed: no model load's progress bar, no traceback)."""
    result = runner.invoke(app, [str(arg) for arg in args])
    lines = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    assert not alone or result.output.strip() == lines[0], result.output
    for needle in needles:
        assert str(needle) in lines[0], lines[0]
    return lines[0]


# ------------------------------------------------------------------ model files
def test_missing_gguf_names_the_path(loads):
    refused(["inspect", "hi", "--model", "/no/such/model.gguf"], "GGUF file not found", "/no/such/model.gguf")


def test_folder_without_config_names_the_folder(tmp_path):
    (tmp_path / "empty-model").mkdir()
    refused(["inspect", "hi", "--model", tmp_path / "empty-model", "--out", tmp_path / "out"],
            "no config.json", tmp_path / "empty-model")


def test_truncated_safetensors_names_the_folder(tmp_path, model_folder):
    broken = tmp_path / "broken"
    shutil.copytree(model_folder, broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:600])
    refused(["inspect", "hi", "--model", broken, "--out", tmp_path / "out"], "could not load the model", broken)


def test_corrupt_gguf_is_refused_before_conversion(tmp_path):
    fake = tmp_path / "fake.gguf"
    fake.write_bytes(b"this is no gguf file" * 8)
    refused(["inspect", "hi", "--model", fake, "--out", tmp_path / "out"], "is not a GGUF file", fake)
    assert not (tmp_path / "cache" / "models").exists() or not any((tmp_path / "cache" / "models").iterdir())


def test_corrupt_cache_entry_says_to_delete_it(tmp_path, model_folder):
    from mechscope.models import disk_cache, loading

    source = tmp_path / "model.gguf"
    source.write_bytes(b"GGUF" + bytes(60))
    entry = disk_cache.cached_model_dir(loading._gguf_cache_key(source))
    shutil.copytree(model_folder, entry)
    (entry / "model.safetensors").write_bytes(b"\x00" * 40)
    line = refused(["inspect", "hi", "--model", source, "--out", tmp_path / "out"], "unreadable", entry)
    assert "delete that folder" in line


def test_load_errors_for_missing_paths_are_mechscope_errors_naming_the_path(tmp_path):
    with pytest.raises(errors.MissingFileError, match="nothere.gguf"):
        mechscope.load(tmp_path / "nothere.gguf")
    (tmp_path / "no-config").mkdir()
    with pytest.raises(errors.MissingFileError, match="no-config.*config.json"):
        mechscope.load(tmp_path / "no-config")
    with pytest.raises(errors.MissingFileError, match="model folder not found"):
        mechscope.load(tmp_path / "no" / "such" / "folder")
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(errors.FileFormatError, match="is a file"):
        mechscope.load(tmp_path / "weights.bin")
    with pytest.raises(errors.ConfigError, match="empty"):
        mechscope.load("")


def test_missing_or_corrupt_dictionary_is_one_line_before_the_model_loads(tmp_path, dictionary, loads):
    refused(["sae", "eval", "--sae", tmp_path / "nope"], "does not exist", tmp_path / "nope")
    broken = tmp_path / "broken-sae"
    shutil.copytree(dictionary, broken)
    (broken / "sae_weights.safetensors").write_bytes(b"junk")
    refused(["sae", "eval", "--sae", broken], broken)
    assert loads == []


def test_missing_direction_files_are_one_line_before_the_model_loads(tmp_path, loads):
    refused(["steer", "--direction", tmp_path / "dir", "hi"], "missing", "dir.safetensors")
    assert loads == []


# ------------------------------------------------------------------ option values, before the load
@pytest.mark.parametrize("args, needle", [
    (["sae", "train", "--hook", "blocks.1.hook_resid"], "blocks.1.hook_resid_post"),
    (["sae", "train", "--hook", "resid_post"], "not a hook name"),
    (["probe", "--hook", "resid_sideways"], "resid_post"),
])
def test_wrong_hook_name_is_one_line_before_the_model_loads(tmp_path, loads, args, needle):
    refused([*args, "--out", tmp_path / "out"], "--hook", needle)
    assert loads == [] and not (tmp_path / "out").exists()


@pytest.mark.parametrize("args, needle", [
    (["patch", "--sites", "bogus"], "resid_pre, resid_mid"),
    (["patch", "--metric", "bogus"], "logit_diff, prob"),
    (["patch", "--mode", "sideways"], "denoise, noise"),
    (["patch", "--atp", "--metric", "kl"], "gradient"),
    (["patch", "--task", "sentiment"], "unknown task"),
    (["circuit", "--ablation", "bogus"], "patch, mean, zero"),
    (["circuit", "--selection", "bogus"], "top_n"),
    (["circuit", "--method", "eap", "--metric", "kl"], "gradient"),
    (["circuit", "--method", "acdc"], "threshold"),
    (["trace", "-p", "the cat sat", "-s", "cat", "--kinds", "resid,bogus"], "resid, attn, mlp"),
    (["trace", "-p", "the cat sat", "-s", "dog"], "does not occur"),
    (["sae", "train", "--hook", "blocks.1.hook_resid_post", "--arch", "bogus"], "relu, topk"),
    (["sae", "train", "--hook", "blocks.1.hook_resid_post", "--k", "64", "--d-sae", "32"], "k must be at most 32"),
    (["probe", "--layers", "one"], "layers must look like"),
    (["probe", "--dataset", "imdb"], "sentiment, facts"),
    (["steer", "--contrast", "joy", "--layer", "1", "hi"], "sentiment, refusal"),
    (["steer", "--contrast", "sentiment", "--layer", "1", "--positions", "middle", "hi"], "all, prompt, generated"),
    (["inspect", ""], "prompt must not be empty"),
    (["inspect", "hi", "--model", ""], "must not be empty"),
    (["refusal", "--n-train", "300"], "ask for fewer"),
])
def test_bad_option_values_are_one_line_before_the_model_loads(tmp_path, loads, args, needle):
    out = ["--out", tmp_path / "out"] if args[0] in ("patch", "circuit", "trace", "sae", "probe", "refusal",
                                                      "inspect") else []
    refused([*args, *out], needle)
    assert loads == [] and not (tmp_path / "out").exists()


@pytest.mark.parametrize("args, needle", [
    (["sae", "train", "--hook", "blocks.1.hook_resid_post", "--tokens", "0"], "--tokens"),
    (["sae", "train", "--hook", "blocks.1.hook_resid_post", "--tokens", "-5k"], "--tokens"),
    (["sae", "train", "--hook", "blocks.1.hook_resid_post", "--tokens", "nan"], "--tokens"),
    (["sae", "train", "--hook", "blocks.1.hook_resid_post", "--tokens", "1e30"], "at most"),
    (["sae", "train", "--hook", "blocks.1.hook_resid_post", "--batch-size", "0"], "--batch-size"),
    (["sae", "train", "--hook", "blocks.1.hook_resid_post", "--harvest-contexts", "0"], "--harvest-contexts"),
    (["sae", "train", "--hook", "blocks.1.hook_resid_post", "--lr", "inf"], "finite"),
    (["sae", "train", "--hook", "blocks.1.hook_resid_post", "--lr", "0"], "greater than 0"),
    (["patch", "--n", "0"], "--n"),
    (["patch", "--n", "100000000"], "--n"),
    (["patch", "--seed", "-1"], "--seed"),
    (["circuit", "--method", "acdc", "--threshold", "nan"], "finite"),
    (["circuit", "--steps", "0"], "--steps"),
    (["trace", "-p", "the cat", "-s", "cat", "--samples", "0"], "--samples"),
    (["refusal", "--kl-bound", "nan"], "--kl-bound"),
    (["refusal", "--max-new-tokens", "0"], "--max-new-tokens"),
    (["steer", "--contrast", "sentiment", "--layer", "1", "--alpha", "nan", "hi"], "alpha must be finite"),
    (["steer", "--contrast", "sentiment", "--layer", "-1", "hi"], "--layer"),
])
def test_bad_counts_and_non_finite_numbers_are_refused_at_parse_time(tmp_path, loads, args, needle):
    out = ["--out", tmp_path / "out"] if args[0] not in ("steer",) else []
    refused([*args, *out], needle)
    assert loads == [] and not (tmp_path / "out").exists()


def test_token_counts_are_parsed_and_bounded():
    from mechscope import checks

    assert checks.parse_count("500k") == 500_000 and checks.parse_count("2M") == 2_000_000
    for text in ("0", "-5k", "nan", "inf", "0.0001k", "lots"):
        with pytest.raises(errors.MechscopeError):
            checks.parse_count(text)


def test_latent_ranges_are_bounded_by_the_dictionary_before_the_model_loads(tmp_path, dictionary, loads):
    refused(["sae", "dashboard", "--sae", dictionary, "--latents", "0-100000000", "--out", tmp_path / "out"],
            "latents")
    refused(["sae", "dashboard", "--sae", dictionary, "--latents", "30-40", "--out", tmp_path / "out"],
            "out of range", "32 latents")
    refused(["sae", "dashboard", "--sae", dictionary, "--latents", "9-3", "--out", tmp_path / "out"], "backwards")
    assert loads == [] and not (tmp_path / "out").exists()


# ------------------------------------------------------------------ output folders
def test_out_that_is_a_file_is_refused_before_the_model_loads(tmp_path, loads):
    target = tmp_path / "a-file"
    target.write_text("keep me")
    refused(["patch", "--task", "induction", "--out", target], "is an existing file", target)
    refused(["patch", "--task", "induction", "--out", target / "sub"], "lies under", target)
    assert loads == [] and target.read_text() == "keep me"


def test_read_only_out_is_refused_before_the_model_loads(tmp_path, loads, monkeypatch):
    from mechscope import files

    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    if hasattr(os, "geteuid") and os.geteuid() == 0:  # root writes anyway: let access() say what a user sees
        real = os.access
        monkeypatch.setattr(files.os, "access",
                            lambda path, mode: not (Path(path) == locked and mode & os.W_OK) and real(path, mode))
    try:
        refused(["patch", "--task", "induction", "--out", locked], "not writable", locked)
    finally:
        locked.chmod(0o700)
    assert loads == [] and list(locked.iterdir()) == []


def test_out_holding_another_kind_of_run_is_refused(tmp_path, loads):
    folder = prepare_output_folder(tmp_path / "run", "inspect", ["report.html"])
    folder.record()
    refused(["patch", "--task", "induction", "--out", tmp_path / "run", "--overwrite"], "mechscope inspect")
    refused(["patch", "--task", "induction", "--out", tmp_path / "run"], "mechscope inspect")
    assert loads == []


def test_out_holding_other_files_is_refused_unless_overwrite(tmp_path, loads):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    refused(["patch", "--task", "induction", "--out", tmp_path / "mine"], "not empty", "notes.txt", "--overwrite")
    assert loads == []


def test_a_second_run_of_the_same_kind_is_refused_unless_overwrite(tmp_path, model_folder):
    out = tmp_path / "trace"
    first = ["trace", "-p", "the cat sat on", "-s", "cat", "--samples", "1", "--model", model_folder, "--out", out]
    result = runner.invoke(app, [str(arg) for arg in [*first, "--kinds", "resid,mlp"]])
    assert result.exit_code == 0, result.output
    assert json.loads((out / MARKER).read_text())["kind"] == "trace"
    refused([*first, "--kinds", "resid"], "already holds", "trace-resid.json", "--overwrite")
    again = runner.invoke(app, [str(arg) for arg in [*first, "--kinds", "resid", "--overwrite"]])
    assert again.exit_code == 0, again.output
    assert "trace-mlp.json" in again.output  # said what it removed
    # the earlier run's mlp trace is gone, so the folder holds one run's results only
    assert (out / "trace-resid.json").exists() and not (out / "trace-mlp.json").exists()
    assert not list(out.glob("*.tmp")) and not list(out.glob(".staging-*"))


def test_sae_train_resumes_only_with_the_same_options(tmp_path, loads):
    folder = prepare_output_folder(tmp_path / "sae", "sae train", ["store", "sae"], resumable=["store"],
                                   options={"hook": "blocks.0.hook_resid_post", "d_sae": 64})
    (tmp_path / "sae" / "store").mkdir()
    folder.record()
    refused(["sae", "train", "--hook", "blocks.1.hook_resid_post", "--out", tmp_path / "sae"],
            "other options", "blocks.0.hook_resid_post", "--overwrite")
    assert loads == [] and (tmp_path / "sae" / "store").is_dir()
    resumed = prepare_output_folder(tmp_path / "sae", "sae train", ["store", "sae"], resumable=["store"],
                                    options={"hook": "blocks.0.hook_resid_post", "d_sae": 64})
    assert resumed.resumed and resumed.reused == ["store"] and "resuming" in resumed.describe()


# ------------------------------------------------------------------ atomic writes
def test_html_is_written_from_a_string_not_by_write_html(tmp_path, model_folder, monkeypatch):
    import plotly.graph_objects as go

    def write_html(*args, **kwargs):
        raise AssertionError("write_html writes in place; the CLI writes HTML atomically")

    monkeypatch.setattr(go.Figure, "write_html", write_html)
    out = tmp_path / "patch"
    result = runner.invoke(app, ["patch", "--task", "induction", "--n", "2", "--model", str(model_folder),
                                 "--out", str(out)])
    assert result.exit_code == 0, result.output
    html = (out / "heatmap.html").read_text()
    assert html.rstrip().endswith("</html>") and "plotly.js v" in html and not list(out.glob("*.tmp"))


def test_atomic_file_leaves_nothing_behind_when_the_write_fails(tmp_path):
    from mechscope.files import atomic_file, atomic_text

    atomic_text(tmp_path / "a.json", "old")

    def broken(path):
        path.write_text("half")
        raise ZeroDivisionError

    with pytest.raises(ZeroDivisionError):
        atomic_file(tmp_path / "a.json", broken)
    assert (tmp_path / "a.json").read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]


# ------------------------------------------------------------------ only intended errors are usage errors
def test_a_real_bug_keeps_its_traceback(tmp_path, model_folder, monkeypatch):
    from mechscope.patching import runs

    def bug(*args, **kwargs):
        raise ZeroDivisionError("a real bug")

    monkeypatch.setattr(runs, "activation_patch", bug)
    result = runner.invoke(app, ["patch", "--task", "induction", "--n", "2", "--model", str(model_folder),
                                 "--out", str(tmp_path / "out")])
    assert result.exit_code == 1 and isinstance(result.exception, ZeroDivisionError)
    assert "error:" not in result.output


def test_a_plain_value_error_is_a_bug_too_not_a_usage_message(tmp_path, model_folder, monkeypatch):
    from mechscope.patching import runs

    monkeypatch.setattr(runs, "activation_patch", lambda *a, **k: int("not a number"))
    result = runner.invoke(app, ["patch", "--task", "induction", "--n", "2", "--model", str(model_folder),
                                 "--out", str(tmp_path / "out")])
    assert result.exit_code == 1 and type(result.exception) is ValueError


def test_an_intended_error_inside_a_run_is_one_line(tmp_path, model_folder, monkeypatch):
    from mechscope.patching import runs

    def refuse(*args, **kwargs):
        raise errors.ConfigError("this model cannot do that\n(second line)")

    monkeypatch.setattr(runs, "activation_patch", refuse)
    refused(["patch", "--task", "induction", "--n", "2", "--model", model_folder, "--out", tmp_path / "out"],
            "this model cannot do that (second line)", alone=False)


def test_the_app_lives_in_cli_app_and_nothing_imports_cli_main():
    from mechscope.cli import app as app_module

    assert app is app_module.app
    importers = [path.name for path in (SRC / "cli").glob("*.py") if path.name != "main.py"
                 and "cli.main" in path.read_text()]
    assert importers == []


def test_a_plain_typer_sub_app_gets_the_same_error_policy():
    import typer

    from mechscope.cli.core import new_app

    outer, inner = new_app("outer"), typer.Typer()  # e.g. a sub-app written without new_app

    @inner.command()
    def go(count: int = 1) -> None:
        raise errors.ConfigError(f"count {count} is not allowed")

    @inner.command()
    def other() -> None:
        """A second command, so typer keeps the command names."""

    outer.add_typer(inner, name="sub")
    result = runner.invoke(outer, ["sub", "go", "--count", "3"])
    assert result.exit_code == 2 and result.output.strip() == "error: count 3 is not allowed"


def test_an_overwrite_deletes_only_plain_names_inside_the_folder(tmp_path):
    outside = tmp_path / "precious.txt"
    outside.write_text("keep")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / MARKER).write_text(json.dumps({"kind": "patch", "outputs": ["../precious.txt", "result.json"]}))
    (tmp_path / "run" / "result.json").write_text("{}")
    folder = prepare_output_folder(tmp_path / "run", "patch", ["result.json"], overwrite=True)
    assert folder.removed == ["result.json"] and outside.read_text() == "keep"
