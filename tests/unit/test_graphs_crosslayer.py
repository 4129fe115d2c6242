"""Cross-layer transcoders: with its cross decoders at zero a CLT is its per-layer transcoders
(same graph, same evaluation); with them live the replacement model still gives the real logits,
every target is its edges plus a constant, and an edge from an earlier layer's feature includes
its write into the later MLP output (doubling the source moves the target by the edge); saving
and loading round-trip; training lowers the FVU, and a run killed midway resumes to exactly the
weights of an uninterrupted one; what does not fit is refused."""

import pytest
import torch

import mechscope
from mechscope.data.store import ModelActivations
from mechscope.errors import ConfigError, FileFormatError
from mechscope.graphs import ReplacementModel, attribute, replacement_logits
from mechscope.graphs.crosslayer import (
    CrossLayerConfig,
    CrossLayerTranscoder,
    load_crosslayer,
    save_crosslayer,
)
from mechscope.graphs.crosslayer_train import train_crosslayer
from mechscope.graphs.export import load_transcoders
from mechscope.graphs.interventions import check_interventions
from mechscope.graphs.transcoders import evaluate_transcoders
from mechscope.sae import TrainConfig
from tests.unit.test_graphs import assert_complete

PROMPT = "the cat sat on the mat"


def random_clt(model, window=2, d_sae=40, k=5, seed=0, cross_scale=1.0):
    clt = CrossLayerTranscoder(CrossLayerConfig(model.cfg.n_layers, model.cfg.d_model, d_sae, k, window), seed=seed)
    with torch.no_grad():
        for layer in clt.layers:
            layer.W_enc.mul_(3.0)  # enough features fire on a tiny model's small activations
        for decoder in clt.cross_decoders().values():
            decoder.mul_(10 * cross_scale)
    return clt


@pytest.fixture(scope="module")
def model():
    return mechscope.load_tiny("llama")


def test_with_silent_cross_decoders_a_clt_is_its_per_layer_transcoders(model):
    clt = random_clt(model, cross_scale=0.0)
    tokens = model.to_tokens(PROMPT)
    as_clt = attribute(ReplacementModel(model, clt), tokens, batch_size=64, progress=False)
    per_layer = attribute(ReplacementModel(model, clt.layer_dict()), tokens, batch_size=64, progress=False)
    assert as_clt.sources == per_layer.sources and torch.allclose(as_clt.adjacency, per_layer.adjacency, atol=1e-6)
    held_out = torch.randint(1, model.cfg.d_vocab, (4, 12), generator=torch.Generator().manual_seed(0))
    a, b = evaluate_transcoders(model, clt, held_out), evaluate_transcoders(model, clt.layer_dict(), held_out)
    assert a.ce_spliced == pytest.approx(b.ce_spliced, abs=1e-6) and a.layers == b.layers


def test_a_live_clt_graph_is_exact_and_its_cross_edges_are_direct_effects(model):
    clt = random_clt(model)
    replacement = ReplacementModel(model, clt)
    tokens = model.to_tokens(PROMPT)
    with torch.no_grad():
        real = model.hf_model(input_ids=tokens).logits[0].float()
    assert torch.allclose(replacement_logits(replacement, tokens), real, atol=1e-4, rtol=0)
    graph = attribute(replacement, tokens, batch_size=64, progress=False)
    assert_complete(replacement, graph)
    # Layer 0 -> layer 2 at one position: the edge holds the cross write into layer 1's MLP output
    # (D[0 -> 1]) too; the same features with the cross decoders silent give another edge.
    features = graph.sources[:graph.n_features]
    pairs = [(t, s) for t, target in enumerate(features) for s, source in enumerate(features)
             if source.layer == 0 and target.layer == 2 and source.position == target.position]
    target, source = max(pairs, key=lambda pair: abs(float(graph.adjacency[pair])))
    prompt = replacement.freeze(tokens)
    node = features[source]
    leaves = {layer: values.unsqueeze(0).clone() for layer, values in prompt.activations.items()}
    leaves[0][0, node.position, node.feature] *= 2

    def pre_activation(leaves):
        reads = {}
        hooks = replacement.hooks(prompt, leaves) + [
            ("blocks.2.ln2.hook_normalized", lambda a, h: reads.setdefault("x", a))]
        with torch.no_grad(), model.hooks(hooks):
            model.hf_model(input_ids=tokens)
        layer, feature = replacement.transcoders[2], features[target].feature
        with torch.no_grad():
            return float(reads["x"][0, features[target].position] @ layer.W_enc[:, feature] + layer.b_enc[feature])

    base = {layer: values.unsqueeze(0) for layer, values in prompt.activations.items()}
    moved = pre_activation(leaves) - pre_activation(base)
    assert moved == pytest.approx(float(graph.adjacency[target, source]), rel=1e-3, abs=1e-5)
    silent = attribute(ReplacementModel(model, random_clt(model, cross_scale=0.0)), tokens, batch_size=64,
                       progress=False)
    assert not torch.allclose(silent.adjacency[target, source], graph.adjacency[target, source])
    check = check_interventions(replacement, graph, top=10)
    assert len(check.removed) == 10 and check.sign_agreement > 0.5


