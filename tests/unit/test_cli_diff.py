"""``mechscope diff BASE FT``: a planted change to one MLP is ranked first with nothing else
moved, identical models report exact zeros, mismatched models and bad options are one error line
(exit 2) before any work, and the crosscoder part writes its dictionary and dashboards."""

import json
import re

import pytest
import torch
from typer.testing import CliRunner

import mechscope
from mechscope.cli.core import new_app
from mechscope.cli.diff import diff
from mechscope.diff import difference_means
from mechscope.diff.corpus import chat_prompt_tokens, generic_prompts
from mechscope.errors import ConfigError, ResumeError
from mechscope.files import MARKER
from mechscope.hooks import names
from mechscope.models.hooked_model import HookedModel
from mechscope.report.diff_runs import DiffOptions, prepare_diff_folder, run_diff

runner = CliRunner()
PLANTED = "model.layers.1.mlp.down_proj"  # tiny llama has 3 layers; layer 0 stays untouched
FAST = ["--contexts", "4", "--context-length", "16", "--first-positions", "3", "--top-k", "5",
        "--steer-prompts", "2", "--steer-tokens", "4"]


def _app():
    """An app of its own around the command (the real one registers it in cli/app.py); the
    callback keeps it a group, so the error policy of MechscopeGroup applies as in `mechscope`."""
    app = new_app("diff test app")

    @app.callback()
    def _group() -> None:
        """Test group."""

    app.command()(diff)
    return app


APP = _app()


pytestmark = pytest.mark.usefixtures("one_thread")


def planted_ft():
    ft = mechscope.load_tiny("llama")
    with torch.no_grad():
        weight = ft.hf_model.get_submodule(PLANTED).weight
        weight.add_(0.05 * torch.randn(weight.shape, generator=torch.Generator().manual_seed(0)))
    return ft


def _save(model, folder):
    model.hf_model.save_pretrained(folder)
    model.tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("diff-models")
    base = mechscope.load_tiny("llama")
    return {"base": _save(base, root / "base"), "copy": _save(base, root / "copy"),
            "ft": _save(planted_ft(), root / "ft"), "gpt2": _save(mechscope.load_tiny("gpt2"), root / "gpt2")}


@pytest.fixture(scope="module")
def dictionary(tmp_path_factory):
    from mechscope.sae import SAE, SAEConfig, save_sae

    folder = tmp_path_factory.mktemp("sae") / "sae"
    save_sae(SAE(SAEConfig(64, 32, "topk", k=4, hook_name=names.resid_post(1))), folder)
    return folder


def invoke(*args):
    return runner.invoke(APP, ["diff", *map(str, args)])


def error_line(result) -> str:
    lines = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    return lines[0]


def test_a_planted_mlp_change_is_ranked_first_and_nothing_else_moved(folders, dictionary, tmp_path):
    out = tmp_path / "diff"
    result = invoke(folders["base"], folders["ft"], "--out", out, "--sae", dictionary, *FAST)
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "diff.json").read_text())
    modules = summary["weights"]["modules"]
    assert modules[0]["name"] == PLANTED and modules[0]["relative"] > 0.1
    assert all(m["delta_norm"] == 0 for m in modules[1:])  # exactly: every other weight was copied
    assert [p["name"] for p in summary["weights"]["parameters"] if p["delta_norm"] > 0] == [PLANTED + ".weight"]
    assert summary["weights"]["embedding_rows"] == [] and summary["weights"]["unembedding_rows"] == []
    base, ft = summary["models"]["base"], summary["models"]["ft"]
    assert base["given"] == str(folders["base"]) and base["model_sha256"] != ft["model_sha256"]
    assert not summary["models"]["same_weights"]
    # The difference lens: nothing before the changed layer, something from it on; 3 first positions + rest.
    norms = summary["difference_lens"]["relative_norm"]
    assert summary["difference_lens"]["groups"] == ["pos 0", "pos 1", "pos 2", "rest"]
    assert all(value == 0 for value in norms[0]) and all(value > 0 for value in norms[1] + norms[2])
    readings = summary["difference_lens"]["layers"][1]["readings"]
    assert len(readings) == 4 and len(readings[-1]["logit_lens"]) == 5 and len(readings[-1]["embed_cosine"]) == 5
    steering = summary["steering"]
    assert steering["layer"] in (1, 2) and steering["hook"] == names.resid_post(steering["layer"])
    assert len(steering["samples"]) == 2 and all(set(s) == {"prompt", "unsteered", "steered"}
                                                 for s in steering["samples"])
    kl = summary["token_kl"]
    assert kl["mean"] > 0 and kl["n_tokens"] == 4 * 16 and len(kl["top"]) == 5
    assert kl["top"][0]["kl"] >= kl["top"][-1]["kl"] and kl["top"][0]["context"]
    assert summary["sae"]["hook_name"] == names.resid_post(1) and len(summary["sae"]["top"]) == 5
    assert summary["crosscoder"] == {"skipped": "crosscoder_steps is 0"}
    assert "no chat prompts" in summary["chat_lens"]["skipped"]
    page = (out / "report.html").read_text()
    assert PLANTED in page and "Per-token KL" in page and "SAE diff" in page
    # Tokens and texts are escaped: the byte tokenizer's specials never appear as raw tags.
    text = re.sub(r"<script.*?</script>", "", page, flags=re.S)
    assert not any(tag in text for tag in ("<bos>", "<eos>", "<pad>")) and "&lt;bos&gt;" in text
    figures = summary["files"]["figures"]
    assert page.count("Plotly.newPlot(") == len(figures) == 6 and page.count("plotly.js v") == 1
    assert all((out / name).is_file() for name in figures)
    assert json.loads((out / MARKER).read_text())["complete"]


