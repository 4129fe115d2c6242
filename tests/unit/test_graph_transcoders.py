"""Transcoders for every layer from one pass: each layer's transcoder, trained alongside the
others from {hook: rows} batches, is exactly the one a run of that layer alone gives (the batch
routes each layer its own hooks); the set's evaluation is checked on known answers (decoders at
zero: the spliced model is the MLP-zeroed one, CE recovered 0; per-layer FVU equals the
single-dictionary evaluation's); the CLI trains, saves, scores, resumes and refuses."""

import json

import pytest
import torch
from typer.testing import CliRunner

import mechscope
from mechscope.cli.app import app
from mechscope.data import ModelActivations
from mechscope.errors import ConfigError
from mechscope.graphs import mlp_input, mlp_output
from mechscope.graphs.export import load_transcoders
from mechscope.graphs.transcoders import TranscoderSetConfig, evaluate_transcoders, train_transcoders
from mechscope.sae import TrainConfig, evaluate_sae, train
from tests.unit.test_cli import saved_tiny

runner = CliRunner()
SETTINGS = TrainConfig(steps=150, lr=3e-3, warmup_steps=2)


@pytest.fixture(scope="module")
def trained():
    model = mechscope.load_tiny("llama")
    contexts = torch.randint(1, model.cfg.d_vocab, (512, 16), generator=torch.Generator().manual_seed(0))
    config = TranscoderSetConfig(d_sae=48, k=6, skip_connection=True)
    return model, contexts, config, train_transcoders(model, contexts, config, SETTINGS, batch_contexts=8,
                                                      progress=False)


@pytest.mark.parametrize("layer", [0, 2])
def test_each_layer_trained_in_the_shared_pass_equals_its_run_alone(trained, layer):
    model, contexts, config, transcoders = trained
    alone_data = ModelActivations(model, contexts, mlp_input(layer), batch_contexts=8, seed=0,
                                  target_hook=mlp_output(layer))
    # In the shared run, layer l's dictionary is the l-th and so is seeded with seed + l.
    (alone,) = train(config.layer_config(model, layer), alone_data,
                     TrainConfig(steps=150, lr=3e-3, warmup_steps=2, seed=layer), progress=False)
    for name, value in alone.state_dict().items():
        assert torch.allclose(transcoders[layer].state_dict()[name], value, atol=1e-6), name


def test_a_batch_without_a_dictionarys_hook_is_refused_naming_the_hooks(trained):
    model, contexts, config, _ = trained
    data = ModelActivations(model, contexts, [mlp_input(0), mlp_output(0)], batch_contexts=8)
    with pytest.raises(ConfigError, match=r"gives the hooks blocks.0.ln2.hook_normalized, blocks.0.hook_mlp_out, but dictionary 0 reads or predicts blocks.1.ln2"):
        train(config.layer_config(model, 1), data, SETTINGS, progress=False)
    with pytest.raises(ConfigError, match="list the target hook among them"):
        ModelActivations(model, contexts, [mlp_input(0)], target_hook=mlp_output(0))


def test_the_sets_evaluation_on_known_answers(trained):
    model, contexts, _, transcoders = trained
    held_out = torch.randint(1, model.cfg.d_vocab, (8, 16), generator=torch.Generator().manual_seed(1))
    scored = evaluate_transcoders(model, transcoders, held_out)
    assert [score.layer for score in scored.layers] == [0, 1, 2]
    assert all(3 < score.l0 <= 6 for score in scored.layers)  # TopK keeps at most k
    for layer in (0, 2):  # the single-dictionary evaluation's FVU, computed its own way
        assert scored.layers[layer].fvu == pytest.approx(evaluate_sae(model, transcoders[layer], held_out).fvu,
                                                         rel=1e-4)
    assert all(score.fvu < 0.93 for score in scored.layers)  # they learned

    silent = {}
    for layer, transcoder in transcoders.items():
        copy = type(transcoder)(transcoder.cfg)
        copy.load_state_dict(transcoder.state_dict())
        with torch.no_grad():
            copy.W_dec.zero_()
            copy.b_dec.zero_()
            copy.W_skip.zero_()
        silent[layer] = copy
    nothing = evaluate_transcoders(model, silent, held_out)
    assert nothing.ce_spliced == pytest.approx(nothing.ce_zero, abs=1e-5)
    assert nothing.ce_recovered == pytest.approx(0, abs=1e-4)
    assert all(score.fvu >= 1 for score in nothing.layers)
    assert nothing.kl > scored.kl and nothing.ce_recovered < scored.ce_recovered  # the learned ones do better


def test_the_cli_trains_saves_scores_resumes_and_refuses(tmp_path):
    tiny, folder = saved_tiny(tmp_path, "llama")
    out = tmp_path / "transcoders"
    args = ["sae", "train-transcoders", "--model", str(folder), "--out", str(out), "--d-sae", "32", "--k", "4",
            "--tokens", "2032", "--batch-contexts", "8", "--contexts", "32"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "every layer spliced" in result.output
    record = json.loads((out / "eval.json").read_text())
    assert len(record["layers"]) == tiny.cfg.n_layers and record["training"]["steps"] == 2
    loaded = load_transcoders(out)  # the run folder itself is accepted
    assert sorted(loaded) == [0, 1, 2] and loaded[1].cfg.hook_name_out == mlp_output(1)
    again = runner.invoke(app, args)  # finished: resumes from the last checkpoint, same weights
    assert again.exit_code == 0, again.output
    assert torch.equal(load_transcoders(out)[2].W_dec, loaded[2].W_dec)
    other = runner.invoke(app, args[:-1] + ["64"])
    assert other.exit_code != 0 and "contexts" in other.output
    too_few = runner.invoke(app, ["sae", "train-transcoders", "--out", str(tmp_path / "x"), "--tokens", "100"])
    assert too_few.exit_code != 0 and "at least one step" in too_few.output


def test_the_cli_places_whole_layers_per_rank_and_refuses_bad_placements(tmp_path):
    """``--placement layers`` (here a world of one: every layer on rank 0) trains each layer in
    its own checkpoint folder and gives the transcoders of the default placement."""
    _, folder = saved_tiny(tmp_path, "llama")
    args = ["sae", "train-transcoders", "--model", str(folder), "--d-sae", "32", "--k", "4", "--tokens", "2032",
            "--batch-contexts", "8", "--contexts", "32"]
    data = runner.invoke(app, [*args, "--out", str(tmp_path / "data")])
    layers = runner.invoke(app, [*args, "--out", str(tmp_path / "layers"), "--placement", "layers"])
    assert data.exit_code == 0 and layers.exit_code == 0, layers.output
    assert sorted(p.name for p in (tmp_path / "layers" / "checkpoints").iterdir()) == [
        "dictionary_000", "dictionary_001", "dictionary_002"]
    assert json.loads((tmp_path / "layers" / "eval.json").read_text())["training"]["placement"] == "layers"
    by_layer, by_data = load_transcoders(tmp_path / "layers"), load_transcoders(tmp_path / "data")
    assert all(float((by_layer[layer].W_dec - by_data[layer].W_dec).abs().max()) < 1e-6 for layer in range(3))
    bad = runner.invoke(app, [*args, "--out", str(tmp_path / "bad"), "--placement", "heads"])
    assert bad.exit_code != 0 and "data, layers" in bad.output
    window = runner.invoke(app, [*args, "--out", str(tmp_path / "w"), "--placement", "layers", "--window", "2"])
    assert window.exit_code != 0 and "use --window 1" in " ".join(window.output.split())
