"""``mechscope serve --demo``'s builder on a tiny model: every run registered in the demo's own
store, a second build reuses them all, a step whose folder was left unfinished (a killed build)
is rebuilt alone and registered again, another model or other sizes are refused on that folder;
the CLI refuses contradictory options before building anything."""

import json
import os

import pytest
from typer.testing import CliRunner

import mechscope
from mechscope.cli.app import app
from mechscope.errors import ConfigError
from mechscope.files import MARKER
from mechscope.steering import Direction
from mechscope.store import RunStore
from mechscope.web.demo import DemoConfig, build_demo
from mechscope.web.live import direction_files

SMALL = DemoConfig(task="induction", prompts=3, circuit_edges=10, d_sae=32, k=4, sae_tokens=4096, harvest_contexts=8,
                   explained_latents=4, explain_contexts=8)
KINDS = {"induction-heads": "patch", "induction-circuit": "circuit", "dictionary": "sae train",
         "dictionary-explained": "explain", "dictionary-dashboard": "sae dashboard", "direction": "direction"}


def test_the_demo_builds_once_registers_every_run_and_resumes_a_killed_step(tmp_path):
    model = mechscope.load_tiny("llama")
    store_path = build_demo(model, tmp_path / "demo", SMALL, say=lambda line: None, progress=False)
    with RunStore(store_path) as store:
        runs = {record.name: record for record in store.runs()}
        assert {name: record.kind for name, record in runs.items()} == KINDS
        dashboard = runs["dictionary-dashboard"]
        explained = json.loads((tmp_path / "demo" / "dictionary-explained" / "summary.json").read_text())
        assert 0 < len(explained["units"]) <= SMALL.explained_latents
        assert store.features(dashboard.id)[1] == len(explained["units"])
    assert {u["status"] for u in explained["units"]} <= {"explained", "dead", "unexplained"}
    assert any(u["status"] == "explained" for u in explained["units"])  # latents that fire were chosen
    direction = Direction.load(tmp_path / "demo" / "direction" / "direction")
    assert direction.layer == max(1, model.cfg.n_layers // 3) + 1
    # The playground offers it: the one saved direction (the dictionary's .json files have no partner).
    assert [(record.name, path) for record, _, path in direction_files(store_path)] == [("direction", "direction.json")]
    stamps = {name: os.stat(tmp_path / "demo" / name / MARKER).st_mtime_ns for name in KINDS}
    build_demo(model, tmp_path / "demo", SMALL, say=lambda line: None, progress=False)
    assert {name: os.stat(tmp_path / "demo" / name / MARKER).st_mtime_ns for name in KINDS} == stamps
    # A build killed while writing the circuit leaves its folder unfinished: only that step reruns.
    marker = tmp_path / "demo" / "induction-circuit" / MARKER
    marker.write_text(json.dumps({**json.loads(marker.read_text()), "complete": False}))
    build_demo(model, tmp_path / "demo", SMALL, say=lambda line: None, progress=False)
    after = {name: os.stat(tmp_path / "demo" / name / MARKER).st_mtime_ns for name in KINDS}
    assert [name for name in KINDS if after[name] != stamps[name]] == ["induction-circuit"]
    with RunStore(store_path) as store:
        assert store.count() == len(KINDS)
        rebuilt = next(r for r in store.runs() if r.name == "induction-circuit")
        assert rebuilt.id != runs["induction-circuit"].id  # registered again: its record is the new run's
    with pytest.raises(ConfigError, match="run folder"):
        build_demo(model, tmp_path / "demo" / "direction", SMALL)
    # Another model or other sizes never reuse these runs: the folder says whose demo it holds.
    with pytest.raises(ConfigError, match="built with other config"):
        build_demo(model, tmp_path / "demo", DemoConfig(**{**SMALL.__dict__, "d_sae": 48}), say=lambda line: None)
    with pytest.raises(ConfigError, match="built with other model"):
        build_demo(model, tmp_path / "demo", SMALL, say=lambda line: None, model_name="another-model")
    with pytest.raises(ConfigError, match="must be below"):
        build_demo(model, tmp_path / "other", DemoConfig(**{**SMALL.__dict__, "sae_layer": model.cfg.n_layers - 1}))
    assert not (tmp_path / "other").exists()  # refused before anything was written


def test_bad_demo_settings_are_refused():
    with pytest.raises(ConfigError, match="task"):
        DemoConfig(task="nope")
    with pytest.raises(ConfigError, match="k"):
        DemoConfig(d_sae=8, k=9)


@pytest.mark.parametrize(("args", "words"), [(["--demo", "--no-model"], "contradict"),
                                              (["--demo", "--store", "x.sqlite"], "own store")])
def test_the_cli_refuses_contradictory_demo_options(args, words, tmp_path):
    result = CliRunner().invoke(app, ["serve", *args, "--demo-dir", str(tmp_path / "d")])
    assert result.exit_code == 2 and words in result.output
    assert not (tmp_path / "d").exists()
