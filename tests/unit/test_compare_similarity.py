"""Representation similarity on known answers: every similarity is 1 (the distance 0) under a
rotation and isotropic scaling, to 1e-6; independent Gaussians give |unbiased linear CKA| < 0.02
at n = 256 (the biased estimator would give far more) and a permutation p-value well above 0.05;
a planted shared subspace scores higher the higher its rank; the null and the interval bracket
what they should; positions align across two tokenizers only where both end a token at the same
character; bad input is refused with the reason."""

import pytest
import torch

from mechscope.compare import (
    METRICS,
    aligned_positions,
    compare_representations,
    linear_cka,
    procrustes_distance,
    rbf_cka,
    svcca,
    typical_rows,
)
from mechscope.errors import ConfigError
from mechscope.models.tiny import byte_tokenizer, word_tokenizer


def rotation(d: int, seed: int) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return q


@pytest.fixture(scope="module")
def data():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(256, 32, generator=generator, dtype=torch.float64) @ torch.diag(torch.linspace(0.2, 3, 32,
                                                                                                    dtype=torch.float64))
    return x


@pytest.mark.parametrize("metric", sorted(METRICS))
def test_a_rotated_and_scaled_copy_is_the_same_representation(data, metric):
    y = 3.7 * data @ rotation(32, 1) + 5.0  # rotation, isotropic scale and a shift
    value = METRICS[metric](data, y)
    expected = 0.0 if metric == "procrustes" else 1.0
    assert value == pytest.approx(expected, abs=1e-6)


def test_independent_gaussians_are_not_similar():
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(256, 64, generator=generator)
    y = torch.randn(256, 48, generator=generator)
    assert abs(linear_cka(x, y)) < 0.02
    biased = torch.nn.functional.cosine_similarity(  # the biased estimator: centred Gram matrices' cosine
        ((x - x.mean(0)) @ (x - x.mean(0)).T).flatten(), ((y - y.mean(0)) @ (y - y.mean(0)).T).flatten(), dim=0)
    assert float(biased) > 0.1  # what the unbiased estimator is for
    found = compare_representations(x, y, "linear_cka", permutations=50, bootstraps=20)
    assert found.p_value > 0.05 and found.low < 0 < found.high
    # SVCCA of independent data is far from 0 (chance correlations in 48+ dimensions): the null says so.
    chance = compare_representations(x, y, "svcca", permutations=20, bootstraps=20)
    assert chance.value > 0.3 and abs(chance.value - chance.null_mean) < 0.02 and chance.p_value > 0.05
    assert chance.low <= chance.value <= chance.high


def test_a_planted_shared_subspace_scores_higher_with_its_rank():
    generator = torch.Generator().manual_seed(5)
    scores = {name: [] for name in ("linear_cka", "rbf_cka", "svcca", "pwcca", "mutual_knn")}
    distances = []
    for rank in (1, 4, 16):
        shared = torch.randn(256, rank, generator=generator, dtype=torch.float64)
        x = torch.cat([shared, torch.randn(256, 32 - rank, generator=generator, dtype=torch.float64)], 1)
        y = torch.cat([shared, torch.randn(256, 32 - rank, generator=generator, dtype=torch.float64)], 1) @ rotation(32, 2)
        for name in scores:
            scores[name].append(METRICS[name](x, y))
        distances.append(procrustes_distance(x, y))
    for name, values in scores.items():
        assert values[0] < values[1] < values[2], (name, values)
    assert distances[0] > distances[1] > distances[2]
    strong = compare_representations(x, y, "linear_cka", permutations=30, bootstraps=30)
    assert strong.p_value < 0.05 and strong.null_high < strong.low <= strong.value <= strong.high


def test_positions_align_where_both_tokenizers_end_a_token():
    words, chars = word_tokenizer(8), byte_tokenizer()
    text = "t1 t2 t3"
    found = aligned_positions(words, chars, text)
    # The word tokenizer ends tokens at characters 2, 5 and 8; the byte tokenizer at every character.
    assert found.pairs == 3
    assert found.positions_a.tolist() == [1, 2, 3]  # after its BOS
    assert found.positions_b.tolist() == [2, 5, 8]  # BOS at 0, then one per character
    assert words.decode(found.ids_a[found.positions_a]).split() == ["t1", "t2", "t3"]
    with pytest.raises(ConfigError, match="only 1 positions of the text align"):
        aligned_positions(words, chars, "t1", minimum=2)


def test_outlier_rows_are_dropped_and_counted():
    a, b = torch.randn(50, 8), torch.randn(50, 8)
    a[3] *= 1000
    b[7] *= 1000
    keep, dropped = typical_rows(a, b)
    assert dropped == 2 and not keep[3] and not keep[7] and int(keep.sum()) == 48


def test_bad_input_is_refused_with_the_reason(data):
    with pytest.raises(ConfigError, match="same inputs row for row"):
        linear_cka(data, data[:10])
    with pytest.raises(ConfigError, match="at least 4 rows"):
        svcca(data[:3], data[:3])
    nan = data.clone()
    nan[0, 0] = float("nan")
    with pytest.raises(ConfigError, match="finite"):
        rbf_cka(nan, data)
    with pytest.raises(ConfigError, match="metric"):
        compare_representations(data, data, "cosine")


def test_linear_hsic_from_features_equals_the_gram_estimator():
    from mechscope.compare.similarity import linear_hsic, unbiased_hsic

    generator = torch.Generator().manual_seed(3)
    x = torch.randn(60, 7, generator=generator, dtype=torch.float64) + 3.0  # uncentred on purpose
    y = x @ torch.randn(7, 5, generator=generator, dtype=torch.float64) + torch.randn(60, 5, generator=generator,
                                                                                       dtype=torch.float64)
    gram = unbiased_hsic(x @ x.T, y @ y.T)
    assert float(linear_hsic(x, y)) == pytest.approx(float(gram), rel=1e-9)
    assert float(linear_hsic(x - x.mean(0), y)) == pytest.approx(float(gram), rel=1e-9)  # shift-invariant
