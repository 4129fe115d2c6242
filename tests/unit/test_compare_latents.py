"""SAE latents across seeds and across models, on planted sparse codes whose features are known.

- Seed stability: two TopK SAEs trained with different seeds (and batch orders) on the same planted
  data share most latents (decoder cosine > 0.7), while an untrained SAE shares almost none with a
  trained one (the negative control: the test can fail).
- Paired-decoder SVCCA: the true matching is far above its random-pairing null; a random matching
  is not.
- Across models: two "models" are two invertible linear views (widths 24 and 36) of the same
  codes, each with its own SAE (96 and 128 latents). Matching by activation correlation pairs
  latents that track the same true feature; the wider dictionary's extra latents are reported
  unmatched, silent (or rarely firing) latents are counted and left out; with B's rows shuffled
  (not the same tokens) nothing is shared (the control).
- Feature transfer: on texts whose words name each token's strongest feature, the offline tokens
  explainer explains both latents of a matched pair alike, mismatched pairs not.
"""

import pytest
import torch

import mechscope
from mechscope.compare.latents import (
    AlignedRows,
    aligned_rows,
    cross_model_matches,
    encode_rows,
    explain_by_tokens,
    explanation_agreement,
    feature_transfer,
    paired_decoder_svcca,
    seed_stability,
)
from mechscope.errors import ConfigError
from mechscope.hooks import names
from mechscope.sae import SAE, SAEConfig, SparseDictionaryData, TrainConfig, train

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny matmuls: extra threads only slow them

DATA = SparseDictionaryData(n_features=96, d=24, p_active=0.02, batch_size=256, seed=0)
SETTINGS = dict(steps=1000, lr=3e-3, warmup_steps=20)


class View:
    """Training batches of DATA seen through ``matrix`` [24, d_view], from step ``offset`` on."""

    def __init__(self, matrix: torch.Tensor, offset: int = 0):
        self.matrix, self.offset = matrix, offset

    def batch(self, step: int) -> torch.Tensor:
        return DATA.sample(step + self.offset)[0] @ self.matrix


def _views() -> tuple[torch.Tensor, torch.Tensor]:
    """An invertible [24, 24] map and an injective [24, 36] one, each with scales 0.5..2."""
    generator = torch.Generator().manual_seed(11)
    q_a = torch.linalg.qr(torch.randn(24, 24, generator=generator))[0]
    q_b = torch.linalg.qr(torch.randn(36, 24, generator=generator))[0]  # orthonormal columns [36, 24]
    scales = torch.linspace(0.5, 2.0, 24)
    return q_a @ torch.diag(scales) @ q_a.T.roll(1, 0), torch.diag(scales.flip(0)) @ q_b.T


@pytest.fixture(scope="module")
def seeds():
    """Two SAEs of one "hook", different seeds and batch orders."""
    config = SAEConfig(24, 96, "topk", k=3)
    (first,) = train(config, View(torch.eye(24)), TrainConfig(seed=0, **SETTINGS), progress=False)
    (second,) = train(config, View(torch.eye(24), offset=10**6), TrainConfig(seed=1, **SETTINGS), progress=False)
    return first, second


@pytest.fixture(scope="module")
def models():
    """(SAE of view A, SAE of view B, the two maps): two "models" of one planted code."""
    map_a, map_b = _views()
    (sae_a,) = train(SAEConfig(24, 96, "topk", k=3), View(map_a), TrainConfig(seed=2, **SETTINGS), progress=False)
    (sae_b,) = train(SAEConfig(36, 128, "topk", k=3), View(map_b, 10**6), TrainConfig(seed=3, **SETTINGS),
                     progress=False)
    return sae_a, sae_b, map_a, map_b


def test_two_seeds_share_most_latents_and_an_untrained_sae_shares_none(seeds):
    first, second = seeds
    stable = seed_stability(first, second, threshold=0.7)
    assert stable.match.shared > 0.75 and stable.match.null_shared < 0.05
    untrained = seed_stability(SAE(SAEConfig(24, 96, "topk", k=3), seed=5), second, threshold=0.7)
    assert untrained.match.shared < 0.1  # 96 random directions in 24 dimensions
    assert stable.to_json()["match"]["shared"] == stable.match.shared


