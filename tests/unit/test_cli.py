"""The command line: inspect writes a report and a summary whose numbers add up; models lists."""

import json

from typer.testing import CliRunner

import mechscope
from mechscope.cli.main import app

runner = CliRunner()


def saved_tiny(tmp_path, family):
    """A tiny model saved as a local HF folder, so the CLI's --model can load it."""
    tiny = mechscope.load_tiny(family)
    folder = tmp_path / f"tiny-{family}"
    tiny.hf_model.save_pretrained(folder)
    tiny.tokenizer.save_pretrained(folder)
    return tiny, folder


def test_inspect_writes_report_and_consistent_summary(tmp_path):
    tiny, folder = saved_tiny(tmp_path, "gpt2")
    out = tmp_path / "report"
    result = runner.invoke(app, ["inspect", "hello there, hello", "--model", str(folder), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "logit lens" in result.output and "top heads" in result.output
    html = (out / "report.html").read_text()
    assert html.count("Plotly.newPlot(") == 4  # lens, DLA by layer, DLA by head, head scores
    assert html.count("plotly.js v") == 1  # the library is embedded once, so the report opens offline
    summary = json.loads((out / "summary.json").read_text())
    dla = summary["dla"]
    assert abs(sum(dla["by_layer"].values()) + dla["bias"] - dla["logit_diff"]) < 1e-4
    assert len(summary["logit_lens"]) == tiny.cfg.n_layers + 1
    assert summary["top_next_tokens"][0]["prob"] >= summary["top_next_tokens"][1]["prob"]
    assert set(summary["head_scores"]) == {"previous_token", "induction", "duplicate_token"}


def test_models_lists_the_bundled_models():
    result = runner.invoke(app, ["models"])
    assert result.exit_code == 0, result.output
    assert "smollm2-135m-instruct" in result.output and "gemma-3-270m" in result.output


def test_bad_model_name_is_a_clear_error():
    result = runner.invoke(app, ["inspect", "hi", "--model", "/no/such/model.gguf"])
    assert result.exit_code != 0
    assert "not found" in str(result.exception)


def test_patch_writes_scores_and_heatmap(tmp_path):
    from mechscope.patching import PatchingResult

    tiny, folder = saved_tiny(tmp_path, "llama")
    out = tmp_path / "patch"
    args = ["patch", "--task", "induction", "--sites", "heads", "--n", "3", "--model", str(folder), "--out", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    saved = PatchingResult.load(out / "result.json")
    assert saved.scores.shape == (tiny.cfg.n_layers, tiny.cfg.n_heads)
    assert "Plotly.newPlot(" in (out / "heatmap.html").read_text()
    bad = runner.invoke(app, ["patch", "--task", "sentiment", "--model", str(folder)])
    assert bad.exit_code != 0 and "unknown task" in bad.output


def test_trace_writes_one_result_per_kind(tmp_path):
    from mechscope.patching import PatchingResult

    tiny, folder = saved_tiny(tmp_path, "llama")
    out = tmp_path / "trace"
    result = runner.invoke(app, ["trace", "--prompt", "the cat sat on", "--subject", "cat", "--kinds", "resid,mlp",
                                 "--samples", "2", "--model", str(folder), "--out", str(out)])
    assert result.exit_code == 0, result.output
    for kind in ("resid", "mlp"):
        saved = PatchingResult.load(out / f"trace-{kind}.json")
        assert saved.scores.shape == (tiny.cfg.n_layers, len(tiny.to_str_tokens("the cat sat on")))
        assert (out / f"trace-{kind}.html").exists()
    assert not (out / "trace-attn.json").exists()


def test_circuit_writes_exports_and_faithfulness(tmp_path):
    _, folder = saved_tiny(tmp_path, "llama")
    out = tmp_path / "circuit"
    result = runner.invoke(app, ["circuit", "--task", "induction", "--method", "eap", "--n", "3", "--edges", "10",
                                 "--model", str(folder), "--out", str(out)])
    assert result.exit_code == 0, result.output
    saved = json.loads((out / "circuit.json").read_text())
    summary = json.loads((out / "summary.json").read_text())
    assert 0 < saved["n_edges"] <= 10 and summary["edges"] == saved["n_edges"]
    assert summary["graph_edges"] == saved["graph_edges"] and 0 <= summary["cpr"]
    curve = json.loads((out / "curve.json").read_text())
    assert curve["faithfulness"][-1] == 1.0  # every edge kept: the clean model
    assert (out / "circuit.dot").read_text().startswith("digraph") and "<svg" in (out / "circuit.html").read_text()
    bad = runner.invoke(app, ["circuit", "--method", "acdc", "--task", "induction", "--model", str(folder),
                              "--out", str(out)])
    assert bad.exit_code != 0 and "threshold" in bad.output
    # Under GQA (the tiny llama: 4 query heads, 2 kv heads), per-query-head k/v receivers give a
    # bigger graph, and faithfulness runs on the same expanded model (all edges = the clean run).
    expanded = tmp_path / "circuit-kv"
    result = runner.invoke(app, ["circuit", "--task", "induction", "--method", "eap", "--n", "3", "--edges", "10",
                                 "--kv-per-query-head", "--model", str(folder), "--out", str(expanded)])
    assert result.exit_code == 0, result.output
    summary_kv = json.loads((expanded / "summary.json").read_text())
    assert summary_kv["graph_edges"] > summary["graph_edges"]
    assert json.loads((expanded / "curve.json").read_text())["faithfulness"][-1] == 1.0


def test_sae_train_eval_dashboard(tmp_path):
    _, folder = saved_tiny(tmp_path, "llama")
    out = tmp_path / "sae-run"
    result = runner.invoke(app, ["sae", "train", "--hook", "blocks.1.hook_resid_post", "--d-sae", "64", "--k", "4",
                                 "--tokens", "3k", "--batch-size", "256", "--harvest-contexts", "8",
                                 "--model", str(folder), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert (out / "sae" / "cfg.json").exists() and json.loads((out / "eval.json").read_text())["l0"] <= 4
    evaluated = runner.invoke(app, ["sae", "eval", "--sae", str(out / "sae"), "--contexts", "4", "--model", str(folder)])
    assert evaluated.exit_code == 0 and "ce_recovered" in evaluated.output
    dash = runner.invoke(app, ["sae", "dashboard", "--sae", str(out / "sae"), "--latents", "0-2,9", "--contexts", "4",
                               "--model", str(folder), "--out", str(tmp_path / "dash")])
    assert dash.exit_code == 0, dash.output
    assert len(list((tmp_path / "dash").glob("feature_*.html"))) == 4
    bad = runner.invoke(app, ["sae", "train", "--hook", "blocks.1.hook_resid", "--model", str(folder), "--out", str(out)])
    assert bad.exit_code != 0 and "hook_resid_p" in bad.output


def test_steer_prints_both_generations_and_checks_its_options(tmp_path):
    import torch

    from mechscope.steering import Direction

    _, folder = saved_tiny(tmp_path, "llama")
    direction = Direction.from_vector(torch.arange(64, dtype=torch.float32) - 30, layer=1)
    direction.save(tmp_path / "dir")
    result = runner.invoke(app, ["steer", "--direction", str(tmp_path / "dir.safetensors"), "--alpha", "0.5x",
                                 "--max-new-tokens", "3", "--model", str(folder), "hello"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert f"steered: alpha {0.5 * direction.scale:.3g} at layer 1" in result.output and "unsteered" in result.output
    wide = {"COLUMNS": "250"}  # rich wraps error boxes at the terminal width
    bad = runner.invoke(app, ["steer", "--contrast", "joy", "--layer", "1", "--model", str(folder), "hi"], env=wide)
    assert bad.exit_code != 0 and "sentiment, refusal, caa-refusal, caa-sycophancy" in bad.output
    both = runner.invoke(app, ["steer", "--contrast", "sentiment", "--direction", "x", "--model", str(folder), "hi"],
                         env=wide)
    assert both.exit_code != 0 and "exactly one" in both.output
    alpha = runner.invoke(app, ["steer", "--direction", str(tmp_path / "dir"), "--alpha", "big", "--model", str(folder),
                                "hi"], env=wide)
    assert alpha.exit_code != 0 and "alpha must be a number" in alpha.output


def test_refusal_writes_direction_report_and_generations(tmp_path):
    tiny, folder = saved_tiny(tmp_path, "llama")
    tiny.tokenizer.chat_template = ("{% for m in messages %}[user]{{ m['content'] }}[end]{% endfor %}"
                                    "{% if add_generation_prompt %}[bot]{% endif %}")
    tiny.tokenizer.save_pretrained(folder)
    out = tmp_path / "refusal"
    result = runner.invoke(app, ["refusal", "--n-train", "4", "--n-val", "2", "--n-test", "2", "--max-new-tokens", "3",
                                 "--kl-bound", "100", "--model", str(folder), "--out", str(out)],
                           env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    chosen = report["search"]["chosen"]
    assert f"chosen direction: layer {chosen['layer']}, position {chosen['position']}" in result.output
    assert report["n_harmful_test"] == 2 and len(report["conditions"]) == 5
    assert report["max_logit_gap_orthogonalised_vs_ablation"] < 1e-4
    from mechscope.steering import Direction

    assert Direction.load(out / "direction").layer == chosen["layer"]
