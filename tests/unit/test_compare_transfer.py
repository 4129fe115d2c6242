"""Transfer through a stitch on known answers: a probe planted in A carries through a planted map
into a wider B with B's native accuracy, and falls to chance through a shuffled stitch or from an
unrelated B; the probe folded into B scores exactly as A's probe on the stitched rows. Steering a
tiny model with its own direction carried through a stitch of itself matches the native
direction's effect at equal KL, each search reaching its KL within tolerance (also into another
model); bad input is refused with the reason."""

import pytest
import torch

import mechscope
from mechscope.compare.grid import aligned_activations
from mechscope.compare.stitch import fit_affine
from mechscope.compare.transfer import (
    model_probe_transfer,
    probe_transfer,
    scale_for_kl,
    steering_transfer,
    transfer_direction,
    transfer_probe,
)
from mechscope.errors import ConfigError
from mechscope.hooks import names
from mechscope.probes.datasets import probe_dataset
from mechscope.probes.linear import train_probe
from mechscope.probes.sweep import prompt_activations_at
from mechscope.steering.direction import diff_in_means
from mechscope.steering.evaluate import LogitBehaviour

D_A, D_B = 16, 24


def planted(seed: int, d_b: int = D_B, related: bool = True):
    """Activations of A [n, 16] with the label planted along one direction (Bayes accuracy about
    0.89), and B = A @ R + noise (related) or B with its own label direction and nothing else of
    A's (unrelated); the stitch's pairs are fresh unlabelled draws."""
    generator = torch.Generator().manual_seed(seed)
    u = torch.nn.functional.normalize(torch.randn(D_A, generator=generator), dim=0)
    v = torch.nn.functional.normalize(torch.randn(d_b, generator=generator), dim=0)
    rotation = torch.randn(D_A, d_b, generator=generator)

    def draw(n):
        labels = torch.randint(0, 2, (n,), generator=generator)
        sign = (2 * labels[:, None] - 1).float()
        a = torch.randn(n, D_A, generator=generator) + 1.2 * sign * u
        b = (a @ rotation + 0.3 * torch.randn(n, d_b, generator=generator) if related
             else torch.randn(n, d_b, generator=generator) + 1.2 * sign * v)
        return a, b, labels

    (train_a, train_b, train_y), (test_a, test_b, test_y), (pairs_a, pairs_b, _) = draw(1000), draw(1000), draw(2000)
    if not related:
        pairs_b = torch.randn(2000, d_b, generator=generator)
    return train_a, train_b, train_y, test_a, test_b, test_y, pairs_a, pairs_b


def test_a_planted_probe_transfers_through_a_planted_map_and_not_through_a_shuffled_one():
    result = probe_transfer(*planted(0))
    assert result.source > 0.85 and result.native > 0.85 and result.stitch_r2 > 0.95
    assert abs(result.transferred - result.native) < 0.03
    assert result.null < 0.6 and abs(result.null - result.chance) < 0.06
    assert (result.n_train, result.n_test, result.n_pairs) == (1000, 1000, 2000)
    assert result.to_json()["transferred"] == result.transferred


def test_an_unrelated_model_gets_no_transfer():
    # B reads the label its own way: its native probe works, A's probe through the stitch does not
    result = probe_transfer(*planted(1, d_b=64, related=False))
    assert result.native > 0.85 and result.stitch_r2 < 0.05
    assert result.transferred < result.native - 0.25 and abs(result.transferred - result.chance) < 0.15
    # B holds nothing of A nor of the label: everything at chance
    train_a, train_b, train_y, test_a, test_b, test_y, pairs_a, pairs_b = planted(2, related=False)
    generator = torch.Generator().manual_seed(3)
    result = probe_transfer(train_a, torch.randn(1000, D_B, generator=generator), train_y, test_a,
                            torch.randn(1000, D_B, generator=generator), test_y, pairs_a, pairs_b)
    assert abs(result.transferred - result.chance) < 0.06 and abs(result.native - result.chance) < 0.06


def test_the_folded_probe_scores_as_the_probe_on_the_stitched_rows():
    train_a, train_b, train_y, _, test_b, _, pairs_a, pairs_b = planted(4)
    probe = train_probe(train_a, train_y, "mass_mean")
    stitch = fit_affine(pairs_b, pairs_a)
    folded = transfer_probe(probe, stitch)
    assert folded.d == D_B and folded.kind == "mass_mean"
    assert torch.allclose(folded.score(test_b), probe.score(stitch(test_b).float()), atol=1e-4)
    with pytest.raises(ConfigError, match="fit the stitch from B to A"):
        transfer_probe(probe, fit_affine(pairs_a, pairs_b))


def test_bad_probe_input_is_refused():
    train_a, train_b, train_y, test_a, test_b, test_y, pairs_a, pairs_b = planted(5)
    with pytest.raises(ConfigError, match="train_a has 1000 rows and train_b 999"):
        probe_transfer(train_a, train_b[:999], train_y, test_a, test_b, test_y, pairs_a, pairs_b)
    with pytest.raises(ConfigError, match="pairs_b has width 16, but the other activations of its model have 24"):
        probe_transfer(train_a, train_b, train_y, test_a, test_b, test_y, pairs_a, pairs_a)
    with pytest.raises(ConfigError, match="kind must be one of: logistic, mass_mean"):
        probe_transfer(train_a, train_b, train_y, test_a, test_b, test_y, pairs_a, pairs_b, kind="svm")


