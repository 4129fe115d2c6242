"""Matching the latents of two dictionaries: which features two SAEs (two seeds, two models) share.

Two dictionaries are compared through a similarity matrix S [n_a, n_b] between their latents:

- :func:`decoder_similarity`: the cosine of their decoder rows (same model and hook: same space);
- :func:`activation_similarity`: the Pearson correlation of their activations on the same tokens
  (across models, on positions aligned by :mod:`mechscope.compare.align`).

:func:`match_latents` pairs them one-to-one by optimal assignment (the Hungarian algorithm,
``scipy.optimize.linear_sum_assignment``, maximising the total similarity); dictionaries of
different widths are allowed and the latents left over are reported. It reports the pairs, the
shared fraction (pairs above ``threshold``), the mean similarity of the pairs (for correlations:
the MCC, mean correlation coefficient) and the same statistics for a random pairing, the null.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mechscope.errors import ConfigError
from mechscope.validate import check_int, check_number


def decoder_similarity(decoder_a: torch.Tensor, decoder_b: torch.Tensor) -> torch.Tensor:
    """[n_a, n_b] cosine of decoder rows ``decoder_a`` [n_a, d] and ``decoder_b`` [n_b, d]."""
    if decoder_a.dim() != 2 or decoder_b.dim() != 2 or decoder_a.shape[1] != decoder_b.shape[1]:
        raise ConfigError(f"decoder cosines need two [latents, d] matrices in one space; got "
                          f"{tuple(decoder_a.shape)} and {tuple(decoder_b.shape)} (across models, match by "
                          "activation_similarity on aligned tokens)")
    a = torch.nn.functional.normalize(decoder_a.double(), dim=1)
    b = torch.nn.functional.normalize(decoder_b.double(), dim=1)
    return a @ b.T


def activation_similarity(activations_a: torch.Tensor, activations_b: torch.Tensor) -> torch.Tensor:
    """[n_a, n_b] Pearson correlation of latent activations [tokens, n_a] and [tokens, n_b] on
    the same tokens; a latent that never varies correlates 0 with everything."""
    if activations_a.dim() != 2 or activations_b.dim() != 2 or activations_a.shape[0] != activations_b.shape[0]:
        raise ConfigError(f"activation correlations need [tokens, latents] of the same tokens; got "
                          f"{tuple(activations_a.shape)} and {tuple(activations_b.shape)}")
    if activations_a.shape[0] < 3:
        raise ConfigError(f"at least 3 tokens are needed for correlations; got {activations_a.shape[0]}")

    def standardised(values: torch.Tensor) -> torch.Tensor:
        centred = values.double() - values.double().mean(0)
        scale = centred.norm(dim=0)
        return torch.where(scale > 0, centred / scale.clamp_min(1e-300), torch.zeros_like(centred))

    return standardised(activations_a).T @ standardised(activations_b)


@dataclass(frozen=True)
class LatentMatch:
    """``pairs`` [m, 2] (latent of A, latent of B), ``similarity`` [m] of each pair, sorted by
    similarity; ``shared`` the fraction of the smaller dictionary matched above ``threshold``;
    ``mean_similarity`` over the pairs (the MCC for correlations); the same for a random
    pairing (``null_shared``, ``null_mean``); the latents no pair uses (``unmatched_a``,
    ``unmatched_b``: the wider dictionary's extra latents)."""

    pairs: torch.Tensor
    similarity: torch.Tensor
    threshold: float
    shared: float
    mean_similarity: float
    null_shared: float
    null_mean: float
    unmatched_a: torch.Tensor
    unmatched_b: torch.Tensor

    def to_json(self) -> dict:
        return {"threshold": self.threshold, "shared": self.shared, "mean_similarity": self.mean_similarity,
                "null_shared": self.null_shared, "null_mean": self.null_mean, "pairs": len(self.pairs),
                "unmatched_a": len(self.unmatched_a), "unmatched_b": len(self.unmatched_b)}


def match_latents(similarity: torch.Tensor, threshold: float = 0.7, seed: int = 0) -> LatentMatch:
    """The one-to-one pairing of maximal total ``similarity`` [n_a, n_b] (see the module docstring)."""
    from scipy.optimize import linear_sum_assignment

    if similarity.dim() != 2 or min(similarity.shape) < 1:
        raise ConfigError(f"similarity must be a non-empty [n_a, n_b] matrix; got {tuple(similarity.shape)}")
    if not bool(torch.isfinite(similarity).all()):
        raise ConfigError("similarity holds NaN or inf")
    check_number("threshold", threshold, -1, 1)
    check_int("seed", seed, 0)
    rows, columns = linear_sum_assignment(similarity.double().numpy(), maximize=True)
    rows, columns = torch.as_tensor(rows), torch.as_tensor(columns)
    values = similarity[rows, columns].double()
    order = values.argsort(descending=True)
    rows, columns, values = rows[order], columns[order], values[order]
    generator = torch.Generator().manual_seed(seed)
    n = min(similarity.shape)
    random_rows = torch.randperm(similarity.shape[0], generator=generator)[:n]
    random_columns = torch.randperm(similarity.shape[1], generator=generator)[:n]
    null = similarity[random_rows, random_columns].double()
    used_a, used_b = set(rows.tolist()), set(columns.tolist())
    return LatentMatch(torch.stack([rows, columns], 1), values, threshold, float((values > threshold).double().mean()),
                       float(values.mean()), float((null > threshold).double().mean()), float(null.mean()),
                       torch.tensor([i for i in range(similarity.shape[0]) if i not in used_a], dtype=torch.long),
                       torch.tensor([j for j in range(similarity.shape[1]) if j not in used_b], dtype=torch.long))


__all__ = ["LatentMatch", "activation_similarity", "decoder_similarity", "match_latents"]
