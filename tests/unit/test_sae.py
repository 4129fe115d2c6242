"""Sparse dictionaries: recovery of a planted dictionary, SAELens-format round trips, and
training that resumes after kill -9 exactly where it stopped."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from mechscope.sae import (
    SAE,
    SAEConfig,
    SparseDictionaryData,
    TrainConfig,
    load_sae,
    mcc,
    mean_max_cosine,
    save_sae,
    train,
)

DATA = SparseDictionaryData(n_features=64, d=32, p_active=0.03, batch_size=512, seed=0)
CONFIGS = {
    "relu": SAEConfig(32, 64, "relu"),
    "topk": SAEConfig(32, 64, "topk", k=2),
    "batchtopk": SAEConfig(32, 64, "batchtopk", k=2),
    "jumprelu": SAEConfig(32, 64, "jumprelu"),
    "matryoshka": SAEConfig(32, 64, "matryoshka", k=2, matryoshka_widths=(32, 64)),
}


@pytest.fixture(scope="module")
def trained():
    """All five architectures trained together on one stream of synthetic activations."""
    saes = train(list(CONFIGS.values()), DATA, TrainConfig(steps=2500, lr=3e-3), progress=False)
    return dict(zip(CONFIGS, saes))


@pytest.mark.parametrize("architecture", list(CONFIGS))
def test_each_architecture_recovers_the_planted_dictionary(trained, architecture):
    sae = trained[architecture]
    x, activations = DATA.sample(10_000, 4096)
    with torch.no_grad():
        latents = sae.encode(x)
    # Floors: measured 0.94-1.00 (mean max cosine) and 0.67-0.96 (MCC; Matryoshka lowest)
    # across architectures; a random 64-latent dictionary scores far lower (checked below), so
    # these floors fail if training stops recovering the true directions.
    assert mean_max_cosine(sae.W_dec, DATA.dictionary) > 0.9
    assert mcc(latents, activations) > 0.6
    true_l0 = DATA.n_features * DATA.p_active
    assert 0.5 * true_l0 < float((latents > 0).sum(-1).float().mean()) < 3 * true_l0


def test_a_random_dictionary_scores_far_below_the_floors():
    random = SAE(SAEConfig(32, 64, "topk", k=2), seed=5)
    x, activations = DATA.sample(10_000, 4096)
    with torch.no_grad():
        assert mean_max_cosine(random.W_dec, DATA.dictionary) < 0.6
        assert mcc(random.encode(x), activations) < 0.4


def test_transcoder_learns_the_output_dictionary():
    """Input features map to the same features' directions in a different output space."""
    data = SparseDictionaryData(n_features=48, d=24, p_active=0.04, batch_size=512, seed=1, d_out=20)
    plain, skip = train([SAEConfig(24, 96, "topk", k=2, d_out=20), SAEConfig(24, 96, "topk", k=2, d_out=20,
                                                                               skip_connection=True)],
                        data, TrainConfig(steps=2000, lr=3e-3), progress=False)
    assert mean_max_cosine(plain.W_dec, data.output_dictionary) > 0.9  # measured 0.98
    x, y = data.batch(99_999)
    with torch.no_grad():
        fvu = {name: float(((t(x) - y) ** 2).sum() / ((y - y.mean(0)) ** 2).sum()) for name, t in
               (("plain", plain), ("skip", skip))}
    # The linear skip takes over part of the map (and then the latents need not align with the
    # true directions), so it reconstructs better.
    assert fvu["skip"] < fvu["plain"] < 0.4


@pytest.mark.parametrize("architecture", list(CONFIGS) + ["transcoder"])
def test_saelens_format_round_trip_is_bit_identical(trained, architecture, tmp_path):
    if architecture == "transcoder":
        sae = SAE(SAEConfig(24, 48, "topk", k=3, d_out=20, skip_connection=True, hook_name="blocks.0.ln2.hook_normalized",
                            hook_name_out="blocks.0.hook_mlp_out"), seed=3)
        with torch.no_grad():
            sae.W_skip.normal_()
    else:
        sae = trained[architecture]
    folder = save_sae(sae, tmp_path / architecture)
    assert sorted(p.name for p in folder.iterdir()) == ["cfg.json", "sae_weights.safetensors"]
    loaded = load_sae(folder)
    assert loaded.cfg == sae.cfg
    for name, tensor in sae.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    x = torch.randn(16, sae.cfg.d_in)
    with torch.no_grad():
        assert torch.equal(loaded(x), sae(x))
    saved = json.loads((folder / "cfg.json").read_text())
    expected = {"relu": "standard", "topk": "topk", "batchtopk": "jumprelu", "jumprelu": "jumprelu",
                "matryoshka": "jumprelu", "transcoder": "skip_transcoder"}[architecture]
    assert saved["architecture"] == expected


