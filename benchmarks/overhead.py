"""Overhead of mechscope's hooks versus the raw HF forward, measured side by side in one run.

    python benchmarks/overhead.py [--batch 8] [--pos 128] [--repeats 7] [--model NAME]

Prints, for SmolLM2-135M-Instruct by default (batch 8 x 128 tokens, fp32, no grad):
raw HF forward, run_with_cache of every default hook point, run_with_cache of resid_post only,
and (for reference) with every attention pattern too; each as median seconds and as a ratio to
raw. Variants are interleaved round-robin so drift in machine load hits all of them alike.
Also prints the memory held by the full cache (unique tensor storage).

A full cache keeps ~1.1 GB of activations alive per call, so every call needs fresh memory.
With glibc's default settings that memory is returned to the OS when a cache is dropped and
faulted in again on the next call (hundreds of thousands of page faults). The benchmark therefore
runs twice, in child processes: once with the default allocator and once with glibc told to
keep freed memory (MALLOC_MMAP_THRESHOLD_ / MALLOC_TRIM_THRESHOLD_, see docs/performance.md).
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time

import torch
from tqdm import tqdm

import mechscope


def cache_bytes(cache) -> int:
    """Bytes of unique storage referenced by a cache (views of one tensor count once)."""
    seen, total = set(), 0
    for tensor in cache.values():
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in seen:
            seen.add(storage.data_ptr())
            total += storage.nbytes()
    return total


# glibc: serve large blocks from the heap and never trim it, so freed caches are reused.
RETAINING_ALLOCATOR = {"MALLOC_MMAP_THRESHOLD_": str(10**11), "MALLOC_TRIM_THRESHOLD_": str(10**11)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--pos", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        measure(args)
        return
    forwarded = [a for a in sys.argv[1:]]
    for label, extra_env in (("default glibc allocator", {}), ("memory-retaining allocator", RETAINING_ALLOCATOR)):
        print(f"\n=== {label} {extra_env or ''}", flush=True)
        subprocess.run([sys.executable, __file__, *forwarded, "--child", label],
                       env={**os.environ, **extra_env}, check=True)


def measure(args: argparse.Namespace) -> None:

    model = mechscope.load(args.model)
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(1000, 20000, (args.batch, args.pos), generator=generator)
    resid_post = [f"blocks.{layer}.hook_resid_post" for layer in range(model.cfg.n_layers)]

    def raw():
        with torch.no_grad():
            return model.hf_model(input_ids=tokens, use_cache=False).logits

    variants = {
        "raw HF forward": raw,
        "run_with_cache, all default hook points": lambda: model.run_with_cache(tokens),
        "run_with_cache, resid_post only": lambda: model.run_with_cache(tokens, names=resid_post),
        "run_with_cache, default + all patterns": lambda: model.run_with_cache(
            tokens, names=lambda n: not model.hook_point(n).opt_in or n.endswith("hook_pattern")),
    }
    for fn in variants.values():  # warm-up: allocator, thread pools, lazy registrations
        fn()
    times: dict[str, list[float]] = {name: [] for name in variants}
    faults: dict[str, list[int]] = {name: [] for name in variants}
    for _ in tqdm(range(args.repeats), desc="rounds"):
        for name, fn in variants.items():
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            start = time.perf_counter()
            result = fn()
            times[name].append(time.perf_counter() - start)
            faults[name].append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
            del result

    base = statistics.median(times["raw HF forward"])
    print(f"\nmodel {model.cfg.name}, batch {args.batch} x {args.pos} tokens, fp32, "
          f"{torch.get_num_threads()} threads, {args.repeats} interleaved rounds (median)")
    for name, samples in times.items():
        median = statistics.median(samples)
        print(f"  {name:<42s} {median:7.3f} s   {median / base:5.3f}x raw   "
              f"{statistics.median(faults[name]):>9.0f} page faults/call")
    _, cache = model.run_with_cache(tokens)
    print(f"  full default cache: {len(cache)} activations, {cache_bytes(cache) / 2**20:.0f} MiB held")
    _, cache = model.run_with_cache(tokens, names=resid_post)
    print(f"  resid_post cache:   {len(cache)} activations, {cache_bytes(cache) / 2**20:.0f} MiB held")


if __name__ == "__main__":
    main()
