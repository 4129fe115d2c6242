"""All-heads activation patching on IOI with SmolLM2: batched vs one forward per site, and
attribution patching vs the exact sweep; wall time, ratios and peak memory, measured in one run.

    python benchmarks/patching.py [--n 8] [--seed 0] [--device cuda]

Each variant runs in its own child process. On CPU its peak memory is the peak resident set
(VmHWM, reset after the model is loaded) minus the resident set at that point; on CUDA it is
torch's peak allocated memory minus what the loaded model holds.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

from _memory import reset_peak, status_mib

VARIANTS = ("naive", "batched", "atp")


def child(variant: str, n: int, seed: int, device: str) -> None:
    import torch

    import mechscope
    from mechscope import tasks
    from mechscope.patching import activation_patch, attribution_patch
    from mechscope.patching.reference import activation_patch_naive

    model = mechscope.load(device=device)
    task = tasks.ioi(model, n=n, seed=seed).to(device)
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        baseline = torch.cuda.memory_allocated() / 2**20
    else:
        baseline = reset_peak()  # the peak model loading left is not counted
    run = {"naive": activation_patch_naive, "batched": activation_patch, "atp": attribution_patch}[variant]
    start = time.perf_counter()
    result = run(model, task, "heads") if variant == "atp" else run(model, task, "heads", progress=False)
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else status_mib("VmHWM")
    print(json.dumps({"variant": variant, "seconds": seconds, "peak_mib_above_model": peak - baseline,
                      "scores": result.scores.tolist(),
                      "where": torch.cuda.get_device_name() if cuda else f"CPU, {torch.get_num_threads()} threads"}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--child", choices=VARIANTS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.n, args.seed, args.device)
        return
    import torch

    results = {}
    for variant in VARIANTS:
        output = subprocess.run([sys.executable, __file__, "--child", variant, "--n", str(args.n), "--seed",
                                 str(args.seed), "--device", args.device], capture_output=True, text=True, check=True).stdout
        results[variant] = json.loads(output.strip().splitlines()[-1])
        print(f"  {variant:8s} {results[variant]['seconds']:7.1f} s   peak +{results[variant]['peak_mib_above_model']:6.0f} MiB",
              flush=True)
    naive, batched, atp = (torch.tensor(results[v]["scores"]) for v in VARIANTS)
    x, y = atp.flatten().double(), batched.flatten().double()
    corr = float(((x - x.mean()) * (y - y.mean())).sum() / ((x - x.mean()).norm() * (y - y.mean()).norm()))
    print(f"\nIOI, SmolLM2, {args.n} prompts, all 30 x 9 heads, denoising, logit difference "
          f"({results['naive']['where']})")
    print(f"  batched vs one-forward-per-site: {results['naive']['seconds'] / results['batched']['seconds']:.2f}x faster, "
          f"max |score difference| {float((naive - batched).abs().max()):.2e}")
    print(f"  AtP vs exact batched sweep:      {results['batched']['seconds'] / results['atp']['seconds']:.1f}x faster, "
          f"correlation {corr:.4f}")
    print(f"  AtP vs one-forward-per-site:     {results['naive']['seconds'] / results['atp']['seconds']:.1f}x faster")


if __name__ == "__main__":
    main()
