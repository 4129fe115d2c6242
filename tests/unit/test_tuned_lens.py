"""The tuned lens (identity = logit lens, training beats the logit lens, exact save/load, resume
after kill -9, bad files refused, report and CLI) and the copy-suppression head score (a planted
copy-suppression head is found, random heads score about 0)."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

import mechscope
from mechscope.analysis import (
    HeadScores,
    TunedLens,
    TunedLensConfig,
    compare_lenses,
    copy_suppression_scores,
    head_scores,
    logit_lens,
    train_tuned_lens,
    tuned_lens,
)
from mechscope.data import pack, stdlib_docstrings
from mechscope.errors import ConfigError, FileFormatError, MissingFileError, ResumeError

PROMPT = "When Mary and John went to the store, John gave a drink to"


def corpus(model, n=64, length=64):
    """Packed default-corpus contexts (a prefix of the standard-library docstrings, for speed)."""
    return pack(model.tokenizer, stdlib_docstrings(limit=150), length, n_contexts=n)


FAST = TunedLensConfig(steps=60, batch_contexts=8, checkpoint_every=20)


@pytest.fixture(scope="module")
def trained():
    """{family: (model, lens, held-out comparison)} for a RMSNorm and a LayerNorm family."""
    result = {}
    for family in ("llama", "gpt2"):
        model = mechscope.load_tiny(family)
        contexts = corpus(model)
        lens = train_tuned_lens(model, contexts[:48], FAST, progress=False)
        result[family] = (model, lens, compare_lenses(model, lens, contexts[48:]))
    return result


# ----------------------------------------------------------------------------- tuned lens
def test_identity_lens_is_exactly_the_logit_lens(tiny):
    tokens = tiny.to_tokens(["hello there, hello", "a longer prompt, padded less"])
    _, cache = tiny.run_with_cache(tokens)
    identity = TunedLens.for_model(tiny)
    for row in (0, 1):
        plain, tuned = logit_lens(tiny, cache, batch_index=row), tuned_lens(tiny, identity, cache, batch_index=row)
        assert tuned.labels == plain.labels[1:] and tuned.labels[-1] == "final"
        assert torch.equal(tuned.log_probs, plain.log_probs[1:])
        assert tuned.top_tokens == plain.top_tokens[1:]
    comparison = compare_lenses(tiny, identity, corpus(tiny, n=4, length=24))
    assert torch.equal(comparison.tuned_lens_kl, comparison.logit_lens_kl)
    assert float(comparison.logit_lens_kl[-1]) == 0.0  # the last residual is the output itself


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_training_beats_the_logit_lens_on_held_out_contexts(trained, family):
    model, lens, comparison = trained[family]
    n = model.cfg.n_layers
    assert comparison.labels == [f"L{layer}" for layer in range(1, n)] + ["final"]
    for layer in range(n - 1):
        logit, tuned = float(comparison.logit_lens_kl[layer]), float(comparison.tuned_lens_kl[layer])
        assert tuned < 0.85 * logit, (layer, logit, tuned)
    # The last translator reads the output itself: it starts at its optimum and stays there, in
    # effect (KL ~ 0) and in weights (far closer to the identity than the layers that moved).
    assert float(comparison.tuned_lens_kl[-1]) < 1e-4
    distance = lens.identity_distance()
    assert float(distance[-1]) < 0.05 * float(distance[:-1].min())
    training = lens.metadata["training"]
    assert training["config"]["steps"] == FAST.steps and len(training["last_step_kl"]) == n


def test_training_only_some_layers_leaves_the_others_identity(tmp_path):
    model = mechscope.load_tiny("llama")
    config = TunedLensConfig(steps=5, batch_contexts=4, layers=(1,))
    lens = train_tuned_lens(model, corpus(model, n=8), config, tmp_path / "ckpt", progress=False)
    again = train_tuned_lens(model, corpus(model, n=8), config, tmp_path / "ckpt", progress=False)  # resumes
    assert torch.equal(again.weight, lens.weight)
    distance = lens.identity_distance()
    assert float(distance[1]) > 0 and float(distance[0]) == 0.0 and float(distance[2]) == 0.0
    kl = lens.metadata["training"]["last_step_kl"]
    assert kl[0] is None and kl[1] > 0 and kl[2] is None
    with pytest.raises(ConfigError, match="0..2"):
        train_tuned_lens(model, corpus(model, n=8), TunedLensConfig(steps=2, layers=(3,)), progress=False)


def test_save_load_round_trip_is_bit_identical(trained, tmp_path):
    model, lens, _ = trained["llama"]
    tensors_path, meta_path = lens.save(tmp_path / "lens")
    assert tensors_path.suffix == ".safetensors" and meta_path.suffix == ".json"
    assert set(load_file(tensors_path)) == {f"translators.{i}.{p}" for i in range(3) for p in ("weight", "bias")}
    for path in (tmp_path / "lens", tensors_path, meta_path):
        loaded = TunedLens.load(path, model)
        assert torch.equal(loaded.weight, lens.weight) and torch.equal(loaded.bias, lens.bias)
        assert loaded.metadata == json.loads(json.dumps(lens.metadata))
        assert (loaded.model_name, loaded.d_model, loaded.n_layers) == ("tiny-llama", 64, 3)
    assert not list(tmp_path.glob("*.tmp"))
    tokens = model.to_tokens(PROMPT)
    _, cache = model.run_with_cache(tokens)
    assert torch.equal(tuned_lens(model, loaded, cache).log_probs, tuned_lens(model, lens, cache).log_probs)


def _edit(tmp_path, lens, name, tensors=None, meta=None):
    """Save ``lens`` as tmp_path/name and rewrite its tensors / JSON with the given edits."""
    tensors_path, meta_path = lens.save(tmp_path / name)
    if tensors is not None:
        saved = load_file(tensors_path)
        tensors(saved)
        save_file(saved, str(tensors_path))
    if meta is not None:
        info = json.loads(meta_path.read_text())
        meta(info)
        meta_path.write_text(json.dumps(info))
    return tmp_path / name


def test_bad_files_are_refused_with_the_file_and_key(trained, tmp_path):
    model, lens, _ = trained["llama"]
    with pytest.raises(MissingFileError, match="missing: .*nothing.json"):
        TunedLens.load(tmp_path / "nothing")
    path = _edit(tmp_path, lens, "wide", tensors=lambda t: t.update({"translators.1.weight": torch.zeros(64, 65)}))
    with pytest.raises(FileFormatError, match=r"wide.safetensors.*'translators.1.weight' has shape \(64, 65\)"):
        TunedLens.load(path, model)
    path = _edit(tmp_path, lens, "double", tensors=lambda t: t.update({"translators.0.bias": torch.zeros(64).double()}))
    with pytest.raises(FileFormatError, match="'translators.0.bias' has dtype torch.float64"):
        TunedLens.load(path)
    path = _edit(tmp_path, lens, "lacking", tensors=lambda t: t.pop("translators.2.bias"))
    with pytest.raises(FileFormatError, match="lacks key 'translators.2.bias'"):
        TunedLens.load(path)
    path = _edit(tmp_path, lens, "extra", tensors=lambda t: t.update({"pickle": torch.zeros(1)}))
    with pytest.raises(FileFormatError, match="holds key 'pickle'"):
        TunedLens.load(path)
    path = _edit(tmp_path, lens, "nan", tensors=lambda t: t["translators.1.bias"].__setitem__(3, float("nan")))
    with pytest.raises(FileFormatError, match="'translators.1.bias' holds NaN"):
        TunedLens.load(path)
    path = _edit(tmp_path, lens, "deeper", meta=lambda info: info.update(n_layers=4))
    with pytest.raises(ValueError, match="deeper.json was made for n_layers=4"):
        TunedLens.load(path, model)  # against the model: its n_layers differ
    with pytest.raises(FileFormatError, match="lacks key 'translators.3.bias'"):
        TunedLens.load(path)  # on its own: the file holds 3 layers where its JSON says 4
    path = _edit(tmp_path, lens, "narrow", meta=lambda info: info.update(d_model=32))
    with pytest.raises(ValueError, match="d_model=32"):
        TunedLens.load(path, model)
    path = _edit(tmp_path, lens, "format", meta=lambda info: info.update(format="pickle"))
    with pytest.raises(FileFormatError, match="not a mechscope tuned lens"):
        TunedLens.load(path)
    path = _edit(tmp_path, lens, "types", meta=lambda info: info.update(n_layers="3"))
    with pytest.raises(FileFormatError, match="'n_layers' must be a positive integer"):
        TunedLens.load(path)
    truncated = tmp_path / "cut.safetensors"
    lens.save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:100])
    with pytest.raises(FileFormatError, match="cut.safetensors is not a readable safetensors file"):
        TunedLens.load(truncated)
    (tmp_path / "broken.json").write_text("{")
    (tmp_path / "broken.safetensors").write_bytes(b"")
    with pytest.raises(FileFormatError, match="broken.json is not valid JSON"):
        TunedLens.load(tmp_path / "broken")
    # Another model of the same shape: refused by name unless the caller says it is the same one.
    other = mechscope.load_tiny("mistral")
    good = tmp_path / "good"
    lens.save(good)
    with pytest.raises(ValueError, match="trained for model 'tiny-llama', not 'tiny-mistral'"):
        TunedLens.load(good, other)
    assert TunedLens.load(good, other, check_name=False).n_layers == 3


def test_configs_and_inputs_are_checked():
    # Each message names the field, the value and what is valid (the exact wording is validate's).
    for options, words in (({"optimizer": "lbfgs"}, ("optimizer", "lbfgs", "adam", "sgd")),
                           ({"steps": 0}, ("steps", "0", "1")), ({"lr": 0.0}, ("lr", "0")),
                           ({"batch_contexts": 2.5}, ("batch_contexts", "2.5"))):
        with pytest.raises(ConfigError) as info:
            TunedLensConfig(**options)
        assert all(word in str(info.value) for word in words), str(info.value)
    with pytest.raises(ConfigError, match="distinct layer indices"):
        TunedLensConfig(layers=(1, 1))
    assert TunedLensConfig(layers=(2, 0)).layers == (0, 2)
    model = mechscope.load_tiny("llama")
    with pytest.raises(ValueError, match=r"\[n_contexts >= 1, pos >= 2\]"):
        train_tuned_lens(model, torch.zeros(4, dtype=torch.long), FAST, progress=False)
    with pytest.raises(ValueError, match="vocabulary is 0..258"):
        train_tuned_lens(model, torch.full((2, 8), 10_000), FAST, progress=False)
    with pytest.raises(ValueError, match="trained for model"):
        compare_lenses(model, TunedLens.for_model(mechscope.load_tiny("qwen2")), corpus(model, n=2, length=16))


RESUME_SCRIPT = """
import sys, time
import mechscope
from mechscope.analysis.tuned_lens import TunedLensConfig, train_tuned_lens
from mechscope.data import pack, stdlib_docstrings

