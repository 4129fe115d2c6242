"""Toy Models of Superposition: the move into superposition as features get sparser."""

import pytest

from mechscope.toys import ToyConfig, train_toy_models


@pytest.fixture(scope="module")
def result():
    return train_toy_models(ToyConfig(sparsities=(0.0, 0.7, 0.99)), progress=False)


def test_dense_features_get_one_dimension_each_and_sparse_ones_share(result):
    dense, medium, sparse = result.represented()
    dims = result.dimensions_per_feature()
    m = result.config.n_hidden
    # Dense: about as many features as dimensions, each with its own (Elhage et al., fig. 3).
    assert dense <= m + 1 and dims[0] > 0.9
    # Sparser: more features than dimensions; at S=0.7 they pair up antipodally (1/2 dimension).
    assert medium > m and dims[1] == pytest.approx(0.5, abs=0.08)
    assert sparse >= 3 * m and dims[2] < 0.3
    # Per-feature geometry: in the dense model the fully represented (most important) features
    # own a whole dimension; at S=0.7 the represented ones mostly hold half of one.
    norms, dimensionality = result.feature_norms(), result.feature_dimensionality()
    assert dimensionality[0][norms[0] > 0.9].min() > 0.9
    assert dimensionality[1][norms[1] > 0.5].median() == pytest.approx(0.5, abs=0.1)


def test_plot_has_both_panels(result):
    figure = result.plot()
    assert len(figure.data) == 2 and figure.data[1].type == "heatmap"
