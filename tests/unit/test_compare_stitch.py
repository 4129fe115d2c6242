"""Stitching on known answers: a planted affine map plus noise is recovered with the held-out R²
the noise allows (1 - noise share); unrelated activations give a held-out R² near or below 0;
bad input is refused."""

import pytest
import torch

from mechscope.compare.stitch import fit_affine, held_out_r2, r_squared
from mechscope.errors import ConfigError


def test_a_planted_affine_map_is_recovered_to_what_the_noise_allows():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(4000, 24, generator=generator, dtype=torch.float64)
    weight = torch.randn(24, 16, generator=generator, dtype=torch.float64)
    signal = x @ weight + 3.0
    noise = 0.5 * torch.randn(4000, 16, generator=generator, dtype=torch.float64) * signal.std(0)
    fitted, score = held_out_r2(x, signal + noise, ridge=0.0)
    expected = 1 - 0.25 / 1.25  # noise variance 0.25 x the signal's
    assert score == pytest.approx(expected, abs=0.03)
    assert torch.allclose(fitted.weight, weight, atol=0.25) and torch.allclose(fitted.bias, torch.full((16,), 3.0,
                                                                                       dtype=torch.float64), atol=0.25)
    exact = fit_affine(x, signal, ridge=0.0)
    assert r_squared(exact(x), signal) == pytest.approx(1.0, abs=1e-9)


def test_unrelated_activations_are_not_predicted():
    generator = torch.Generator().manual_seed(1)
    _, score = held_out_r2(torch.randn(500, 32, generator=generator), torch.randn(500, 8, generator=generator))
    assert score < 0.05


def test_bad_input_is_refused():
    with pytest.raises(ConfigError, match="paired rows"):
        fit_affine(torch.randn(10, 3), torch.randn(9, 3))
    with pytest.raises(ConfigError, match="both need at least 2"):
        held_out_r2(torch.randn(3, 2), torch.randn(3, 2))
    with pytest.raises(ConfigError, match="reads width 3"):
        fit_affine(torch.randn(10, 3), torch.randn(10, 2))(torch.randn(2, 4))
