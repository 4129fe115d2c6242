"""Model diffing with dictionaries: paired activations line up token by token, a crosscoder finds
planted fine-tune-only features (and none when the models are equal), Latent Scaling tells
genuine ft-only latents from sparsity artifacts, and an SAE read in both models ranks a planted
change first."""

import json
from dataclasses import dataclass, replace

import pytest
import torch

import mechscope
from mechscope.data.store import StoredActivations, harvest
from mechscope.diff.compat import IncompatibleModelsError
from mechscope.diff.crosscoder import (
    ClassifyConfig,
    Crosscoder,
    CrosscoderConfig,
    classify_latents,
    collect_pair,
    crosscoder_dashboards,
    load_crosscoder,
    save_crosscoder,
    train_crosscoder,
)
from mechscope.diff.latent_scaling import latent_scaling
from mechscope.diff.paired import PairedActivations, harvest_pair, split_pair
from mechscope.diff.sae_diff import SAEDiffConfig, sae_diff
from mechscope.errors import ConfigError, FileFormatError, MissingFileError, ResumeError
from mechscope.hooks import names
from mechscope.sae.config import SAEConfig
from mechscope.sae.model import SAE
from mechscope.sae.train import TrainConfig
from tests.helpers import random_tokens

pytestmark = pytest.mark.usefixtures("one_thread")


