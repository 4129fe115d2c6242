"""``mechscope probe``: a layer sweep on a bundled dataset, printed and written to disk; bad options
are refused with the valid choices. Runs on a tiny model saved as a local HF folder."""

import json

import pytest
import typer
from typer.testing import CliRunner

from mechscope.cli.probe import _parse_layers, probe
from mechscope.probes import LinearProbe

runner = CliRunner()
app = typer.Typer()
app.command()(probe)


@app.callback()
def _group() -> None:
    """A throwaway app: with a callback, typer keeps the command's name ("probe") on the line."""


@pytest.fixture
def tiny_folder(tiny_llama_folder):
    return tiny_llama_folder


def test_probe_prints_and_writes_a_sweep(tiny_folder, tmp_path):
    out = tmp_path / "probe"
    result = runner.invoke(app, ["probe", "--dataset", "sentiment", "--layers", "0,2", "--limit", "40",
                                 "--position", "-2", "--model", str(tiny_folder), "--out", str(out)])
    assert result.exit_code == 0, result.output
    saved = json.loads((out / "sweep.json").read_text())
    assert [row["hook_name"] for row in saved["rows"]] == ["blocks.0.hook_resid_post", "blocks.2.hook_resid_post"]
    assert saved["n_train"] == 40 and saved["n_test"] == 40 and saved["chance"] == 0.5
    assert saved["info"]["position"] == -2
    for row in saved["rows"]:
        assert f"{row['test_accuracy']:.3f}" in result.output  # the printed table is the saved one
        assert row["selectivity"] == pytest.approx(row["test_accuracy"] - row["control_accuracy"])
    # Position -2 is the adjective's last letter (byte tokenizer), which differs between most positive
    # and negative adjectives (only "l" and "t" end words of both), so even a random model's probe
    # is well above chance: measured AUROC 0.85 at layer 0.
    assert saved["rows"][0]["test_auroc"] > 0.7
    best = max(saved["rows"], key=lambda row: row["test_accuracy"])
    assert f"best: {best['hook_name']}" in result.output
    probe_file = out / "probes" / "blocks.2.hook_resid_post.safetensors"
    assert LinearProbe.load(probe_file).info["hook_name"] == "blocks.2.hook_resid_post"
    assert "Plotly.newPlot(" in (out / "sweep.html").read_text()


def test_probe_runs_harmful_harmless_without_a_chat_template(tiny_folder):
    result = runner.invoke(app, ["probe", "--dataset", "harmful-harmless", "--kind", "mass_mean", "--layers", "1",
                                 "--hook", "mlp_out", "--limit", "12", "--control", "shuffle",
                                 "--model", str(tiny_folder)])
    assert result.exit_code == 0, result.output
    assert "blocks.1.hook_mlp_out" in result.output and "control: shuffle" in result.output


@pytest.mark.parametrize("args, message", [
    (["--dataset", "imdb"], "sentiment, facts, harmful-harmless"),
    (["--kind", "svm"], "logistic, mass_mean, mass_mean_iid"),
    (["--control", "random"], "word, shuffle"),
    (["--layers", "1-9"], "out of range"),
    (["--layers", "one"], "layers must look like"),
    (["--hook", "resid_sideways"], "resid_post"),
])
def test_bad_options_are_refused_with_the_choices(tiny_folder, args, message):
    # wide enough that rich does not wrap the error message inside its box
    result = runner.invoke(app, ["probe", "--limit", "8", "--model", str(tiny_folder), *args], env={"COLUMNS": "250"})
    assert result.exit_code != 0
    assert message in result.output


def test_layer_parsing():
    assert _parse_layers("all", 4) == [0, 1, 2, 3]
    assert _parse_layers("5-7,1, 6", 10) == [1, 5, 6, 7]
    with pytest.raises(typer.BadParameter, match="0..9"):
        _parse_layers("10", 10)
