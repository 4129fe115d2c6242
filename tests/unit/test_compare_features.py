"""Latent matching on known answers: a dictionary whose latents are a shuffled, slightly perturbed
copy of another's is matched back to the hidden permutation, with every pair shared, while the
random-pairing null shares (almost) none; a wider dictionary's extra latents are reported unmatched;
activation correlations recover a planted pairing across two different spaces (what matching
across models uses); bad input is refused with the reason."""

import pytest
import torch

from mechscope.compare.features import activation_similarity, decoder_similarity, match_latents
from mechscope.errors import ConfigError


def test_a_shuffled_copy_is_matched_back_and_the_null_shares_nothing():
    generator = torch.Generator().manual_seed(0)
    decoder = torch.randn(300, 64, generator=generator)
    permutation = torch.randperm(300, generator=generator)
    copy = decoder[permutation] + 0.1 * torch.randn(300, 64, generator=generator)
    found = match_latents(decoder_similarity(decoder, copy), threshold=0.7)
    recovered = torch.empty(300, dtype=torch.long)
    recovered[found.pairs[:, 1]] = found.pairs[:, 0]
    assert torch.equal(recovered, permutation)  # latent j of the copy is latent permutation[j]
    assert found.shared == 1.0 and found.mean_similarity > 0.99
    assert found.null_shared < 0.02 and abs(found.null_mean) < 0.05  # a random pair is right 1 time in 300
    assert len(found.unmatched_a) == len(found.unmatched_b) == 0


def test_a_wider_dictionary_leaves_its_extra_latents_unmatched():
    generator = torch.Generator().manual_seed(1)
    small = torch.randn(40, 32, generator=generator)
    wide = torch.cat([small, torch.randn(24, 32, generator=generator)])[torch.randperm(64, generator=generator)]
    found = match_latents(decoder_similarity(small, wide))
    assert len(found.pairs) == 40 and len(found.unmatched_b) == 24 and found.shared == 1.0
    assert found.to_json()["unmatched_b"] == 24


def test_activation_correlations_pair_latents_across_spaces():
    generator = torch.Generator().manual_seed(2)
    causes = torch.relu(torch.randn(2000, 20, generator=generator))  # 20 shared "concepts" on 2000 tokens
    a = causes + 0.3 * torch.rand(2000, 20, generator=generator)
    b = 2.0 * causes[:, torch.arange(19, -1, -1)] + 0.3 * torch.rand(2000, 20, generator=generator)
    found = match_latents(activation_similarity(a, b), threshold=0.5)
    assert sorted(found.pairs.tolist()) == [[i, 19 - i] for i in range(20)]
    assert found.mean_similarity > 0.8 > found.null_mean  # the MCC against a random pairing


def test_bad_input_is_refused_with_the_reason():
    with pytest.raises(ConfigError, match="across models, match by activation_similarity"):
        decoder_similarity(torch.randn(4, 8), torch.randn(4, 9))
    with pytest.raises(ConfigError, match="same tokens"):
        activation_similarity(torch.randn(10, 3), torch.randn(11, 3))
    with pytest.raises(ConfigError, match="NaN"):
        match_latents(torch.tensor([[float("nan")]]))