def test_paired_decoder_svcca_of_the_true_matching_beats_its_null_and_a_random_one_does_not(seeds):
    first, second = seeds
    found = seed_stability(first, second).svcca
    assert found.value > 0.8 and found.value > found.null_high + 0.3 and found.null_mean < 0.55
    assert found.p_value == pytest.approx(1 / 21)  # above all 20 shuffles
    random_pairs = torch.stack([torch.arange(96), torch.randperm(96, generator=torch.Generator().manual_seed(0))], 1)
    chance = paired_decoder_svcca(first.W_dec.detach(), second.W_dec.detach(), random_pairs)
    assert chance.value < chance.null_high and chance.p_value > 0.05
    with pytest.raises(ConfigError, match="more pairs than dimensions"):
        paired_decoder_svcca(first.W_dec.detach(), second.W_dec.detach(), random_pairs[:24])


def _held_out(count: int = 4096, step: int = 10**7) -> tuple[torch.Tensor, torch.Tensor]:
    return DATA.sample(step, batch_size=count)


def _best_feature(sae: SAE, activations: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """[d_sae] the true feature each latent correlates with most."""
    from mechscope.compare.features import activation_similarity

    return activation_similarity(encode_rows(sae, activations), codes).argmax(1)


def test_cross_model_matches_pair_latents_of_the_same_true_feature(models):
    sae_a, sae_b, map_a, map_b = models
    x, codes = _held_out()
    found = cross_model_matches(sae_a, x @ map_a, sae_b, x @ map_b, threshold=0.5)
    match = found.match
    assert found.tokens == 4096 and found.silent_a + found.firing_a == 96 and found.silent_b + found.firing_b == 128
    assert len(match.pairs) == min(found.firing_a, found.firing_b)
    assert len(match.unmatched_b) == found.firing_b - len(match.pairs) >= 128 - 96 - found.silent_b
    assert match.shared > 0.7 and match.mean_similarity > match.null_mean + 0.5  # the MCC against random pairs
    best_a, best_b = _best_feature(sae_a, x @ map_a, codes), _best_feature(sae_b, x @ map_b, codes)
    shared = match.pairs[match.similarity > 0.5]
    same = (best_a[shared[:, 0]] == best_b[shared[:, 1]]).double().mean()
    assert same > 0.95  # a shared pair tracks one true feature on both sides
    assert found.svcca is not None and found.svcca.value > found.svcca.null_high
    # Control: B's rows shuffled (not the same tokens), so no latent of A correlates with any of B.
    assert found.control_shared < 0.05 and found.control_mean < 0.1


def test_silent_latents_are_counted_and_left_out(models):
    sae_a, sae_b, map_a, map_b = models
    muted = SAE(sae_b.cfg)
    muted.load_state_dict(sae_b.state_dict())
    with torch.no_grad():
        muted.b_enc[:5] = -1e6  # latents 0..4 never fire
    x, _ = _held_out(1024)
    found = cross_model_matches(sae_a, x @ map_a, muted, x @ map_b)
    assert found.silent_b >= 5
    used = set(found.match.pairs[:, 1].tolist()) | set(found.match.unmatched_b.tolist())
    assert not used & set(range(5)) and len(used) == found.firing_b
    rare = cross_model_matches(sae_a, x @ map_a, muted, x @ map_b, min_firing=20, control=False)
    assert rare.silent_b > found.silent_b and rare.min_firing == 20 and rare.control_shared is None
    fires = (encode_rows(muted, x @ map_b) > 0).sum(0)
    assert set(rare.match.pairs[:, 1].tolist()) | set(rare.match.unmatched_b.tolist()) == set(
        (fires >= 20).nonzero().flatten().tolist())
    with pytest.raises(ConfigError, match="same tokens row for row"):
        cross_model_matches(sae_a, x @ map_a, sae_b, x[:10] @ map_b)


def _word_rows(x: torch.Tensor, codes: torch.Tensor, map_a: torch.Tensor, map_b: torch.Tensor) -> AlignedRows:
    """Aligned rows whose token is the word of the row's strongest true feature ("w12"; "none"
    when no feature is on), 64 tokens a text, both "tokenizers" cutting at the same spaces."""
    words = [f"w{int(j)}" if float(v) > 0 else "none" for v, j in zip(*codes.max(1))]
    texts, text_index, starts, ends = [], [], [], []
    for first in range(0, len(words), 64):
        text, index = "", len(texts)
        for word in words[first:first + 64]:
            starts.append(len(text) + 1)
            text += " " + word
            ends.append(len(text))
            text_index.append(index)
        texts.append(text)
    starts = torch.tensor(starts)
    return AlignedRows(x @ map_a, x @ map_b, tuple(texts), torch.tensor(text_index), starts, starts.clone(),
                       torch.tensor(ends), len(words), 0)


def test_feature_transfer_shows_both_sides_and_their_explanations_agree(models):
    sae_a, sae_b, map_a, map_b = models
    x, codes = _held_out()
    rows = _word_rows(x, codes, map_a, map_b)
    # A latent that fires on one token correlates 1 with any that fires on that token alone: such
    # pairs would top the list without meaning anything, so only latents firing 20+ times are paired.
    match = cross_model_matches(sae_a, rows.a, sae_b, rows.b, min_firing=20, control=False).match
    transfer = feature_transfer(match, sae_a, sae_b, rows, top=8, contexts=5, explainer=explain_by_tokens)
    assert len(transfer.features) == 8
    first = transfer.features[0]
    assert (first.latent_a, first.latent_b) == tuple(match.pairs[0].tolist()) and len(first.contexts_a) == 5
    assert first.contexts_a[0].endswith("]") and first.top_a == tuple(sorted(first.top_a, reverse=True))
    assert sum(f.shared_top for f in transfer.features) / 8 > 0.5 > transfer.chance_shared_top
    assert transfer.agree_rate >= 0.75 and transfer.null_agree_rate <= 0.25
    assert all(f.agreement_kind == "lexicon" for f in transfer.features if f.agreement is not None)
    assert f"A {first.latent_a} <-> B {first.latent_b}" in transfer.to_text()
    assert transfer.to_json()["features"][0]["latent_b"] == first.latent_b
    assert feature_transfer(match, sae_a, sae_b, rows, top=2).agree_rate is None  # no explainer, no verdict


def test_explanations_agree_by_their_words():
    assert explanation_agreement('" the", "a"', '"The"') == (0.5, "lexicon")
    assert explanation_agreement('"of"', 'after: "of"') == (0.0, "lexicon")  # different rules
    assert explanation_agreement("legal language", "legal text")[1] == "words"


def test_aligned_rows_on_tiny_models_keep_where_each_row_is():
    llama, gpt2 = mechscope.load_tiny("llama"), mechscope.load_tiny("gpt2")
    texts = ["the cat sat on the mat and looked at the door", "a quick brown fox jumps over the lazy dog again"]
    rows = aligned_rows(llama, gpt2, texts, names.resid_post(1), names.resid_post(0), progress=False)
    assert rows.pairs == sum(map(len, texts)) and len(rows.a) == rows.pairs - rows.dropped  # byte tokenizers
    assert rows.a.shape[1] == llama.cfg.d_model and rows.b.shape[1] == gpt2.cfg.d_model
    row = int((rows.text_index == 1).nonzero()[2])
    assert rows.token(row, "a") == rows.token(row, "b") == texts[1][int(rows.end[row]) - 1]
    assert rows.context(row, "b").endswith(f"[{rows.token(row, 'b')}]")
    with pytest.raises(ConfigError, match="only 3 positions"):
        aligned_rows(llama, gpt2, ["abc"], names.resid_post(0), names.resid_post(0), progress=False)
