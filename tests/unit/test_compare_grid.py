"""The layer grid on tiny models: a model against itself has linear CKA 1 on the diagonal, and
each layer's best match is itself (relative depth equal); two different models give finite
scores below 1 whose nulls are reported;
too few aligned positions are refused with the count; the figure draws the grid."""

import pytest
import torch

import mechscope
from mechscope.compare.grid import aligned_activations, grid_figure, similarity_grid
from mechscope.errors import ConfigError

TEXTS = ["the cat sat on the mat and looked at the door", "a quick brown fox jumps over the lazy dog again",
         "when the rain stops we will walk to the market"]


@pytest.fixture(scope="module")
def models():
    return mechscope.load_tiny("llama"), mechscope.load_tiny("gpt2")


def test_a_model_against_itself(models):
    llama, _ = models
    found = aligned_activations(llama, llama, TEXTS, progress=False)
    assert found.pairs == sum(len(text) for text in TEXTS)  # byte tokenizers: every character pairs
    grid = similarity_grid(found, "linear_cka", progress=False)
    assert torch.allclose(grid.values.diagonal(), torch.ones(llama.cfg.n_layers), atol=1e-6)
    assert grid.relative_depth_match() == [layer / (llama.cfg.n_layers - 1) for layer in range(llama.cfg.n_layers)]


def test_two_models_with_their_nulls_and_the_figure(models):
    llama, gpt2 = models
    found = aligned_activations(llama, gpt2, TEXTS, layers_a=[0, 2], layers_b=[1, 2], progress=False)
    assert sorted(found.a) == [0, 2] and sorted(found.b) == [1, 2]
    assert found.a[0].shape[0] == found.b[1].shape[0] == found.pairs - found.dropped
    grid = similarity_grid(found, "linear_cka", permutations=10, progress=False)
    assert grid.values.shape == (2, 2) and bool(torch.isfinite(grid.values).all())
    assert float(grid.values.max()) < 0.99 and grid.null_high is not None
    assert grid.to_json()["layers_b"] == [1, 2]
    figure = grid_figure(grid, "tiny llama", "tiny gpt2")
    assert figure.data[0].z[1][0] == pytest.approx(float(grid.values[1, 0]))


def test_too_few_aligned_positions_are_refused(models):
    llama, gpt2 = models
    with pytest.raises(ConfigError, match="only 3 positions of the 1 texts align"):
        aligned_activations(llama, gpt2, ["abc"], progress=False)
    with pytest.raises(ConfigError, match="are not layers"):
        aligned_activations(llama, gpt2, TEXTS, layers_a=[7], progress=False)


def test_the_compare_command_writes_the_grid_and_refuses_bad_options(tmp_path):
    import json

    from typer.testing import CliRunner

    from mechscope.cli.app import app
    from tests.unit.test_cli import saved_tiny

    runner = CliRunner()
    _, folder_a = saved_tiny(tmp_path, "llama")
    _, folder_b = saved_tiny(tmp_path, "gpt2")
    out = tmp_path / "compare"
    result = runner.invoke(app, ["compare", str(folder_a), str(folder_b), "--texts", "4", "--max-chars", "200",
                                 "--permutations", "5", "--out", str(out)])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    grid = json.loads((out / "grid.json").read_text())
    assert len(grid["values"]) == len(grid["layers_a"]) == summary["layers_a"] == 3
    assert summary["aligned_positions"] > 100 and summary["cells_beyond_null"] is not None
    assert "plotly" in (out / "grid.html").read_text()[:5000].lower()
    roles = json.loads((out / "roles.json").read_text())
    assert set(roles["depths"]["roles"][0]) >= {"role", "depth_a", "depth_b", "gap", "p_value"}
    assert "too few single-token names" in roles["ioi"]  # byte tokenizers: attention roles only, said so
    assert "skipped" in json.loads((out / "matches.json").read_text())
    bad = runner.invoke(app, ["compare", str(folder_a), str(folder_b), "--metric", "cosine", "--out", str(tmp_path / "b")])
    assert bad.exit_code != 0 and "linear_cka" in bad.output


