"""Comparing models: positions aligned across tokenizers, representation similarity with null
baselines, latents matched across seeds and models, probes and steering carried through a
stitch, head roles and circuits mapped by role (see docs/compare.md)."""

from mechscope.compare.align import Alignment, aligned_positions, typical_rows
from mechscope.compare.circuit_transfer import (
    CircuitTransfer,
    RoleMapping,
    circuit_faithfulness,
    circuit_heads,
    head_circuit,
    map_by_role,
)
from mechscope.compare.features import LatentMatch, activation_similarity, decoder_similarity, match_latents
from mechscope.compare.grid import (
    AlignedActivations,
    SimilarityGrid,
    aligned_activations,
    grid_figure,
    similarity_grid,
)
from mechscope.compare.latents import (
    AlignedRows,
    CrossModelMatch,
    FeatureTransfer,
    PairedSvcca,
    SeedStability,
    TransferredFeature,
    aligned_rows,
    cross_model_matches,
    explain_by_tokens,
    feature_transfer,
    paired_decoder_svcca,
    seed_stability,
)
from mechscope.compare.roles import (
    ATTENTION_ROLES,
    IOI_ROLES,
    ROLES,
    DepthComparison,
    HeadRoles,
    RoleDepths,
    RoleName,
    compare_depths,
    head_roles,
    name_mover_scores,
    s_inhibition_scores,
)
from mechscope.compare.similarity import (
    METRICS,
    Metric,
    Similarity,
    compare_representations,
    linear_cka,
    linear_hsic,
    mutual_knn,
    procrustes_distance,
    pwcca,
    rbf_cka,
    svcca,
    unbiased_hsic,
)
from mechscope.compare.stitch import AffineMap, fit_affine, held_out_r2, r_squared
from mechscope.compare.transfer import (
    ProbeTransfer,
    SteeredAtKL,
    SteeringTransfer,
    model_probe_transfer,
    probe_transfer,
    scale_for_kl,
    steering_transfer,
    transfer_direction,
    transfer_probe,
)

__all__ = ["AlignedRows", "CrossModelMatch", "FeatureTransfer", "PairedSvcca", "SeedStability", "TransferredFeature",
           "aligned_rows", "cross_model_matches", "explain_by_tokens", "feature_transfer", "paired_decoder_svcca",
           "seed_stability",
           "ProbeTransfer", "SteeredAtKL", "SteeringTransfer", "model_probe_transfer", "probe_transfer",
           "scale_for_kl", "steering_transfer", "transfer_direction", "transfer_probe",
           "CircuitTransfer", "RoleMapping", "circuit_faithfulness", "circuit_heads", "head_circuit", "map_by_role",
           "ATTENTION_ROLES", "IOI_ROLES", "ROLES", "DepthComparison", "HeadRoles", "RoleDepths", "RoleName", "compare_depths",
           "head_roles", "name_mover_scores", "s_inhibition_scores",
           "AlignedActivations", "SimilarityGrid", "aligned_activations", "grid_figure", "similarity_grid",
           "AffineMap", "fit_affine", "held_out_r2", "r_squared", "LatentMatch", "activation_similarity", "decoder_similarity", "match_latents", "Alignment", "METRICS", "Metric", "Similarity", "aligned_positions", "compare_representations",
           "linear_cka", "linear_hsic", "mutual_knn", "procrustes_distance", "pwcca", "rbf_cka", "svcca", "typical_rows",
           "unbiased_hsic"]