@dataclass(frozen=True)
class PairedDictionaryData:
    """Synthetic paired rows [base | ft] of width 2 * d: ``n_shared`` unit features written
    identically in both models, and ``n_ft`` features added to ft's half only (absent from base).
    Each feature is on with probability p (p_ft) with magnitude 1 + |N(0, 0.5)| (times
    ``ft_magnitude`` for the ft-only ones: a narrow fine-tune's small change). ``same``: ft equals
    base (the ft-only features are never added)."""

    d: int = 16
    n_shared: int = 12
    n_ft: int = 3
    p: float = 0.05
    p_ft: float = 0.08
    batch_size: int = 256
    seed: int = 0
    same: bool = False
    ft_magnitude: float = 1.0

    def directions(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(shared [n_shared, d], ft-only [n_ft, d]) unit directions."""
        generator = torch.Generator().manual_seed(self.seed)
        directions = torch.randn(self.n_shared + self.n_ft, self.d, generator=generator)
        directions = directions / directions.norm(dim=1, keepdim=True)
        return directions[:self.n_shared], directions[self.n_shared:]

    def batch(self, step: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + step + 1)
        shared, ft_only = self.directions()

        def activations(n, p):
            on = torch.rand(self.batch_size, n, generator=generator) < p
            return on * (1 + (0.5 * torch.randn(self.batch_size, n, generator=generator)).abs())

        base = activations(self.n_shared, self.p) @ shared
        extra = self.ft_magnitude * activations(self.n_ft, self.p_ft) @ ft_only
        return torch.cat([base, base if self.same else base + extra], dim=-1)


DATA = PairedDictionaryData()
CONFIG = CrosscoderConfig(d_model=16, d_sae=48, k=1)
TRAIN = TrainConfig(steps=1200, lr=3e-3, warmup_steps=20)


@pytest.fixture(scope="module")
def planted():
    return train_crosscoder(DATA, CONFIG, TRAIN, progress=False)


def _unit(rows: torch.Tensor) -> torch.Tensor:
    return rows / rows.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def test_crosscoder_finds_the_planted_ft_only_and_shared_features(planted):
    classes = classify_latents(planted)
    shared, ft_only = DATA.directions()
    _, ft_half = (half.flatten(1) for half in planted.decoder_halves())
    matched = []
    for direction in ft_only:
        cosines = _unit(ft_half) @ direction
        latent = int(cosines.argmax())
        matched.append(latent)
        # Measured: cosine 1.000, r 0.9986-0.9988 for all three.
        assert float(cosines[latent]) > 0.99
        assert classes.kinds[latent] == "ft-only" and float(classes.relative_norm[latent]) > 0.99
    assert len(set(matched)) == 3 and classes.indices("ft-only") == sorted(matched)
    # Shared features: a decoder row [s, s] / sqrt(2), relative norm 1/2, halves parallel.
    both = _unit(torch.cat([shared, shared], dim=1))
    best = (both @ _unit(planted.sae.W_dec.detach()).T).max(dim=1)
    assert float(best.values.min()) > 0.95  # measured 0.977 (11 of 12 at 0.999+)
    for latent in best.indices.tolist():
        assert classes.kinds[latent] == "shared"
        assert abs(float(classes.relative_norm[latent]) - 0.5) < 0.01 and float(classes.cosine[latent]) > 0.99
    assert classes.counts == {"base-only": 0, "ft-only": 3, "shared": 45, "other": 0}
    json.dumps(classes.to_json())


def test_latent_scaling_calls_the_planted_ft_only_latents_genuine(planted):
    ft_only = classify_latents(planted).indices("ft-only")
    held_out = torch.cat([DATA.batch(100_000 + step) for step in range(8)])
    scaling = latent_scaling(planted, held_out)
    assert scaling.latents == ft_only
    # Measured |nu_error| <= 0.0015 and |nu_reconstruction| <= 0.053: the base model holds none
    # of these directions, and ft's own betas are ~1.
    assert scaling.nu_error.abs().max() < 0.02 and scaling.nu_reconstruction.abs().max() < 0.1
    assert torch.allclose(scaling.betas["ft_error"], torch.ones(3), atol=0.02)
    assert scaling.verdicts == ["ft-specific"] * 3 and bool((scaling.active_tokens > 50).all())
    json.dumps(scaling.to_json())


def test_identical_models_give_no_ft_only_latents():
    crosscoder = train_crosscoder(PairedDictionaryData(same=True), CONFIG, TRAIN, progress=False)
    classes = classify_latents(crosscoder)
    # Measured: all 48 shared, relative norms 0.36-0.56.
    assert classes.counts["ft-only"] == 0 and classes.counts["base-only"] == 0
    assert float(classes.relative_norm.max()) < 0.7 and float(classes.relative_norm.min()) > 0.3
    assert classes.leaning("ft") == [] and classes.leaning("base") == []  # nothing stands out of the bulk


NARROW = PairedDictionaryData(ft_magnitude=0.03)  # the ft-only features at 3% of the shared ones' size
NARROW_CONFIG = replace(CONFIG, d_sae=24)  # room for the 15 features, not for spare latents


def test_a_narrow_change_gets_ft_only_latents_only_when_magnified():
    _, planted_directions = NARROW.directions()

    def best_ft_only_cosines(crosscoder):
        classes = classify_latents(crosscoder)
        ft_only = classes.indices("ft-only")
        if not ft_only:
            return torch.zeros(len(planted_directions))
        _, ft_half = crosscoder.decoder_halves()
        return (_unit(ft_half.flatten(1)[ft_only]) @ planted_directions.T).max(dim=0).values

    plain = train_crosscoder(NARROW, NARROW_CONFIG, TRAIN, progress=False)
    # Measured: no ft-only latent at all (the change is worth ~0.1% of the reconstruction error).
    assert classify_latents(plain).indices("ft-only") == []
    magnified = train_crosscoder(NARROW, replace(NARROW_CONFIG, delta_scale=30.0), TRAIN, progress=False)
    # Measured: each planted direction is an ft-only latent's ft half, cosine 1.00.
    assert float(best_ft_only_cosines(magnified).min()) > 0.95
    # The magnified crosscoder reads (and reconstructs) [h_base, h_base + 30 (h_ft - h_base)].
    x = NARROW.batch(5)
    base_rows, ft_rows = split_pair(x, 1)
    torch.testing.assert_close(magnified.rows(x), torch.cat([base_rows, base_rows + 30 * (ft_rows - base_rows)], -1)
                               .flatten(1))
    assert torch.equal(plain.rows(x), x) and torch.equal(magnified.encode(x), magnified.sae.encode(magnified.rows(x)))
    held_out = torch.cat([NARROW.batch(100_000 + step) for step in range(4)])
    scaling = latent_scaling(magnified, held_out)
    assert scaling.verdicts and set(scaling.verdicts) <= {"ft-specific", "inactive"}  # the base holds none of them


def test_delta_scale_is_checked_and_saved(tmp_path):
    with pytest.raises(ConfigError, match="delta_scale"):
        replace(CONFIG, delta_scale=0.5)
    crosscoder = train_crosscoder(NARROW, replace(CONFIG, delta_scale=4.0), TrainConfig(steps=5, warmup_steps=1),
                                  progress=False)
    loaded = load_crosscoder(save_crosscoder(crosscoder, tmp_path / "cc"))
    assert loaded.config.delta_scale == 4.0 and torch.equal(loaded.encode(NARROW.batch(1)), crosscoder.encode(NARROW.batch(1)))
    # A checkpoint of one scale does not resume as another.
    train_crosscoder(NARROW, replace(CONFIG, delta_scale=4.0), TrainConfig(steps=4, warmup_steps=1, checkpoint_every=2),
                     checkpoint_dir=tmp_path / "ckpt", progress=False)
    with pytest.raises(ResumeError):
        train_crosscoder(NARROW, replace(CONFIG, delta_scale=8.0), TrainConfig(steps=4, warmup_steps=1,
                         checkpoint_every=2), checkpoint_dir=tmp_path / "ckpt", progress=False)


EXCLUSIVE_CONFIG = replace(CONFIG, d_sae=15, ft_exclusive=3, k_exclusive=1)  # 12 free latents, 3 designated


def test_designated_ft_exclusive_latents_write_nothing_in_base_and_hold_a_planted_change(tmp_path):
    magnified = train_crosscoder(NARROW, replace(EXCLUSIVE_CONFIG, delta_scale=30.0), TRAIN, progress=False)
    designated = [12, 13, 14]
    assert magnified.config.exclusive_latents == designated and magnified.config.exclusive_budget == 1
    base_half, ft_half = (half.flatten(1) for half in magnified.decoder_halves())
    assert base_half[designated].abs().max() == 0 and bool((ft_half[designated].norm(dim=1) > 0).all())
    classes = classify_latents(magnified)
    assert classes.exclusive == designated and all(classes.kinds[j] == "ft-only" for j in designated)
    # Kept out of the bulk whose spread defines "leaning": r = 1 by construction says nothing.
    assert bool(classes.robust_z[designated].isnan().all()) and not set(classes.leaning("ft")) & set(designated)
    held_out = torch.cat([NARROW.batch(100_000 + step) for step in range(4)])
    scaling = latent_scaling(magnified, held_out, latents=designated)
    _, planted_directions = NARROW.directions()
    cosines = (_unit(ft_half[designated]) @ planted_directions.T).max(dim=1).values
    # Measured: designated latent 13 is planted direction 0 (cosine 0.99998, nu_error 0.013,
    # nu_reconstruction 0.021); the other two also carry ft halves of shared features.
    best = int(cosines.argmax())
    assert float(cosines[best]) > 0.99 and scaling.verdicts[best] == "ft-specific"
    loaded = load_crosscoder(save_crosscoder(magnified, tmp_path / "cc"))
    assert loaded.config == magnified.config and loaded.sae.cfg.k_groups == ((12, 15, 1),)
    assert torch.equal(loaded.encode(held_out), magnified.encode(held_out))


def test_designated_latents_of_identical_models_are_never_called_genuine():
    # The null control: with nothing to carry, the designated latents (their budget spent all
    # the same) take ft halves of shared features, which Latent Scaling calls what they are.
    crosscoder = train_crosscoder(PairedDictionaryData(same=True), EXCLUSIVE_CONFIG, TRAIN, progress=False)
    held_out = torch.cat([DATA.batch(100_000 + step) for step in range(4)])
    verdicts = latent_scaling(crosscoder, held_out, latents=crosscoder.config.exclusive_latents).verdicts
    assert "ft-specific" not in verdicts, verdicts  # measured: latent-decoupling for all three


def _crosscoder_with_decoder(base_half: torch.Tensor, ft_half: torch.Tensor) -> Crosscoder:
    config = CrosscoderConfig(d_model=base_half.shape[1], d_sae=len(base_half))
    sae = SAE(config.sae_config())
    with torch.no_grad():
        sae.W_dec.copy_(torch.cat([base_half, ft_half], dim=1))
    return Crosscoder(sae, config)


def test_latents_leaning_out_of_the_bulk_are_found_on_either_side_and_dead_ones_are_left_out():
    # 40 shared latents with r spread evenly over 0.49-0.51; latent 40 writes 1.5x more in ft
    # (r 0.6), latent 41 1.5x more in base (r 0.4): neither is near the ft-only / base-only
    # thresholds, both lie far outside the bulk. Latent 42 writes nothing.
    d, n = 8, 40
    directions = _unit(torch.randn(n + 3, d, generator=torch.Generator().manual_seed(5)))
    r = torch.cat([torch.linspace(0.49, 0.51, n), torch.tensor([0.6, 0.4, 0.5])])
    base_half, ft_half = directions * (1 - r)[:, None], directions * r[:, None]
    base_half[42], ft_half[42] = 0, 0
    classes = classify_latents(_crosscoder_with_decoder(base_half, ft_half))
    assert classes.counts == {"base-only": 0, "ft-only": 0, "shared": 42, "other": 1}
    assert classes.leaning("ft") == [40] and classes.leaning("base") == [41]
    # The bulk's MAD is 0.005 (r over 0.49-0.51), so latent 40 sits (0.6 - 0.5) / (1.4826 * 0.005) away.
    assert float(classes.robust_z[40]) == pytest.approx(0.1 / (1.4826 * 0.005), rel=0.03)
    assert torch.isnan(classes.robust_z[42]) and classes.to_json()["robust_z"][42] is None
    # A looser threshold takes in the edge of the bulk too; all-equal norms have no spread at all.
    assert len(classify_latents(_crosscoder_with_decoder(base_half, ft_half), ClassifyConfig(outlier_z=1)).leaning()) > 1
    flat = classify_latents(_crosscoder_with_decoder(directions * 0.5, directions * 0.5))
    assert flat.leaning("ft") == [] and bool(torch.isnan(flat.robust_z).all())
    with pytest.raises(ConfigError, match="side"):
        classes.leaning("both")


def _hand_built_crosscoder() -> tuple[Crosscoder, torch.Tensor]:
    """A ReLU crosscoder whose latents read orthonormal features exactly (encoder = decoder
    direction, biases 0), on data it reconstructs exactly except for one planted artifact:
    latents 0-7 shared [s, s]; 8 genuinely ft-only [0, u]; 9 ft-only [0, g] although base holds
    0.6 g (complete shrinkage); 10 ft-only [0, h] while its twin 11 [h, 0] writes h in base
    (latent decoupling); 12 ft-only on a direction no data holds (never fires)."""
    d = 16
    q = torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(3)))[0].T  # rows orthonormal
    shared, u, g, h, unused = q[:8], q[8], q[9], q[10], q[11]
    zero = torch.zeros(d)
    rows = [torch.cat([s, s]) for s in shared] + [torch.cat([zero, u]), torch.cat([zero, g]), torch.cat([zero, h]),
                                                   torch.cat([h, zero]), torch.cat([zero, unused])]
    decoder = torch.stack(rows)  # [13, 32]
    config = CrosscoderConfig(d_model=d, d_sae=13, architecture="relu")
    sae = SAE(config.sae_config())
    with torch.no_grad():
        sae.W_dec.copy_(decoder)
        sae.W_enc.copy_(decoder.T / decoder.norm(dim=1) ** 2)  # pre-activation = the feature's coefficient
        sae.b_enc.zero_()
        sae.b_enc[12] = -1.0  # float noise along the unused direction must not make it fire
        sae.b_dec.zero_()
    generator = torch.Generator().manual_seed(4)
    coefficients = (torch.rand(2000, 11, generator=generator) < 0.2) * torch.rand(2000, 11, generator=generator) * 2
    a, c_u, c_g, c_h = coefficients[:, :8], coefficients[:, 8:9], coefficients[:, 9:10], coefficients[:, 10:11]
    base = a @ shared + 0.6 * c_g * g + c_h * h
    ft = a @ shared + c_u * u + c_g * g + c_h * h
    return Crosscoder(sae, config), torch.cat([base, ft], dim=1)


def test_latent_scaling_matches_the_closed_form_on_a_hand_built_crosscoder():
    crosscoder, rows = _hand_built_crosscoder()
    classes = classify_latents(crosscoder)
    assert classes.indices("ft-only") == [8, 9, 10, 12] and classes.indices("base-only") == [11]
    assert classes.indices("shared") == list(range(8)) and torch.allclose(classes.cosine[:8], torch.ones(8))
    scaling = latent_scaling(crosscoder, rows.split(700))  # streamed in chunks
    betas = {name: values[:3] for name, values in scaling.betas.items()}
    expected = {"base_error": [0.0, 0.6, 0.0], "ft_error": [1.0, 1.0, 1.0],
                "base_reconstruction": [0.0, 0.0, 1.0], "ft_reconstruction": [1.0, 1.0, 1.0]}
    for name, values in expected.items():
        torch.testing.assert_close(betas[name], torch.tensor(values), atol=1e-5, rtol=0)
    torch.testing.assert_close(scaling.nu_error[:3], torch.tensor([0.0, 0.6, 0.0]), atol=1e-5, rtol=0)
    torch.testing.assert_close(scaling.nu_reconstruction[:3], torch.tensor([0.0, 0.0, 1.0]), atol=1e-5, rtol=0)
    assert scaling.verdicts == ["ft-specific", "complete-shrinkage", "latent-decoupling", "inactive"]
    assert int(scaling.active_tokens[3]) == 0 and scaling.to_json()["nu_error"][3] is None
    # A threshold above 0.6 no longer calls latent 9 shrunk.
    assert latent_scaling(crosscoder, rows, [9], threshold=0.7).verdicts == ["ft-specific"]


@pytest.fixture(scope="module")
def tiny_pair():
    """tiny-llama and a copy whose layer-1 MLP was changed (layer 0 is untouched)."""
    base, ft = mechscope.load_tiny("llama"), mechscope.load_tiny("llama")
    with torch.no_grad():
        weight = ft.hf_model.model.layers[1].mlp.down_proj.weight
        weight.add_(0.05 * torch.randn(weight.shape, generator=torch.Generator().manual_seed(0)))
    return base, ft


HOOKS = [names.resid_post(0), names.resid_post(1)]


def test_paired_rows_are_the_same_tokens_and_a_crosscoder_round_trips(tiny_pair, tmp_path):
    base, ft = tiny_pair
    contexts = random_tokens(base, batch=6, pos=17, seed=1)
    folder = harvest_pair(base, ft, contexts, tmp_path / "pair", HOOKS, shard_contexts=2, batch_contexts=2,
                          progress=False)
    harvest_pair(base, ft, contexts, folder, HOOKS, shard_contexts=2, batch_contexts=2, progress=False)  # a no-op resume
    data = PairedActivations(folder, HOOKS, batch_size=32, seed=1)
    x = data.batch(3)  # crosses a shard boundary: 96 tokens in 3 shards of 32
    assert x.shape == (32, 2 * 2 * 64) and data.total_tokens == 6 * 16
    base_rows, ft_rows = split_pair(x, 2)
    # Layer 0 is identical in both models, so equal halves prove row i is the same token in both;
    # the changed layer 1 differs.
    assert torch.equal(base_rows[:, 0], ft_rows[:, 0])
    assert float((base_rows[:, 1] - ft_rows[:, 1]).norm()) > 0.1 * float(base_rows[:, 1].norm())
    assert torch.equal(base_rows[:, 1], StoredActivations(folder / "base", HOOKS[1], 32, 1).batch(3))
    assert torch.equal(ft_rows[:, 1], StoredActivations(folder / "ft", HOOKS[1], 32, 1).batch(3))
    fingerprint = data.fingerprint()
    assert fingerprint["base_model"]["model_sha256"] != fingerprint["ft_model"]["model_sha256"]

    crosscoder = train_crosscoder(data, CrosscoderConfig(d_model=64, d_sae=32, n_layers_in=2, k=4),
                                  TrainConfig(steps=15, warmup_steps=3), progress=False)
    assert crosscoder.config.hook_names == tuple(HOOKS) and crosscoder.ft_model == data.ft_model
    loaded = load_crosscoder(save_crosscoder(crosscoder, tmp_path / "cc"))
    assert loaded.config == crosscoder.config and (loaded.base_model, loaded.ft_model) == (data.base_model, data.ft_model)
    for name, tensor in crosscoder.sae.state_dict().items():
        assert torch.equal(tensor, loaded.sae.state_dict()[name]), name
    assert torch.equal(loaded.encode(x), crosscoder.encode(x))

    # The dashboard path (both models run on contexts) sees exactly the stored rows: same
    # per-latent activation values over the 96 tokens.
    live = collect_pair(base, ft, contexts, loaded, list(range(32)), batch_contexts=4)[:, 1:].flatten(0, 1)
    stored = loaded.encode(data.rows(0, data.total_tokens))
    torch.testing.assert_close(live.sort(0).values, stored.sort(0).values, atol=1e-5, rtol=1e-5)
    index = crosscoder_dashboards(base, ft, loaded, contexts[:3], tmp_path / "dash", latents=[0, 1])
    assert index.is_file() and len(list((tmp_path / "dash").glob("feature_*.html"))) == 2


def test_pairs_that_do_not_line_up_are_refused(tiny_pair, tmp_path):
    base, ft = tiny_pair
    contexts = random_tokens(base, batch=4, pos=9, seed=2)
    harvest(base, contexts, tmp_path / "bad" / "base", HOOKS, shard_contexts=2, progress=False)
    harvest(ft, random_tokens(base, batch=4, pos=9, seed=3), tmp_path / "bad" / "ft", HOOKS, shard_contexts=2,
            progress=False)
    with pytest.raises(ConfigError, match="different contexts"):
        PairedActivations(tmp_path / "bad", HOOKS, batch_size=8)
    harvest(ft, contexts, tmp_path / "layout" / "ft", HOOKS, shard_contexts=1, progress=False)
    harvest(base, contexts, tmp_path / "layout" / "base", HOOKS, shard_contexts=2, progress=False)
    with pytest.raises(ConfigError, match="shard_contexts"):
        PairedActivations(tmp_path / "layout", HOOKS, batch_size=8)
    with pytest.raises(MissingFileError, match="harvest_pair"):
        PairedActivations(tmp_path / "nothing", HOOKS)
    harvest_pair(base, ft, contexts, tmp_path / "one", HOOKS[:1], progress=False)
    with pytest.raises(ConfigError, match="was not harvested"):
        PairedActivations(tmp_path / "one", HOOKS)

    from transformers import AutoModelForCausalLM

    from mechscope.models.hooked_model import HookedModel
    from mechscope.models.tiny import _tiny_config, byte_tokenizer

    config = _tiny_config("llama")
    config.hidden_size, config.intermediate_size = 32, 64
    narrow = HookedModel(AutoModelForCausalLM.from_config(config), byte_tokenizer(), name="narrow-llama")
    with pytest.raises(IncompatibleModelsError, match="d_model 64 vs 32"):
        harvest_pair(base, narrow, contexts, tmp_path / "narrow", HOOKS, progress=False)
    assert not (tmp_path / "narrow").exists()  # refused before anything was written


class _Interrupted(Exception):
    pass


@dataclass(frozen=True)
class _KilledAt:
    """The same batches as ``data``, but the process "dies" at step ``at``."""

    data: PairedDictionaryData
    at: int

    def batch(self, step):
        if step == self.at:
            raise _Interrupted(step)
        return self.data.batch(step)


def test_interrupted_training_resumes_to_the_uninterrupted_weights(tmp_path):
    config = CrosscoderConfig(d_model=16, d_sae=24, k=2)
    train_config = TrainConfig(steps=50, warmup_steps=5, checkpoint_every=20)
    whole = train_crosscoder(DATA, config, train_config, progress=False)
    with pytest.raises(_Interrupted):
        train_crosscoder(_KilledAt(DATA, 45), config, train_config, tmp_path / "run", progress=False)
    assert (tmp_path / "run" / "latest").read_text() == "step-39"
    resumed = train_crosscoder(DATA, config, train_config, tmp_path / "run", progress=False)
    for name, tensor in whole.sae.state_dict().items():
        assert torch.equal(tensor, resumed.sae.state_dict()[name]), name
    with pytest.raises(ResumeError, match="dictionary 0 k: checkpoint 2, this run 3"):
        train_crosscoder(DATA, CrosscoderConfig(d_model=16, d_sae=24, k=3), train_config, tmp_path / "run",
                         progress=False)


def test_saved_crosscoders_refuse_missing_and_edited_files(tmp_path):
    crosscoder, _ = _hand_built_crosscoder()
    folder = save_crosscoder(crosscoder, tmp_path / "cc")
    loaded = load_crosscoder(folder)  # a ReLU crosscoder round-trips too
    assert all(torch.equal(t, loaded.sae.state_dict()[n]) for n, t in crosscoder.sae.state_dict().items())
    meta_path = folder / "crosscoder.json"
    meta = json.loads(meta_path.read_text())
    meta["config"]["d_sae"] = 12
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(FileFormatError, match="d_sae=13"):
        load_crosscoder(folder)
    del meta["ft_model"]
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(FileFormatError, match="ft_model"):
        load_crosscoder(folder)
    save_crosscoder(crosscoder, folder)
    other = Crosscoder(SAE(crosscoder.config.sae_config(), seed=9), crosscoder.config)
    from mechscope.sae.io import save_sae

    save_sae(other.sae, folder / "dictionary")  # swapped dictionary under the same metadata
    with pytest.raises(FileFormatError, match="checksum"):
        load_crosscoder(folder)
    meta_path.unlink()
    with pytest.raises(MissingFileError, match="crosscoder.json"):
        load_crosscoder(folder)


def test_configs_name_the_problem_and_the_choices():
    with pytest.raises(ConfigError, match="batchtopk, relu"):
        CrosscoderConfig(d_model=8, d_sae=16, k=4, architecture="topk")
    with pytest.raises(ConfigError, match="n_layers_in=1"):
        CrosscoderConfig(d_model=8, d_sae=16, k=4, hook_names=("a", "b"))
    with pytest.raises(ConfigError, match="shared_low"):
        ClassifyConfig(shared_low=0.8)
    with pytest.raises(ConfigError, match="pairs hooks"):
        train_crosscoder(type("D", (), {"hook_names": ("x",), "batch": lambda self, s: None})(),
                         CrosscoderConfig(d_model=8, d_sae=16, k=4, hook_names=("y",)), TrainConfig(steps=1))
    assert CrosscoderConfig(d_model=8, d_sae=16, k=4, n_layers_in=3).sae_config().d_in == 48
    with pytest.raises(ConfigError, match="ft_exclusive must be"):
        CrosscoderConfig(d_model=8, d_sae=16, k=4, ft_exclusive=16)
    with pytest.raises(ConfigError, match="k_exclusive is the BatchTopK budget"):
        CrosscoderConfig(d_model=8, d_sae=16, k=4, k_exclusive=2)
    with pytest.raises(ConfigError, match="k_exclusive must be"):
        CrosscoderConfig(d_model=8, d_sae=16, k=4, ft_exclusive=2, k_exclusive=3)
    with pytest.raises(ConfigError, match="k must be"):
        CrosscoderConfig(d_model=8, d_sae=16, k=14, ft_exclusive=4)
    # Default budget: the designated latents' share of k, at least 1; a ReLU crosscoder has none.
    assert CrosscoderConfig(d_model=8, d_sae=64, k=16, ft_exclusive=8).exclusive_budget == 2
    relu = CrosscoderConfig(d_model=8, d_sae=16, architecture="relu", ft_exclusive=4)
    assert relu.exclusive_budget is None and relu.sae_config().zero_decoder_blocks == ((12, 16, 0, 8),)


# ---------------------------------------------------------------------------------- SAE diff
@pytest.fixture(scope="module")
def gpt2_pair():
    """tiny-gpt2 and a copy whose layer-1 MLP output bias gained v: resid_post(1) moves by exactly v."""
    base, ft = mechscope.load_tiny("gpt2"), mechscope.load_tiny("gpt2")
    v = torch.randn(64, generator=torch.Generator().manual_seed(5))
    v = 3 * v / v.norm()
    with torch.no_grad():
        ft.hf_model.transformer.h[1].mlp.c_proj.bias.add_(v)
    return base, ft, v


def _planted_sae(v: torch.Tensor) -> SAE:
    """ReLU SAE at resid_post(1): latent 0 reads v / |v|; the other 7 read directions orthogonal to v."""
    sae = SAE(SAEConfig(64, 8, "relu", hook_name=names.resid_post(1)), seed=2)
    unit = v / v.norm()
    with torch.no_grad():
        others = sae.W_enc[:, 1:] - unit[:, None] * (unit @ sae.W_enc[:, 1:])
        sae.W_enc.copy_(torch.cat([unit[:, None], others / others.norm(dim=0)], dim=1))
        sae.b_dec.zero_()
        sae.b_enc.fill_(-0.1)
    return sae


def test_sae_diff_ranks_the_planted_latent_first(gpt2_pair):
    base, ft, v = gpt2_pair
    sae = _planted_sae(v)
    contexts = random_tokens(base, batch=5, pos=12, seed=4)
    diff = sae_diff(sae, base, ft, contexts, SAEDiffConfig(rank_by="mean_delta", top_latents=3, top_contexts=2,
                                                           batch_contexts=2))
    assert diff.ranking("mean_delta")[0] == 0 and diff.top[0] == 0 and diff.n_tokens == 5 * 11
    # Expected from the base activations alone: latent 0's pre-activation moves by |v| = 3.
    _, cache = base.run_with_cache(contexts, names=[names.resid_post(1)])
    pre = cache[names.resid_post(1)][:, 1:] @ (v / v.norm()) - 0.1
    expected = float(torch.relu(pre + 3).mean() - torch.relu(pre).mean())
    assert float(diff.mean_delta[0]) == pytest.approx(expected, rel=1e-4) and expected > 1
    assert float(diff.mean_delta[1:].abs().max()) < 1e-4  # orthogonal latents do not move
    assert float(diff.frequency_ft[0]) == 1.0 and float(diff.log_frequency_ratio[0]) >= 0
    rows = diff.contexts[0]
    assert len(rows) == 2 and all(row["ft_activation"] > row["base_activation"] + 2.5 for row in rows)
    assert rows[0]["ft_activation"] == pytest.approx(float(torch.relu(pre + 3).max()), rel=1e-4)
    json.dumps(diff.to_json())


def test_sae_diff_of_identical_models_is_zero(gpt2_pair):
    base, _, v = gpt2_pair
    same = mechscope.load_tiny("gpt2")
    diff = sae_diff(_planted_sae(v), base, same, random_tokens(base, batch=3, pos=10, seed=6),
                    SAEDiffConfig(top_latents=0))
    for values in (diff.mean_delta, diff.frequency_delta, diff.log_frequency_ratio):
        assert torch.equal(values, torch.zeros(8))
    assert diff.ranking() == list(range(8)) and diff.contexts == {}
    with pytest.raises(ConfigError, match="abs_mean_delta"):
        SAEDiffConfig(rank_by="mean")
    with pytest.raises(ConfigError, match="d_in=8"):
        sae_diff(SAE(SAEConfig(8, 4, "relu", hook_name=names.resid_post(1))), base, same, random_tokens(base))
