"""Cross-model comparison: the similarity grid on ~20k aligned tokens and Hungarian matching of
4,608 x 4,608 latents, each against the slower way side by side.

    .venv/bin/python benchmarks/compare.py [--tokens 20000] [--latents 4608]

Grid: SmolLM2-135M against Gemma-3-270M (30 x 18 layers) on corpus texts until ``--tokens``
aligned positions are collected (the time to run both models and align is reported apart), then
linear CKA for every layer pair without nulls, and one cell with a 20-shuffle null. Beside it, one
cell by the Gram-matrix estimator at the largest n whose two [n, n] matrices fit (the features
form needs no [n, n] matrix: at 20k tokens the Gram form would need 6.4 GB per matrix).

Matching: a similarity matrix between two 4,608-latent dictionaries (a planted permutation plus
noise), matched by ``match_latents`` (Hungarian, with its random-pairing null) against a greedy
matching (best remaining pair first), with the share of the planted pairs each recovers.
"""

from __future__ import annotations

import argparse
import time

import torch

import mechscope
from mechscope.compare import aligned_activations, match_latents, similarity_grid
from mechscope.compare.grid import scaled
from mechscope.compare.runs import corpus_texts
from mechscope.compare.similarity import _cka as gram_cka  # CKA of two Gram matrices
from mechscope.compare.similarity import linear_cka


def texts_for(smol, gemma, tokens: int) -> list[str]:
    """Enough corpus texts for about ``tokens`` aligned positions (SmolLM2 tokens per text x the
    aligned share measured on the first texts)."""
    texts = corpus_texts(4000, 600)
    sample = aligned_activations(smol, gemma, texts[:20], [0], [0], progress=False)
    per_text = sample.pairs / 20
    return texts[:int(tokens / per_text * 1.05) + 1]


def grid_rows(tokens: int) -> None:
    smol, gemma = mechscope.load("smollm2-135m-instruct"), mechscope.load("gemma-3-270m")
    texts = texts_for(smol, gemma, tokens)
    started = time.perf_counter()
    activations = aligned_activations(smol, gemma, texts, progress=True)
    align_seconds = time.perf_counter() - started
    rows = len(activations.a[0])
    started = time.perf_counter()
    similarity_grid(activations, "linear_cka", progress=False)
    grid_seconds = time.perf_counter() - started
    started = time.perf_counter()
    one = similarity_grid(type(activations)({15: activations.a[15]}, {9: activations.b[9]}, activations.pairs,
                                            activations.dropped), "linear_cka", permutations=20, progress=False)
    null_seconds = time.perf_counter() - started
    x, y = scaled(activations.a[15], "standardise"), scaled(activations.b[9], "standardise")
    gram_rows = min(rows, 8000)
    started = time.perf_counter()
    features_value = linear_cka(x[:gram_rows], y[:gram_rows])
    features_seconds = time.perf_counter() - started
    started = time.perf_counter()
    gram_value = gram_cka(x[:gram_rows] @ x[:gram_rows].T, y[:gram_rows] @ y[:gram_rows].T)
    gram_seconds = time.perf_counter() - started
    print(f"\n{len(texts)} texts: {activations.pairs:,} aligned positions, {activations.dropped} outlier rows dropped, "
          f"{rows:,} rows; models + alignment {align_seconds:.1f} s")
    print("\n| step | time |\n|---|---|")
    print(f"| linear CKA grid, 30 x 18 cells, {rows:,} rows, no nulls | {grid_seconds:.1f} s "
          f"({grid_seconds / 540 * 1000:.0f} ms per cell) |")
    print(f"| one cell with a 20-shuffle null on {one.null_rows:,} rows | {null_seconds:.2f} s |")
    print(f"| one cell at {gram_rows:,} rows, features form | {features_seconds:.3f} s |")
    print(f"| the same cell, Gram form (two [n, n] matrices) | {gram_seconds:.3f} s "
          f"({gram_seconds / features_seconds:.0f}x; values {features_value:.6f} / {gram_value:.6f}) |")


def greedy(similarity: torch.Tensor) -> torch.Tensor:
    """Best remaining pair first: [min(n_a, n_b), 2]."""
    order = similarity.flatten().argsort(descending=True)
    n_b = similarity.shape[1]
    used_a, used_b, pairs = set(), set(), []
    for index in order.tolist():
        a, b = divmod(index, n_b)
        if a not in used_a and b not in used_b:
            used_a.add(a)
            used_b.add(b)
            pairs.append((a, b))
            if len(pairs) == min(similarity.shape):
                break
    return torch.tensor(pairs)


def matching_rows(latents: int) -> None:
    generator = torch.Generator().manual_seed(0)
    planted = torch.randperm(latents, generator=generator)
    # Planted pairs at similarity 0.5 + noise, every other entry noise: hard enough that a greedy
    # pass and the optimal assignment disagree on some pairs.
    similarity = 0.12 * torch.randn(latents, latents, generator=generator, dtype=torch.float64)
    similarity[torch.arange(latents), planted] += 0.5
    started = time.perf_counter()
    match = match_latents(similarity, threshold=0.4)
    hungarian_seconds = time.perf_counter() - started
    started = time.perf_counter()
    pairs = greedy(similarity)
    greedy_seconds = time.perf_counter() - started

    def recovered(found: torch.Tensor) -> float:
        return float((planted[found[:, 0]] == found[:, 1]).double().mean())

    total = lambda found: float(similarity[found[:, 0], found[:, 1]].sum())  # noqa: E731
    print(f"\n| matching {latents:,} x {latents:,} | time | planted pairs recovered | total similarity |")
    print("|---|---|---|---|")
    print(f"| match_latents (Hungarian + random-pairing null) | {hungarian_seconds:.1f} s | {recovered(match.pairs):.4f} | "
          f"{total(match.pairs):.1f} |")
    print(f"| greedy, best pair first | {greedy_seconds:.1f} s | {recovered(pairs):.4f} | {total(pairs):.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=20_000)
    parser.add_argument("--latents", type=int, default=4608)
    parser.add_argument("--skip-grid", action="store_true")
    args = parser.parse_args()
    print(f"torch threads: {torch.get_num_threads()}")
    matching_rows(args.latents)
    if not args.skip_grid:
        grid_rows(args.tokens)


if __name__ == "__main__":
    main()