def test_identical_models_report_exact_zeros(folders, tmp_path):
    out = tmp_path / "same"
    result = invoke(folders["base"], folders["copy"], "--out", out, *FAST)
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "diff.json").read_text())
    assert summary["models"]["same_weights"]
    assert summary["weights"]["total"]["delta_norm"] == 0
    assert all(m["relative"] in (0, None) and m["delta_norm"] == 0 for m in summary["weights"]["modules"])
    assert summary["token_kl"]["mean"] == 0.0  # exactly: the two runs are the same computation
    assert all(value == 0.0 for text in summary["token_kl"]["texts"] for value in text["kl"])
    assert all(value == 0 for row in summary["difference_lens"]["relative_norm"] for value in row)
    assert "nothing to steer with" in summary["steering"]["skipped"]
    page = (out / "report.html").read_text()
    assert "same weights" in page and "No module changed" in page and "(no difference)" in page


def test_mismatched_models_fail_before_any_result_is_written(folders, tmp_path):
    out = tmp_path / "mismatch"
    line = error_line(invoke(folders["base"], folders["gpt2"], "--out", out, *FAST))
    assert "cannot diff" in line and "architectures differ" in line
    assert not (out / "diff.json").exists() and not (out / "report.html").exists()
    assert not (out / "figures").exists()


@pytest.fixture
def no_loads(monkeypatch):
    """Every model load fails the test: the refusals below must come first."""
    from mechscope.models import loading

    def refuse(*args, **kwargs):
        raise AssertionError(f"a model was loaded: {args}")

    monkeypatch.setattr(loading, "load", refuse)


@pytest.mark.parametrize("bad, needle", [
    (["--contexts", "0"], "--contexts"),
    (["--steer-strength", "nan"], "finite"),
    (["--steer-strength", "inf"], "finite"),
    (["--first-positions", "16"], "first_positions"),  # nothing would be left for the 'rest' group
    (["--crosscoder-layer", "1"], "crosscoder_steps"),  # a layer without a crosscoder
    (["--crosscoder-steps", "5", "--crosscoder-width", "8", "--crosscoder-k", "9"], "crosscoder_k"),
    (["--steer-prompts", "100000"], "steer_prompts"),
    (["--crosscoder-steps", "5", "--crosscoder-delta-scale", "0.5"], "--crosscoder-delta-scale"),  # would shrink it
    (["--crosscoder-steps", "5", "--crosscoder-delta-scale", "nan"], "--crosscoder-delta-scale"),
    (["--crosscoder-steps", "5", "--crosscoder-width", "32", "--crosscoder-k", "4", "--crosscoder-ft-exclusive", "29"],
     "crosscoder_ft_exclusive"),  # 29 designated latents would leave 3 for a budget of 4
    (["--crosscoder-ft-exclusive", "4"], "crosscoder_steps"),  # designated latents without a crosscoder
])
def test_bad_options_are_refused_before_any_model_loads(folders, tmp_path, no_loads, bad, needle):
    out = tmp_path / "bad"
    line = error_line(invoke(folders["base"], folders["ft"], "--out", out, *FAST, *bad))
    assert needle in line and not out.exists()


def test_a_missing_sae_folder_and_an_empty_model_name_are_refused_before_loading(folders, tmp_path, no_loads):
    assert "does not exist" in error_line(invoke(folders["base"], folders["ft"], "--out", tmp_path / "o",
                                                 "--sae", tmp_path / "no-sae"))
    assert "must not be empty" in error_line(invoke("", folders["ft"], "--out", tmp_path / "o"))
    assert not (tmp_path / "o").exists()