@pytest.fixture(scope="module")
def tiny():
    """(tiny llama, tiny gpt2, sentiment texts, llama's sentiment difference in means at layer 1)."""
    llama, gpt2 = mechscope.load_tiny("llama"), mechscope.load_tiny("gpt2")
    data = probe_dataset("sentiment").head(48)
    hook = names.resid_post(1)
    found = prompt_activations_at(llama, data.texts, [hook], -1, False, 48, False)[hook]
    return llama, gpt2, data.texts, diff_in_means(found[data.labels == 1], found[data.labels == 0])


PROMPTS = ["the weather today is", "she opened the door and", "numbers and letters are", "a long time ago"]


def test_a_probe_transfers_from_a_model_to_itself(tiny):
    llama, _, texts, _ = tiny
    result = model_probe_transfer(llama, llama, texts[:12], 1, 1, batch_size=64, limit=128)
    assert (result.n_train, result.n_test) == (128, 128)
    assert result.stitch_r2 > 0.999 and result.native == result.source
    assert abs(result.transferred - result.native) < 0.03 and result.null < 0.65
    with pytest.raises(ConfigError, match="dataset must be one of: sentiment, facts"):
        model_probe_transfer(llama, llama, texts[:12], 1, 1, dataset="moods")


def test_steering_through_a_stitch_of_itself_matches_the_native_direction_at_equal_kl(tiny):
    llama, gpt2, texts, direction = tiny
    behaviour = LogitBehaviour(PROMPTS, llama.tokenizer.encode("g", add_special_tokens=False))
    pairs = aligned_activations(llama, llama, texts[:12], [1], [1], progress=False)
    for target in (0.05, 0.2):
        result = steering_transfer(llama, 1, direction, fit_affine(pairs.a[1], pairs.b[1]), direction, behaviour,
                                   PROMPTS, target_kl=target, tolerance=0.05)
        for arm in (result.native, result.transferred, result.random):
            assert abs(arm.kl - target) <= 0.05 * target and arm.steps <= 40
        assert result.cosine > 0.999 and result.native.scale == pytest.approx(result.transferred.scale, rel=0.02)
        assert abs(result.native.effect) > 0.05
        assert result.transferred.effect == pytest.approx(result.native.effect, rel=0.05)
    # into another model: the searches still land on the KL, whatever the effects are
    pairs = aligned_activations(llama, gpt2, texts[:12], [1], [1], progress=False)
    found = prompt_activations_at(gpt2, texts, [names.resid_post(1)], -1, False, 48, False)[names.resid_post(1)]
    native = diff_in_means(found[0::2], found[1::2])  # sentiment texts alternate positive, negative
    result = steering_transfer(gpt2, 1, direction, fit_affine(pairs.a[1], pairs.b[1]), native, behaviour, PROMPTS)
    for arm in (result.native, result.transferred, result.random):
        assert abs(arm.kl - 0.1) <= 0.005
    assert -1 <= result.cosine <= 1 and result.to_json()["random"]["kl"] == result.random.kl


def test_the_kl_search_on_a_known_curve():
    scale, kl, steps = scale_for_kl(lambda s: s * s, 4.0, 0.1, 1e-3, 60)
    assert scale == pytest.approx(2.0, rel=1e-3) and abs(kl - 4.0) <= 4e-3 and steps <= 60
    with pytest.raises(ConfigError, match="target KL 4.0 was not reached"):
        scale_for_kl(lambda s: min(s, 1.0), 4.0, 0.1, 0.05, 10)


def test_bad_steering_input_is_refused(tiny):
    llama, _, _, direction = tiny
    behaviour = LogitBehaviour(PROMPTS, [100])
    identity = fit_affine(torch.randn(200, 64), torch.randn(200, 64))
    with pytest.raises(ConfigError, match="target_kl must be greater than 0"):
        steering_transfer(llama, 1, direction, identity, direction, behaviour, PROMPTS, target_kl=0.0)
    with pytest.raises(ConfigError, match="the stitch maps into width 32 but model B has d_model 64"):
        steering_transfer(llama, 1, direction, fit_affine(torch.randn(200, 64), torch.randn(200, 32)), direction,
                          behaviour, PROMPTS)
    with pytest.raises(ConfigError, match=r"direction has shape \(10,\) but the stitch A -> B reads width 64"):
        steering_transfer(llama, 1, torch.randn(10), identity, direction, behaviour, PROMPTS)
    with pytest.raises(ConfigError, match="native_b has width 10 but model B has d_model 64"):
        steering_transfer(llama, 1, direction, identity, torch.randn(10), behaviour, PROMPTS)
    with pytest.raises(ConfigError, match="reads width 64"):
        transfer_direction(torch.randn(8), identity)
