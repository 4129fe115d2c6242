"""Cost of steering and ablation on SmolLM2-135M-Instruct, measured side by side in one run.

    python benchmarks/steering.py [--repeats 5] [--prompts 16] [--new-tokens 32]

Prints median seconds and ratios for:
- forward passes over chat-formatted prompts: plain, steered at one layer, directional ablation at
  run time (61 hooks), and the orthogonalised model (no hooks);
- greedy generation of --new-tokens tokens: plain, steered, ablated, orthogonalised, and the
  same prompts generated one at a time instead of batched.
Variants are interleaved round-robin so drift in machine load hits all of them alike.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import mechscope
from mechscope import datasets
from mechscope.steering import (
    DirectionalAblation,
    Steering,
    contrast_directions,
    generate,
    last_token_logits,
    orthogonalise,
)


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def interleaved(variants: dict, repeats: int) -> dict[str, float]:
    """Median seconds of each variant, run round-robin ``repeats`` times after one warm-up."""
    for fn in variants.values():
        fn()
    times = {name: [] for name in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            times[name].append(timed(fn))
    return {name: statistics.median(values) for name, values in times.items()}


def report(title: str, medians: dict[str, float], reference: str) -> None:
    print(f"\n{title}")
    for name, seconds in medians.items():
        print(f"  {name:<28} {seconds:8.3f} s   {seconds / medians[reference]:5.2f}x {reference}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=32)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = mechscope.load()
    harmful, harmless = datasets.load("harmful")[:32], datasets.load("harmless")[:32]
    direction = contrast_directions(model, harmful, harmless, 15, -1, chat=True, progress=False)[(15, -1)]
    steering, ablation = Steering(direction, direction.scale), DirectionalAblation(direction)
    edited = orthogonalise(model, direction)
    prompts = datasets.load("harmless", "test")[:args.prompts]
    print(f"{model.cfg.name}, {len(prompts)} chat prompts, {torch.get_num_threads()} threads, median of {args.repeats}")

    forwards = interleaved({
        "plain": lambda: last_token_logits(model, prompts, chat=True),
        "steered (1 layer)": lambda: last_token_logits(model, prompts, steering.hooks(model), chat=True),
        "ablated at run time": lambda: last_token_logits(model, prompts, ablation.hooks(model), chat=True),
        "orthogonalised weights": lambda: last_token_logits(edited, prompts, chat=True),
    }, args.repeats)
    report("forward pass", forwards, "plain")

    new = dict(max_new_tokens=args.new_tokens, progress=False)
    generation = interleaved({
        "plain (batched)": lambda: generate(model, prompts, None, **new),
        "steered (batched)": lambda: generate(model, prompts, steering, **new),
        "ablated (batched)": lambda: generate(model, prompts, ablation, **new),
        "orthogonalised (batched)": lambda: generate(edited, prompts, None, **new),
        "plain, one prompt at a time": lambda: [generate(model, p, None, **new) for p in prompts],
    }, max(1, args.repeats // 2))
    report(f"greedy generation, {args.new_tokens} new tokens", generation, "plain (batched)")


if __name__ == "__main__":
    main()