def test_loads_a_saelens_folder_without_mechscope_metadata(trained, tmp_path):
    folder = save_sae(trained["jumprelu"], tmp_path / "j")
    config = json.loads((folder / "cfg.json").read_text())
    del config["metadata"]["mechscope"]
    (folder / "cfg.json").write_text(json.dumps(config))
    loaded = load_sae(folder)
    assert loaded.cfg.architecture == "jumprelu"
    assert torch.equal(loaded.threshold, trained["jumprelu"].threshold)
    with pytest.raises(FileNotFoundError, match="sae_weights.safetensors"):
        load_sae(tmp_path / "nowhere")



def test_saelens_topk_with_decoder_norm_rescaling_loads_folded(tmp_path):
    """SAELens TopK training files set rescale_acts_by_decoder_norm: latents are pre * |W_dec_i|
    before the top k and are divided by it again before decoding. Loading folds the norms in,
    so the mechscope SAE computes the same function."""
    raw = SAE(SAEConfig(32, 64, "topk", k=3), seed=4)
    with torch.no_grad():
        raw.W_dec.mul_(torch.rand(64, 1) + 0.5)
        raw.b_enc.normal_()
        raw.b_dec.normal_()
    folder = save_sae(raw, tmp_path / "rescaled")
    config = json.loads((folder / "cfg.json").read_text())
    del config["metadata"]["mechscope"]
    config["rescale_acts_by_decoder_norm"] = True
    (folder / "cfg.json").write_text(json.dumps(config))
    x = torch.randn(20, 32)
    norms = raw.W_dec.norm(dim=1)
    with torch.no_grad():
        scaled = ((x - raw.b_dec) @ raw.W_enc + raw.b_enc) * norms
        top = torch.relu(scaled).topk(3, dim=-1)
        latents = torch.zeros_like(scaled).scatter(-1, top.indices, top.values)
        expected = (latents / norms) @ raw.W_dec + raw.b_dec
        torch.testing.assert_close(load_sae(folder)(x), expected, rtol=1e-5, atol=1e-5)
    config["normalize_activations"] = "expected_average_only_in"
    (folder / "cfg.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="normalize_activations"):
        load_sae(folder)



def test_typical_token_fvu_leaves_out_massive_norm_outliers():
    """One token with a norm far above the rest carries most of the variance: an SAE that gets
    only that token right has a small plain FVU but a large FVU over the typical tokens."""
    from mechscope.sae import fraction_of_variance_unexplained, typical_tokens

    target = torch.randn(200, 8)
    target[17] = 1000.0
    reconstruction = torch.zeros_like(target)
    reconstruction[17] = target[17]
    typical = typical_tokens(target)
    assert (~typical).nonzero().flatten().tolist() == [17]
    assert fraction_of_variance_unexplained(reconstruction, target) < 0.01
    assert fraction_of_variance_unexplained(reconstruction[typical], target[typical]) > 0.9


RESUME_SCRIPT = """
import sys, time
from mechscope.sae import SAEConfig, SparseDictionaryData, TrainConfig, train

class Slow(SparseDictionaryData):
    def batch(self, step):
        time.sleep(0.02)
        return super().batch(step)

data = Slow(n_features=32, d=16, p_active=0.05, batch_size=128, seed=2)
configs = [SAEConfig(16, 32, "topk", k=2), SAEConfig(16, 32, "jumprelu")]
train(configs, data, TrainConfig(steps=400, checkpoint_every=40, dead_after_tokens=2000), sys.argv[1], progress=False)
"""


def test_kill_during_training_then_resume_gives_the_uninterrupted_weights(tmp_path):
    folder = tmp_path / "checkpoints"
    process = subprocess.Popen([sys.executable, "-c", RESUME_SCRIPT, str(folder)])
    deadline = time.time() + 60
    while not (folder / "latest").exists() or (folder / "latest").read_text().strip() in ("step-39",):
        assert time.time() < deadline and process.poll() is None, "training never wrote a second checkpoint"
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    interrupted_at = (folder / "latest").read_text().strip()
    assert interrupted_at != "step-399"

    data = SparseDictionaryData(n_features=32, d=16, p_active=0.05, batch_size=128, seed=2)
    configs = [SAEConfig(16, 32, "topk", k=2), SAEConfig(16, 32, "jumprelu")]
    settings = TrainConfig(steps=400, checkpoint_every=40, dead_after_tokens=2000)
    resumed = train(configs, data, settings, folder, progress=False)
    uninterrupted = train(configs, data, settings, tmp_path / "fresh", progress=False)
    for a, b in zip(resumed, uninterrupted):
        for name, tensor in a.state_dict().items():
            assert torch.equal(tensor, b.state_dict()[name]), name
    assert not list(folder.glob(".*.tmp"))  # no half-written checkpoint left behind


def test_bad_configs_name_the_choices(tmp_path):
    with pytest.raises(ValueError, match="topk"):
        SAEConfig(8, 16, "gated")
    with pytest.raises(ValueError, match="k must be"):
        SAEConfig(8, 16, "topk", k=0)
    with pytest.raises(ValueError, match="end at d_sae"):
        SAEConfig(8, 16, "matryoshka", k=2, matryoshka_widths=(4, 8))
    with pytest.raises(ValueError, match="transcoders"):
        SAEConfig(8, 16, "relu", skip_connection=True)
    train(SAEConfig(8, 16, "topk", k=2), SparseDictionaryData(16, 8, batch_size=32), TrainConfig(steps=3, checkpoint_every=1),
          tmp_path / "c", progress=False)
    with pytest.raises(ValueError, match="other dictionaries"):
        train(SAEConfig(8, 32, "topk", k=2), SparseDictionaryData(16, 8, batch_size=32), TrainConfig(steps=3),
              tmp_path / "c", progress=False)


def _perfect_sae(d: int, hook_name: str) -> SAE:
    """relu(x) - relu(-x) = x: latents [x+, x-] decode back to x exactly."""
    sae = SAE(SAEConfig(d, 2 * d, "relu", hook_name=hook_name))
    with torch.no_grad():
        eye = torch.eye(d)
        sae.W_enc.copy_(torch.cat([eye, -eye], dim=1))
        sae.W_dec.copy_(torch.cat([eye, -eye], dim=0))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae


def test_evaluation_anchors_perfect_and_zero_dictionaries():
    import mechscope
    from mechscope.sae.evaluate import evaluate_sae

    model = mechscope.load_tiny("llama")
    tokens = torch.randint(0, 250, (4, 12), generator=torch.Generator().manual_seed(0))
    hook = "blocks.1.hook_resid_post"
    perfect = evaluate_sae(model, _perfect_sae(model.cfg.d_model, hook), tokens)
    assert perfect.fvu < 1e-10 and perfect.fvu_typical < 1e-10 and perfect.cosine > 0.9999
    assert perfect.ce_recovered == pytest.approx(1.0, abs=1e-4) and perfect.kl < 1e-6
    zero = _perfect_sae(model.cfg.d_model, hook)
    with torch.no_grad():
        zero.W_dec.zero_()  # reconstruction = b_dec = 0: the same as zero-ablation
    scored = evaluate_sae(model, zero, tokens)
    assert scored.ce_recovered == pytest.approx(0.0, abs=1e-4) and scored.fvu >= 1.0  # worse than the mean
    assert scored.fvu_typical >= 1.0 and scored.outlier_tokens >= 0
    assert 0 <= scored.dead <= 1 and len(scored.log10_density) == 2 * model.cfg.d_model


def test_splice_keep_error_is_the_clean_run_and_steering_moves_it():
    import mechscope
    from mechscope.sae.splice import splice_hooks

    model = mechscope.load_tiny("llama")
    tokens = torch.randint(0, 250, (2, 8), generator=torch.Generator().manual_seed(1))
    sae = SAE(SAEConfig(model.cfg.d_model, 128, "topk", k=4, hook_name="blocks.0.hook_resid_post"), seed=0)
    with torch.no_grad():
        clean = model(tokens)
        kept = model.run_with_hooks(tokens, fwd_hooks=splice_hooks(sae, keep_error=True))
        steered = model.run_with_hooks(tokens, fwd_hooks=splice_hooks(sae, keep_error=True, steer={3: 5.0}))
    torch.testing.assert_close(kept, clean, atol=1e-5, rtol=1e-5)
    assert (steered - clean).abs().max() > 1e-2
    with pytest.raises(ValueError, match="out of range"):
        splice_hooks(sae, clamp={500: 1.0})


def test_dashboards_pages_and_numbers(tmp_path):
    import mechscope
    from mechscope.sae.dashboard import collect, sae_dashboards, summarise

    model = mechscope.load_tiny("llama")
    contexts = torch.randint(0, 250, (6, 10), generator=torch.Generator().manual_seed(2))
    hook = "blocks.1.hook_resid_post"
    sae = SAE(SAEConfig(model.cfg.d_model, 32, "topk", k=4, hook_name=hook), seed=1)
    index = sae_dashboards(model, sae, contexts, [0, 5, 7], tmp_path / "dash", progress=False)
    pages = sorted(p.name for p in (tmp_path / "dash").glob("feature_*.html"))
    assert pages == ["feature_0000.html", "feature_0001.html", "feature_0002.html"]
    assert (tmp_path / "dash" / "plotly.min.js").exists() and "feature_0002.html" in index.read_text()
    values = collect(model, contexts, hook, lambda x: sae.encode(x)[..., [0, 5, 7]], progress=False)
    _, cache = model.run_with_cache(contexts, names=[hook])
    expected = sae.encode(cache[hook])[..., [0, 5, 7]]
    expected[:, 0] = 0
    torch.testing.assert_close(values, expected)
    features = summarise(values, ["a", "b", "c"], None, k=3)
    for column, feature in enumerate(features):
        flat = values[:, 1:, column]
        assert feature.density == pytest.approx(float((flat > 0).float().mean()))
        if feature.top:
            context, position = feature.top[0]
            assert float(values[context, position, column]) == pytest.approx(feature.max_activation)
    with pytest.raises(ValueError, match="out of range"):
        sae_dashboards(model, sae, contexts, [99], tmp_path / "bad", progress=False)


@pytest.mark.parametrize("aux_path", ["sparse", "dead-columns"])
@pytest.mark.parametrize("transcoder", [False, True])
def test_sparse_topk_training_step_matches_the_dense_computation(transcoder, aux_path, monkeypatch):
    """The TopK loss runs through sae.sparse (gathers and scatters over the k active latents);
    its loss and every gradient, AuxK included (both of its paths), equal the dense formulas."""
    import mechscope.sae.model as sae_model

    monkeypatch.setattr(sae_model, "DENSE_AUX_FACTOR", 0 if aux_path == "sparse" else 1000)
    d_out = 12 if transcoder else None
    cfg = SAEConfig(16, 64, "topk", k=4, d_out=d_out, skip_connection=transcoder)
    sae = SAE(cfg, seed=3)
    with torch.no_grad():
        for parameter in sae.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    x = torch.randn(40, 16)
    target = torch.randn(40, d_out or 16)
    dead = torch.rand(64) < 0.5
    sparse_loss, parts, fired = sae.loss(x, target, dead, aux_k=6, aux_coefficient=0.5)
    sparse_loss.backward()
    sparse_grads = {name: p.grad.clone() for name, p in sae.named_parameters()}
    sae.zero_grad()

    centred = x if transcoder else x - sae.b_dec
    positive = torch.relu(centred @ sae.W_enc + sae.b_enc)
    top = positive.topk(4, dim=-1)
    latents = torch.zeros_like(positive).scatter(-1, top.indices, top.values)
    skip = x @ sae.W_skip if transcoder else 0
    out = latents @ sae.W_dec + sae.b_dec + skip
    residual = (target - out).detach()
    dead_top = positive.masked_fill(~dead, 0).topk(6, dim=-1)
    dead_latents = torch.zeros_like(positive).scatter(-1, dead_top.indices, dead_top.values)
    aux = ((dead_latents @ sae.W_dec - residual) ** 2).sum(-1).mean() / residual.pow(2).sum(-1).mean()
    dense_loss = ((out - target) ** 2).sum(-1).mean() + 0.5 * aux
    dense_loss.backward()
    torch.testing.assert_close(sparse_loss, dense_loss, rtol=1e-5, atol=1e-6)
    for name, parameter in sae.named_parameters():
        torch.testing.assert_close(sparse_grads[name], parameter.grad, rtol=1e-4, atol=1e-6, msg=name)
    assert torch.equal(fired, (latents > 0).any(0))
    assert parts["l0"] == pytest.approx(float((latents > 0).sum(-1).float().mean()))