model = mechscope.load_tiny("llama")
model.hf_model.register_forward_pre_hook(lambda *args: time.sleep(0.03))  # slow enough to kill mid-run
contexts = pack(model.tokenizer, stdlib_docstrings(limit=150), 32, n_contexts=24)
config = TunedLensConfig(steps=80, batch_contexts=4, checkpoint_every=5, seed=3)
train_tuned_lens(model, contexts, config, sys.argv[1], progress=False)
"""


def test_kill_during_training_then_resume_gives_the_uninterrupted_weights(tmp_path):
    folder = tmp_path / "checkpoints"
    process = subprocess.Popen([sys.executable, "-c", RESUME_SCRIPT, str(folder)])
    deadline = time.time() + 120
    while not (folder / "latest").exists() or (folder / "latest").read_text().strip() == "step-4":
        assert time.time() < deadline and process.poll() is None, "training never wrote a second checkpoint"
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    interrupted_at = (folder / "latest").read_text().strip()
    assert interrupted_at != "step-79"

    model = mechscope.load_tiny("llama")
    contexts = pack(model.tokenizer, stdlib_docstrings(limit=150), 32, n_contexts=24)
    config = TunedLensConfig(steps=80, batch_contexts=4, checkpoint_every=5, seed=3)
    resumed = train_tuned_lens(model, contexts, config, folder, progress=False)
    uninterrupted = train_tuned_lens(model, contexts, config, tmp_path / "fresh", progress=False)
    assert torch.equal(resumed.weight, uninterrupted.weight) and torch.equal(resumed.bias, uninterrupted.bias)
    assert resumed.metadata == uninterrupted.metadata
    assert not list(folder.glob(".*.tmp")) and [p.name for p in folder.glob("step-*")] == ["step-79"]
    # A finished run resumes to its result at once; another config or corpus is refused.
    again = train_tuned_lens(model, contexts, config, folder, progress=False)
    assert torch.equal(again.weight, resumed.weight)
    with pytest.raises(ResumeError, match="config.lr differ"):
        train_tuned_lens(model, contexts, TunedLensConfig(steps=80, batch_contexts=4, seed=3, lr=0.01), folder,
                         progress=False)
    with pytest.raises(ResumeError, match="contexts differ"):
        train_tuned_lens(model, contexts[:12], config, folder, progress=False)


def test_inspect_report_adds_the_tuned_lens(trained, tmp_path):
    from mechscope.report import inspect_prompt, write_report

    model, lens, _ = trained["llama"]
    plain = inspect_prompt(model, PROMPT, head_sequences=2)
    assert plain.tuned is None and "tuned_lens" not in plain.to_json()
    result = inspect_prompt(model, PROMPT, head_sequences=2, tuned_lens=lens)
    summary = result.to_json()
    assert [entry["point"] for entry in summary["tuned_lens"]] == ["L1", "L2", "final"]
    kl = summary["lens_kl"]
    assert kl["n_tokens"] == len(model.to_str_tokens(PROMPT)) - 1 and kl["logit_lens_kl"][-1] == 0.0
    assert set(summary["head_scores"]) == {"previous_token", "induction", "duplicate_token"}
    assert len(summary["copy_suppression"]) == 10
    html = write_report(result, tmp_path / "report.html").read_text()
    assert html.count("Plotly.newPlot(") == 6  # + tuned-lens heatmap and the KL comparison
    assert "Tuned lens" in html and "copy suppression" in html


def test_lens_cli_trains_saves_and_compares(tmp_path):
    from mechscope.cli.lens import lens_app

    tiny = mechscope.load_tiny("llama")
    folder = tmp_path / "tiny-llama"
    tiny.hf_model.save_pretrained(folder)
    tiny.tokenizer.save_pretrained(folder)
    out = tmp_path / "lens-run"
    runner = CliRunner()
    result = runner.invoke(lens_app, ["train", "--model", str(folder), "--out", str(out), "--contexts", "8",
                                      "--steps", "3", "--seed", "1", "--held-out", "2"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    lens = TunedLens.load(out / "lens", mechscope.load(str(folder)))
    assert lens.metadata["training"]["config"]["seed"] == 1
    comparison = json.loads((out / "comparison.json").read_text())
    assert comparison["labels"] == ["L1", "L2", "final"] and "tuned lens" in result.output
    again = runner.invoke(lens_app, ["train", "--model", str(folder), "--out", str(out), "--contexts", "8",
                                     "--steps", "3", "--seed", "1", "--held-out", "2"], env={"COLUMNS": "200"})
    assert again.exit_code == 0, again.output  # the same options resume (here: a finished run)
    other = runner.invoke(lens_app, ["train", "--model", str(folder), "--out", str(out), "--steps", "4"])
    assert other.exit_code == 2 and "steps" in other.output  # other options: refused, naming them
    bad = runner.invoke(lens_app, ["train", "--model", str(folder), "--out", str(tmp_path / "x"), "--layers", "x"])
    assert bad.exit_code == 2 and "layers" in bad.output and not (tmp_path / "x").exists()
    deep = runner.invoke(lens_app, ["train", "--model", str(folder), "--out", str(tmp_path / "y"), "--layers", "7",
                                    "--steps", "1", "--contexts", "2", "--held-out", "0"])
    assert deep.exit_code == 2 and "0..2" in deep.output
    from mechscope.cli.app import app

    report = tmp_path / "report"
    shown = runner.invoke(app, ["inspect", "the cat sat on the", "--model", str(folder), "--lens", str(out / "lens"),
                                "--out", str(report)], env={"COLUMNS": "200"})
    assert shown.exit_code == 0, shown.output
    summary = json.loads((report / "summary.json").read_text())
    assert summary["lens_kl"]["labels"] == ["L1", "L2", "final"]
    assert len(summary["lens_kl"]["tuned_lens_kl"]) == 3 and "tuned_lens" in summary
    assert "tuned lens" in shown.output
    missing = runner.invoke(app, ["inspect", "hi", "--model", str(folder), "--lens", str(tmp_path / "nope"),
                                  "--out", str(tmp_path / "r2")])
    assert missing.exit_code == 2 and "nope" in missing.output and not (tmp_path / "r2").exists()


# ----------------------------------------------------------------------------- copy suppression
def plant_ov(model, layer: int, head: int, sign: float = -1.0) -> None:
    """Give head ``head`` of ``layer`` (llama layout) the OV circuit that best maps each token's
    value input (its embedding through ln1) to ``sign`` x its centred unembedding direction,
    within the head's rank d_head: least squares over the vocabulary, truncated by SVD.
    Under GQA the value projection is shared with the other query head of its group; that
    head keeps its own (random) output projection."""
    cfg = model.cfg
    block = model.hf_model.model.layers[layer]
    with torch.no_grad():
        values_in = block.input_layernorm(model.hf_model.model.embed_tokens.weight)  # [vocab, d_model]
        directions = model.unembed_directions(torch.arange(cfg.d_vocab))
        target = sign * (directions - directions.mean(0))
        ov = torch.linalg.lstsq(values_in, target).solution  # [d_model, d_model]
        left, singular, right = torch.linalg.svd(ov)
        rank, root = cfg.d_head, singular[:cfg.d_head].sqrt()
        group = head // (cfg.n_heads // cfg.n_kv_heads)
        block.self_attn.v_proj.weight[group * rank:(group + 1) * rank] = (left[:, :rank] * root).T
        block.self_attn.o_proj.weight[:, head * rank:(head + 1) * rank] = (root[:, None] * right[:rank]).T


@pytest.mark.parametrize("seed", [0, 1])
def test_planted_copy_suppression_head_scores_highest(seed):
    model = mechscope.load_tiny("llama", seed=seed)
    null = head_scores(model).copy_suppression
    plant_ov(model, layer=0, head=2)
    scores = head_scores(model)
    (layer, head, value), (_, _, runner_up) = scores.ranked("copy_suppression", 2)
    assert (layer, head) == (0, 2)
    assert value > 0.5 and value > 3 * runner_up and value > 3 * float(null.abs().max())
    # The other scores are untouched by the score's addition (same pass, same numbers).
    assert scores.get("copy_suppression") is scores.copy_suppression


def test_copying_head_scores_negative_and_a_silent_head_zero():
    model = mechscope.load_tiny("llama")
    plant_ov(model, layer=0, head=1, sign=1.0)  # writes +unembedding: it copies what it attends to
    with torch.no_grad():
        model.hf_model.model.layers[1].self_attn.o_proj.weight[:, 0:16] = 0  # layer 1 head 0 writes nothing
    scores = head_scores(model).copy_suppression
    assert float(scores[0, 1]) < -0.5 and float(scores[0, 1]) == float(scores.min())
    assert float(scores[1, 0]) == 0.0


def test_random_heads_score_near_zero(tiny_models):
    for family, model in tiny_models.items():
        scores = head_scores(model).copy_suppression
        assert scores.shape == (model.cfg.n_layers, model.cfg.n_heads)
        assert float(scores.abs().max()) < 0.3 and float(scores.abs().mean()) < 0.1, family


def test_copy_suppression_on_given_tokens_and_errors():
    model = mechscope.load_tiny("llama")
    plant_ov(model, layer=0, head=2)
    tokens = corpus(model, n=4, length=48)
    scores = copy_suppression_scores(model, tokens)
    assert scores.argmax().item() == 2 and float(scores[0, 2]) > 0.5
    with pytest.raises(ValueError, match="pos >= 3"):
        copy_suppression_scores(model, tokens[:, :2])
    with pytest.raises(ValueError, match="previous_token, induction, duplicate_token, copy_suppression"):
        head_scores(model, n_sequences=1).get("copying")
    partial = HeadScores(torch.zeros(1, 1), torch.zeros(1, 1), torch.zeros(1, 1))
    with pytest.raises(ValueError, match="built without 'copy_suppression'"):
        partial.get("copy_suppression")
