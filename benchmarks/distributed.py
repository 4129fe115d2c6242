"""Scale-out on torch.distributed: harvest and SAE-training throughput on 1 and 2 gloo ranks of
this machine, side by side in one run, and the communication volume of a training step.

    .venv/bin/python benchmarks/distributed.py [--contexts 48] [--steps 30] [--d-sae 4608]

Harvest: SmolLM2-135M (the bundled default) on ``--contexts`` corpus contexts of 128 tokens,
one residual hook, into a fresh store: one rank using every core, then 2 ranks using one core
each (shards of 4 contexts dealt round-robin). Training: a TopK and a BatchTopK SAE (576 ->
``--d-sae``, k 32, global batch 4096) on that store, ``--steps`` steps after 3 warm-up steps,
on 1 rank, then data-parallel on 2. Every rank counts the bytes it sends through mechscope's
collectives (gradient all-reduce, BatchTopK cut-off, fired latents); the report gives them
per step, with the step time split into compute and communication on 2 ranks.

On a machine of 2 cores the 2-rank runs have the same cores as the 1-rank run, so expect a
speed-up near 1 at best: what the numbers are for is the per-step compute and bytes, from
which docs/performance.md derives what N GPUs give.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

N_THREADS = 2  # this machine's cores: one rank takes both, two ranks one each
HOOK = "blocks.15.hook_resid_post"


def harvest_rank(ranks, folder: str, contexts: int, out: str) -> None:
    import mechscope
    from mechscope.data import default_contexts, harvest

    model = mechscope.load(mechscope.DEFAULT_MODEL)
    tokens = default_contexts(model, contexts, 128)
    model.run_with_cache(tokens[:4], names=[HOOK])  # warm-up: first-call costs are not throughput
    ranks.barrier()
    started = time.perf_counter()
    harvest(model, tokens, folder, [HOOK], shard_contexts=4, batch_contexts=4, progress=False, ranks=ranks)
    seconds = time.perf_counter() - started
    if ranks.is_main:
        Path(out).write_text(json.dumps({"seconds": seconds, "contexts": contexts}))


def train_rank(ranks, store: str, architecture: str, d_sae: int, steps: int, out: str) -> None:
    from mechscope.data import StoredActivations
    from mechscope.distributed.reduce import average_gradients
    from mechscope.sae import SAEConfig
    from mechscope.sae.train import TrainConfig, train

    data = StoredActivations(store, HOOK, batch_size=4096, seed=0, rank=ranks.rank, world_size=ranks.world_size)
    cfg = SAEConfig(576, d_sae, architecture, k=32, hook_name=HOOK)
    # Warm-up (first shard reads, allocator), then the timed steps from the same start. The
    # bytes of a step are the difference of the two runs over their difference in steps, which
    # leaves out what a run sends once (the settings check, rank 0's initial weights).
    warm_sent = ranks.sent_bytes
    train(cfg, data, TrainConfig(steps=3, warmup_steps=1), progress=False, ranks=ranks)
    warm_sent = ranks.sent_bytes - warm_sent
    ranks.barrier()
    sent, started = ranks.sent_bytes, time.perf_counter()
    train(cfg, data, TrainConfig(steps=steps, warmup_steps=1), progress=False, ranks=ranks)
    seconds = time.perf_counter() - started
    step_bytes = (ranks.sent_bytes - sent - warm_sent) / (steps - 3)
    # The gradient all-reduce alone, timed on its own: the communication part of a step.
    parameters = [torch.nn.Parameter(torch.zeros(576, d_sae)), torch.nn.Parameter(torch.zeros(d_sae, 576)),
                  torch.nn.Parameter(torch.zeros(d_sae)), torch.nn.Parameter(torch.zeros(576))]
    for parameter in parameters:
        parameter.grad = torch.ones_like(parameter)
    ranks.barrier()
    reduce_started = time.perf_counter()
    gradient_bytes = sum(parameter.numel() * parameter.element_size() for parameter in parameters)
    for _ in range(5):
        average_gradients(ranks, parameters)
    reduce_seconds = (time.perf_counter() - reduce_started) / 5
    if ranks.is_main:
        Path(out).write_text(json.dumps({"seconds": seconds, "steps": steps, "bytes_per_step": step_bytes,
                                         "gradient_bytes": gradient_bytes, "all_reduce_seconds": reduce_seconds}))


def single(target, *args) -> None:
    """``target`` as a world of one (no process group), with every core."""
    from mechscope.distributed import Ranks

    torch.set_num_threads(N_THREADS)
    target(Ranks(), *args)


def two_ranks(target, work: Path, *args) -> None:
    from mechscope.distributed import run_ranks

    outcomes = run_ranks(target, 2, work, *args, timeout_s=3000, collective_timeout_s=600, threads=N_THREADS // 2)
    failed = [outcome for outcome in outcomes if not outcome.ok]
    if failed:
        raise SystemExit(f"a rank failed: {failed}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--contexts", type=int, default=48)
    parser.add_argument("--steps", type=int, default=30, help="timed steps (at least 4)")
    parser.add_argument("--d-sae", type=int, default=4608)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="mechscope-distributed-"))
    rows = []
    single(harvest_rank, str(work / "store1"), args.contexts, str(work / "h1.json"))
    two_ranks(harvest_rank, work / "w", str(work / "store2"), args.contexts, str(work / "h2.json"))
    h1, h2 = (json.loads((work / f"h{n}.json").read_text()) for n in (1, 2))
    same = all((work / "store1" / p.name).read_bytes() == p.read_bytes() for p in (work / "store2").glob("shard_*.s*"))
    print(f"harvest, {args.contexts} contexts of 128 tokens (SmolLM2-135M, {HOOK}):")
    print(f"  1 rank x {N_THREADS} threads: {h1['seconds']:.1f} s ({args.contexts / h1['seconds']:.2f} ctx/s)")
    print(f"  2 ranks x 1 thread:  {h2['seconds']:.1f} s ({args.contexts / h2['seconds']:.2f} ctx/s); speed-up "
          f"{h1['seconds'] / h2['seconds']:.2f}x; shards bit-identical to 1 rank: {same}")
    for architecture in ("topk", "batchtopk"):
        single(train_rank, str(work / "store1"), architecture, args.d_sae, args.steps, str(work / "t1.json"))
        two_ranks(train_rank, work / "w", str(work / "store1"), architecture, args.d_sae, args.steps,
                  str(work / "t2.json"))
        t1, t2 = (json.loads((work / f"t{n}.json").read_text()) for n in (1, 2))
        step1, step2 = t1["seconds"] / t1["steps"], t2["seconds"] / t2["steps"]
        print(f"training, {architecture} 576 -> {args.d_sae}, k 32, global batch 4096, {args.steps} steps:")
        print(f"  1 rank x {N_THREADS} threads: {step1 * 1000:.0f} ms/step ({4096 / step1:,.0f} tokens/s)")
        print(f"  2 ranks x 1 thread:  {step2 * 1000:.0f} ms/step ({4096 / step2:,.0f} tokens/s); speed-up "
              f"{step1 / step2:.2f}x")
        print(f"  sent per rank per step: {t2['bytes_per_step'] / 1e6:.3f} MB (gradients {t2['gradient_bytes'] / 1e6:.3f}"
              f" MB, the rest batch statistics); one gradient all-reduce on 2 gloo ranks: "
              f"{t2['all_reduce_seconds'] * 1000:.0f} ms = {t2['all_reduce_seconds'] / step2:.0%} of a 2-rank step")
        rows.append({"architecture": architecture, "step_seconds_1": step1, "step_seconds_2": step2, **t2})
    (work / "summary.json").write_text(json.dumps({"harvest": [h1, h2], "training": rows}, indent=1))
    print(f"(results in {work / 'summary.json'})")


if __name__ == "__main__":
    main()