def test_an_outlier_dimension_is_reported_and_standardising_undoes_it():
    from mechscope.compare.grid import AlignedActivations, outlier_dimensions, similarity_grid

    generator = torch.Generator().manual_seed(0)
    shared = torch.randn(400, 16, generator=generator)
    rotation, _ = torch.linalg.qr(torch.randn(16, 16, generator=generator))
    # A: the shared signal plus one dimension of unrelated noise with 100x its variance (as
    # SmolLM2's early layers have); B: the same signal rotated.
    a = torch.cat([shared, 10 * torch.randn(400, 1, generator=generator)], dim=1)
    b = shared @ rotation
    activations = AlignedActivations({0: a}, {0: b}, 400, 0)
    raw = similarity_grid(activations, "linear_cka", scaling="none", progress=False)
    standard = similarity_grid(activations, "linear_cka", permutations=20, null_rows=128, progress=False)
    assert outlier_dimensions(a) == [16] and standard.outliers == {"a": {0: [16]}, "b": {0: []}}
    assert float(raw.values[0, 0]) < 0.2 < 0.85 < float(standard.values[0, 0])
    assert standard.null_rows == 128 and bool(standard.beyond_null()[0, 0])


def test_the_compare_command_matches_two_saes_of_different_widths(tmp_path):
    import json

    from typer.testing import CliRunner

    from mechscope.cli.app import app
    from mechscope.hooks import names
    from mechscope.sae import SAE, SAEConfig, save_sae
    from tests.unit.test_cli import saved_tiny

    runner = CliRunner()
    model_a, folder_a = saved_tiny(tmp_path, "llama")
    model_b, folder_b = saved_tiny(tmp_path, "gpt2")
    # Untrained dictionaries of different widths: allowed, and B's extra firing latents are
    # reported unmatched.
    sae_a = save_sae(SAE(SAEConfig(model_a.cfg.d_model, 48, "topk", k=8, hook_name=names.resid_post(1)), seed=1),
                     tmp_path / "sae_a")
    sae_b = save_sae(SAE(SAEConfig(model_b.cfg.d_model, 96, "topk", k=8, hook_name=names.resid_post(1)), seed=2),
                     tmp_path / "sae_b")
    out = tmp_path / "compare"
    common = ["compare", str(folder_a), str(folder_b), "--texts", "4", "--max-chars", "200", "--permutations", "0",
              "--no-roles", "--min-firing", "3"]
    result = runner.invoke(app, common + ["--sae-a", str(sae_a), "--sae-b", str(sae_b), "--out", str(out)])
    assert result.exit_code == 0, result.output
    matches = json.loads((out / "matches.json").read_text())
    summary = json.loads((out / "summary.json").read_text())["matches"]
    assert (matches["width_a"], matches["width_b"]) == (48, 96)
    assert len(matches["pairs"]) == min(matches["firing_a"], matches["firing_b"])
    assert summary["unmatched_b"] == matches["firing_b"] - len(matches["pairs"]) > 0
    assert matches["silent_a"] == 48 - matches["firing_a"] and matches["tokens"] > 100
    assert len(matches["transfer"]["features"]) == 10
    one = runner.invoke(app, common + ["--sae-a", str(sae_a), "--out", str(tmp_path / "one")])
    assert one.exit_code != 0 and "both sae_a and sae_b" in one.output


def test_the_grid_cells_equal_the_metric_on_the_scaled_layers():
    from mechscope.compare.grid import AlignedActivations, scaled, similarity_grid
    from mechscope.compare.similarity import linear_cka, procrustes_distance

    generator = torch.Generator().manual_seed(1)
    a = {layer: torch.randn(300, 12, generator=generator) * (layer + 1) + 3 for layer in range(3)}
    b = {layer: a[layer] @ torch.randn(12, 9, generator=generator) + torch.randn(300, 9, generator=generator)
         for layer in range(2)}
    activations = AlignedActivations(a, b, 300, 0)
    for metric, function in (("linear_cka", linear_cka), ("procrustes", procrustes_distance)):
        grid = similarity_grid(activations, metric, permutations=3, null_rows=100, progress=False)
        expected = torch.tensor([[function(scaled(a[i], "standardise"), scaled(b[j], "standardise")) for j in range(2)]
                                 for i in range(3)], dtype=torch.float32)
        torch.testing.assert_close(grid.values, expected, atol=1e-6, rtol=1e-6)
        assert grid.null_high.shape == (3, 2) and grid.null_rows == 100
