"""Comparing models (issue 18, in progress): positions aligned across tokenizers,
representation similarity with null baselines, latents matched across dictionaries (see
docs/compare.md)."""

from mechscope.compare.align import Alignment, aligned_positions, typical_rows
from mechscope.compare.features import LatentMatch, activation_similarity, decoder_similarity, match_latents
from mechscope.compare.grid import (
    AlignedActivations,
    SimilarityGrid,
    aligned_activations,
    grid_figure,
    similarity_grid,
)
from mechscope.compare.similarity import (
    METRICS,
    Metric,
    Similarity,
    compare_representations,
    linear_cka,
    mutual_knn,
    procrustes_distance,
    pwcca,
    rbf_cka,
    svcca,
    unbiased_hsic,
)
from mechscope.compare.stitch import AffineMap, fit_affine, held_out_r2, r_squared

__all__ = ["AlignedActivations", "SimilarityGrid", "aligned_activations", "grid_figure", "similarity_grid",
           "AffineMap", "fit_affine", "held_out_r2", "r_squared", "LatentMatch", "activation_similarity", "decoder_similarity", "match_latents", "Alignment", "METRICS", "Metric", "Similarity", "aligned_positions", "compare_representations",
           "linear_cka", "mutual_knn", "procrustes_distance", "pwcca", "rbf_cka", "svcca", "typical_rows",
           "unbiased_hsic"]
