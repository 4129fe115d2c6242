"""Synthetic ground truth: activations built from a known sparse dictionary, and how well a
trained dictionary recovers it."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SparseDictionaryData:
    """x = sum_i a_i d_i over n_features unit directions d_i in d dimensions; each feature is on
    with probability ``p_active`` and then has magnitude 1 + |N(0, 0.5)|. ``batch(step)`` is a
    deterministic function of (seed, step), so training runs can resume anywhere."""

    n_features: int
    d: int
    p_active: float = 0.02
    batch_size: int = 1024
    seed: int = 0
    d_out: int | None = None  # set: batch() gives (x, y) with y from a second dictionary (transcoders)

    @property
    def dictionary(self) -> torch.Tensor:
        """[n_features, d] the true unit directions."""
        generator = torch.Generator().manual_seed(self.seed)
        directions = torch.randn(self.n_features, self.d, generator=generator)
        return directions / directions.norm(dim=1, keepdim=True)

    def sample(self, step: int, batch_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(x [batch, d], true feature activations [batch, n_features]) for ``step``."""
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + step + 1)
        size = batch_size or self.batch_size
        active = torch.rand(size, self.n_features, generator=generator) < self.p_active
        magnitude = 1 + (0.5 * torch.randn(size, self.n_features, generator=generator)).abs()
        activations = active * magnitude
        return activations @ self.dictionary, activations

    @property
    def output_dictionary(self) -> torch.Tensor:
        """[n_features, d_out] the directions the same features take in the target."""
        generator = torch.Generator().manual_seed(self.seed + 7919)
        directions = torch.randn(self.n_features, self.d_out or self.d, generator=generator)
        return directions / directions.norm(dim=1, keepdim=True)

    def batch(self, step: int):
        x, activations = self.sample(step)
        return x if self.d_out is None else (x, activations @ self.output_dictionary)


def mean_max_cosine(learned: torch.Tensor, true: torch.Tensor) -> float:
    """For each true direction [n_true, d], the best cosine with any learned direction
    [n_learned, d], averaged: 1 means every true feature has a latent pointing its way."""
    learned = learned.detach() / learned.detach().norm(dim=1, keepdim=True).clamp_min(1e-12)
    true = true / true.norm(dim=1, keepdim=True)
    return float((true @ learned.detach().T).max(dim=1).values.mean())


def mcc(learned_activations: torch.Tensor, true_activations: torch.Tensor) -> float:
    """Mean correlation coefficient: Pearson correlations between true features [samples,
    n_true] and latents [samples, n_learned], each true feature matched one-to-one to a latent
    greedily by the highest remaining correlation, averaged over true features."""
    def standardise(values: torch.Tensor) -> torch.Tensor:
        centred = values.double() - values.double().mean(0)
        return centred / centred.norm(dim=0).clamp_min(1e-12)

    correlation = (standardise(true_activations).T @ standardise(learned_activations)).abs()  # [n_true, n_learned]
    matched = []
    work = correlation.clone()
    for _ in range(min(work.shape)):
        index = int(work.argmax())
        row, column = divmod(index, work.shape[1])
        matched.append(float(correlation[row, column]))
        work[row, :] = -1
        work[:, column] = -1
    return sum(matched) / correlation.shape[0]
