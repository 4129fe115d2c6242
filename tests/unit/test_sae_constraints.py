"""Dictionary constraints: decoder blocks held at zero (a crosscoder's designated exclusive
latents) and BatchTopK budget groups with thresholds of their own, through training, inference
and files."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from mechscope.errors import ConfigError, FileFormatError
from mechscope.files import file_sha256
from mechscope.sae import SAE, SAEConfig, SparseDictionaryData, TrainConfig, load_sae, save_sae, train

pytestmark = pytest.mark.usefixtures("one_thread")

DATA = SparseDictionaryData(n_features=24, d=16, p_active=0.05, batch_size=128, seed=3)
# Latents 24-31 write nothing into columns 0-7 and keep 1 activation a row between them.
CONSTRAINED = SAEConfig(16, 32, "batchtopk", k=2, zero_decoder_blocks=((24, 32, 0, 8),), k_groups=((24, 32, 1),))


@pytest.fixture(scope="module")
def constrained() -> SAE:
    return train(CONSTRAINED, DATA, TrainConfig(steps=300, lr=3e-3, warmup_steps=10), progress=False)[0]


def test_zero_blocks_stay_zero_and_rows_keep_unit_norm(constrained):
    assert SAE(CONSTRAINED).W_dec[24:, :8].abs().max() == 0  # from initialisation on
    assert constrained.W_dec[24:, :8].abs().max() == 0
    assert constrained.W_dec[24:, 8:].abs().max() > 0
    # Training folds the input scale into the decoder; the rows stay parallel to unit rows.
    norms = constrained.W_dec.norm(dim=1)
    torch.testing.assert_close(norms, norms[0].expand(32))


def test_a_budget_group_keeps_its_own_k_per_row(constrained):
    sae = SAE(CONSTRAINED)
    sae.load_state_dict(constrained.state_dict())
    x = DATA.batch(10_000)
    latents, _ = sae.train_latents(x)
    active = latents > 0
    assert int(active[:, 24:].sum()) == x.shape[0]  # 1 a row on average, over the batch
    assert int(active[:, :24].sum()) == 2 * x.shape[0]
    threshold = constrained.activation_threshold()
    assert float(constrained.group_thresholds[0]) > 0 and float(constrained.batch_threshold) > 0
    assert torch.equal(threshold[24:], constrained.group_thresholds.expand(8))
    assert torch.equal(threshold[:24], constrained.batch_threshold.expand(24))
    # Inference uses each latent's own threshold.
    pre = constrained.pre_activations(x)
    torch.testing.assert_close(constrained.encode(x), pre * (pre > threshold))


def test_constraints_round_trip_through_files(constrained, tmp_path):
    folder = save_sae(constrained, tmp_path / "sae")
    loaded = load_sae(folder)
    assert loaded.cfg == CONSTRAINED
    assert torch.equal(loaded.activation_threshold(), constrained.activation_threshold())
    x = DATA.batch(7)
    assert torch.equal(loaded.encode(x), constrained.encode(x))
    # Weights edited inside a zero block (with the checksum made to match) are refused.
    weights = load_file(folder / "sae_weights.safetensors")
    weights["W_dec"][25, 3] = 0.5
    save_file(weights, folder / "sae_weights.safetensors")
    config = json.loads((folder / "cfg.json").read_text())
    config["metadata"]["weights_sha256"] = file_sha256(folder / "sae_weights.safetensors")
    (folder / "cfg.json").write_text(json.dumps(config))
    with pytest.raises(FileFormatError, match=r"W_dec\[24:32, 0:8\] must be zero"):
        load_sae(folder)


def test_bad_constraints_name_the_problem():
    with pytest.raises(ConfigError, match="end latent"):
        SAEConfig(16, 32, "batchtopk", zero_decoder_blocks=((24, 40, 0, 8),))
    with pytest.raises(ConfigError, match="whole decoder rows"):
        SAEConfig(16, 32, "batchtopk", zero_decoder_blocks=((24, 32, 0, 16),))
    with pytest.raises(ConfigError, match="4 integers"):
        SAEConfig(16, 32, "batchtopk", zero_decoder_blocks=((24, 32),))
    with pytest.raises(ConfigError, match="batchtopk"):
        SAEConfig(16, 32, "topk", k_groups=((24, 32, 1),))
    with pytest.raises(ConfigError, match="overlaps"):
        SAEConfig(16, 32, "batchtopk", k=2, k_groups=((20, 28, 1), (24, 32, 1)))
    with pytest.raises(ConfigError, match="k must be"):
        SAEConfig(16, 32, "batchtopk", k=2, k_groups=((24, 32, 9),))
    with pytest.raises(ConfigError, match="cover every latent"):
        SAEConfig(16, 32, "batchtopk", k=2, k_groups=((0, 32, 2),))
    assert SAEConfig.from_dict(CONSTRAINED.to_dict()) == CONSTRAINED
