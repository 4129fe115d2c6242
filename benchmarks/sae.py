"""Dictionary workflow throughput on SmolLM2 (blocks.15.hook_resid_post), measured in one run:
harvest vs the raw forward over the same contexts, harvest memory at two corpus sizes, and
TopK SAE training throughput from the store and on the fly.

    python benchmarks/sae.py [--contexts 128] [--steps 60]

Each variant runs in its own child process; peak memory is the peak resident set (VmHWM, reset
after the model is loaded) minus the resident set then. (The side-by-side comparison with
SAELens needs SAELens in a separate venv and is not part of this script yet.)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time

from _memory import reset_peak, status_mib

HOOK = "blocks.15.hook_resid_post"
VARIANTS = ("raw_forward", "harvest", "harvest_double", "train_store", "train_on_the_fly")


def child(variant: str, n_contexts: int, steps: int) -> None:
    import torch

    import mechscope
    from mechscope.data import ModelActivations, StoredActivations, harvest, pack, stdlib_docstrings
    from mechscope.sae import SAEConfig, TrainConfig, train

    model = mechscope.load()
    count = 2 * n_contexts if variant == "harvest_double" else n_contexts
    contexts = pack(model.tokenizer, stdlib_docstrings(), 128, n_contexts=count, seed=0)
    folder = tempfile.mkdtemp()
    if variant == "train_store":
        harvest(model, contexts, folder, [HOOK], progress=False)
    baseline = reset_peak()  # the peak model loading left is not counted
    cfg = SAEConfig(model.cfg.d_model, 4608, "topk", k=32, hook_name=HOOK)
    tokens = count * 127
    start = time.perf_counter()
    if variant == "raw_forward":
        with torch.no_grad():
            for offset in range(0, count, 8):
                model(contexts[offset:offset + 8])
    elif variant.startswith("harvest"):
        harvest(model, contexts, folder, [HOOK], batch_contexts=8, progress=False)
    elif variant == "train_store":
        data = StoredActivations(folder, HOOK, batch_size=4096, seed=0)
        train(cfg, data, TrainConfig(steps=steps), progress=False)
        tokens = steps * 4096
    else:
        # Each step runs the model on 32 x 128 tokens (~10 s on 2 cores): a few steps suffice.
        fly_steps = max(3, steps // 10)
        data = ModelActivations(model, contexts, HOOK, batch_contexts=32, seed=0)
        train(cfg, data, TrainConfig(steps=fly_steps), progress=False)
        tokens = fly_steps * 32 * 127
    seconds = time.perf_counter() - start
    print(json.dumps({"variant": variant, "seconds": seconds, "tokens": tokens,
                      "peak_mib": status_mib("VmHWM") - baseline, "threads": torch.get_num_threads()}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contexts", type=int, default=128)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--child", choices=VARIANTS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.contexts, args.steps)
        return
    results = {}
    for variant in VARIANTS:
        output = subprocess.run([sys.executable, __file__, "--child", variant, "--contexts", str(args.contexts),
                                 "--steps", str(args.steps)], capture_output=True, text=True, check=True).stdout
        row = json.loads(output.strip().splitlines()[-1])
        results[variant] = row
        print(f"  {variant:17s} {row['seconds']:7.2f} s  {row['tokens'] / row['seconds']:9.0f} tokens/s  "
              f"peak +{row['peak_mib']:6.0f} MiB", flush=True)
    raw, harvested, double = results["raw_forward"], results["harvest"], results["harvest_double"]
    print(f"\nSmolLM2, {HOOK}, {args.contexts} contexts x 128 tokens ({raw['threads']} threads)")
    print(f"  harvest throughput vs raw forward: {raw['seconds'] / harvested['seconds']:.2f}x (goal >= 0.9x)")
    print(f"  harvest peak memory, {args.contexts} vs {2 * args.contexts} contexts: {harvested['peak_mib']:.0f} vs "
          f"{double['peak_mib']:.0f} MiB")
    for name in ("train_store", "train_on_the_fly"):
        row = results[name]
        print(f"  TopK SAE (4608 latents, k=32) {name.removeprefix('train_')}: {row['tokens'] / row['seconds']:.0f} tokens/s")


if __name__ == "__main__":
    main()