def test_saving_and_loading_round_trip_and_bad_files_are_refused(model, tmp_path):
    clt = random_clt(model)
    folder = save_crosslayer(clt, tmp_path / "clt")
    loaded = load_transcoders(folder)  # the graph command's loader knows the format
    assert isinstance(loaded, CrossLayerTranscoder) and loaded.cfg == clt.cfg
    for name, value in clt.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name
    (folder / "crosslayer.json").write_text((folder / "crosslayer.json").read_text().replace('"window": 2', '"window": 3'))
    with pytest.raises(FileFormatError, match="does not hold the weights"):
        load_crosslayer(folder)
    other = CrossLayerTranscoder(CrossLayerConfig(model.cfg.n_layers + 1, model.cfg.d_model, 8, 2, 2))
    with pytest.raises(ConfigError, match="was it trained on another model"):
        ReplacementModel(model, other)
    with pytest.raises(ConfigError, match="window"):
        CrossLayerConfig(3, 8, 8, 2, window=4)


def test_training_lowers_the_fvu_and_a_killed_run_resumes_to_the_same_weights(model, tmp_path, monkeypatch):
    contexts = torch.randint(1, model.cfg.d_vocab, (512, 16), generator=torch.Generator().manual_seed(0))
    cfg = CrossLayerConfig(model.cfg.n_layers, model.cfg.d_model, 48, 6, window=2)
    settings = TrainConfig(steps=80, lr=1e-2, warmup_steps=2, checkpoint_every=20)
    whole = train_crosslayer(model, contexts, cfg, settings, batch_contexts=8, progress=False)
    held_out = torch.randint(1, model.cfg.d_vocab, (8, 16), generator=torch.Generator().manual_seed(1))
    untrained = evaluate_transcoders(model, CrossLayerTranscoder(cfg), held_out)
    trained = evaluate_transcoders(model, whole, held_out)
    assert all(after.fvu < 0.9 < 2 < before.fvu for after, before in zip(trained.layers, untrained.layers))

    real_batch = ModelActivations.batch

    def crash_at_50(self, step):
        if step == 50:
            raise KeyboardInterrupt("killed")
        return real_batch(self, step)

    monkeypatch.setattr(ModelActivations, "batch", crash_at_50)
    with pytest.raises(KeyboardInterrupt):
        train_crosslayer(model, contexts, cfg, settings, batch_contexts=8, checkpoint_dir=tmp_path / "ck",
                         progress=False)
    monkeypatch.setattr(ModelActivations, "batch", real_batch)
    resumed = train_crosslayer(model, contexts, cfg, settings, batch_contexts=8, checkpoint_dir=tmp_path / "ck",
                               progress=False)
    for name, value in whole.state_dict().items():
        assert torch.allclose(resumed.state_dict()[name], value, atol=1e-6), name
    with pytest.raises(Exception, match="other settings or data"):
        train_crosslayer(model, contexts, CrossLayerConfig(model.cfg.n_layers, model.cfg.d_model, 48, 6, window=3),
                         settings, batch_contexts=8, checkpoint_dir=tmp_path / "ck", progress=False)


def test_the_cli_trains_a_cross_layer_transcoder_that_the_graph_command_reads(tmp_path):
    import json

    from typer.testing import CliRunner

    from mechscope.cli.app import app
    from tests.unit.test_cli import saved_tiny

    runner = CliRunner()
    tiny, folder = saved_tiny(tmp_path, "llama")
    out = tmp_path / "clt"
    result = runner.invoke(app, ["sae", "train-transcoders", "--model", str(folder), "--out", str(out), "--d-sae", "32",
                                 "--k", "4", "--tokens", "2032", "--batch-contexts", "8", "--contexts", "32",
                                 "--window", "2"])
    assert result.exit_code == 0, result.output
    record = json.loads((out / "eval.json").read_text())
    assert record["training"]["kind"] == "cross-layer" and record["training"]["window"] == 2
    assert isinstance(load_transcoders(out), CrossLayerTranscoder)
    graph = runner.invoke(app, ["graph", PROMPT, "--transcoders", str(out), "--model", str(folder), "--out",
                                str(tmp_path / "graph")])
    assert graph.exit_code == 0, graph.output
    wide = runner.invoke(app, ["sae", "train-transcoders", "--model", str(folder), "--out", str(tmp_path / "w"),
                               "--tokens", "2032", "--batch-contexts", "8", "--contexts", "32", "--window", "9"])
    assert wide.exit_code != 0 and "more than the model's 3 layers" in wide.output
    jump = runner.invoke(app, ["sae", "train-transcoders", "--out", str(tmp_path / "j"), "--window", "2", "--arch",
                               "jumprelu"])
    assert jump.exit_code != 0 and "cross-layer transcoder (--window 2) is TopK" in jump.output