def test_a_chat_model_adds_the_fine_tunes_replies_to_the_crosscoder_corpus(tmp_path):
    base = mechscope.load_tiny("llama", chat=True)
    ft = HookedModel(planted_ft().hf_model, base.tokenizer, name="planted")
    options = DiffOptions("tiny-llama", "planted", contexts=3, context_length=12, first_positions=2, top_k=4,
                          steer_prompts=0, crosscoder_steps=4, crosscoder_width=16, crosscoder_k=2,
                          crosscoder_contexts=4, crosscoder_batch_size=16, chat_prompts=6)
    result = run_diff(base, ft, prepare_diff_folder(tmp_path / "run", options), options, progress=False)
    crosscoder = result.crosscoder
    # the chat lens reads the 6 prompts at their last 3 positions (the assistant's header)
    chat = json.loads((tmp_path / "run" / "diff.json").read_text())["chat_lens"]
    assert chat["prompts"] == 6 and chat["groups"] == [-1, -2, -3] and len(chat["layers"]) == base.cfg.n_layers
    tokens, mask = chat_prompt_tokens(base, generic_prompts(6))
    last = int(mask[0].sum()) - 1
    hook = names.resid_post(2)
    one = ft.run_with_cache(tokens[:1, :last + 1], names=[hook])[1][hook][0, -1] \
        - base.run_with_cache(tokens[:1, :last + 1], names=[hook])[1][hook][0, -1]
    others = difference_means(base, ft, tokens[1:], first_positions=0, attention_mask=mask[1:], last_positions=1,
                              progress=False).vector(2, -1)
    torch.testing.assert_close(result.chat_means.vector(2, -1), (one.float() + 5 * others) / 6, atol=1e-5, rtol=1e-4)
    assert "where the reply starts" in (tmp_path / "run" / "report.html").read_text()
    # 4 neutral contexts, then those packed from 6 plain and 6 amplified transcripts.
    assert crosscoder["chat_prompts"] == 6 and crosscoder["harvested_contexts"] > 4
    assert crosscoder["harvested_tokens"] == crosscoder["harvested_contexts"] * 11
    with pytest.raises(ConfigError, match="needs a chat template"):
        DiffOptions(crosscoder_steps=4, chat_prompts=6).check_models(mechscope.load_tiny("llama"))


def test_run_diff_with_a_crosscoder_writes_it_and_its_dashboards_and_resumes(tmp_path):
    base, ft = mechscope.load_tiny("llama"), planted_ft()
    options = DiffOptions("tiny-llama", "planted", contexts=3, context_length=12, first_positions=2, top_k=4,
                          steer_prompts=0, crosscoder_steps=6, crosscoder_width=32, crosscoder_k=4,
                          crosscoder_contexts=4, crosscoder_batch_size=16)
    folder = prepare_diff_folder(tmp_path / "run", options)
    result = run_diff(base, ft, folder, options, progress=False)
    crosscoder = result.crosscoder
    assert crosscoder["layer"] == 1 and crosscoder["hook"] == names.resid_post(1)  # the middle of 3 layers
    assert sum(crosscoder["counts"].values()) == 32 and crosscoder["harvested_tokens"] == 4 * 11
    assert crosscoder["config"]["delta_scale"] == DiffOptions().crosscoder_delta_scale == 10.0  # the change magnified
    assert crosscoder["config"]["ft_exclusive"] == 1 and crosscoder["classes"]["exclusive"] == [31]  # 1/32 of 32
    run = tmp_path / "run"
    for name in ("crosscoder/crosscoder.json", "crosscoder/dictionary/sae_weights.safetensors",
                 "crosscoder/dictionary/cfg.json", "crosscoder-dashboards/index.html",
                 "crosscoder-dashboards/feature_0000.html", "activations/base", "activations/ft"):
        assert (run / name).exists(), name
    assert any((run / "crosscoder-checkpoints").iterdir())
    shown = crosscoder["dashboards"]["latents"]
    assert 1 <= len(shown) <= 10 and all((run / d["page"]).is_file() for d in shown)
    summary = json.loads((run / "diff.json").read_text())
    assert summary["crosscoder"]["counts"] == crosscoder["counts"] and summary["steering"]["skipped"]
    assert "crosscoder-dashboards/index.html" in (run / "report.html").read_text()
    from mechscope.diff import load_crosscoder

    assert load_crosscoder(run / "crosscoder").config.hook_names == (names.resid_post(1),)
    # Same options: the harvest and checkpoints are kept for a resume; other options are refused.
    again = prepare_diff_folder(run, options)
    assert again.resumed and set(again.reused) == {"activations", "crosscoder-checkpoints"}
    with pytest.raises(ResumeError, match="crosscoder_steps"):
        prepare_diff_folder(run, DiffOptions(**{**options.__dict__, "crosscoder_steps": 7}))
