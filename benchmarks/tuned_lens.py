"""Tuned lens vs logit lens on the bundled SmolLM2-135M-Instruct: per-layer KL(final || lens) on
held-out contexts of the default corpus, side by side.

    python benchmarks/tuned_lens.py [--layers 5,12,19,26] [--steps 30] [--train-contexts 128]
                                    [--eval-contexts 8] [--batch-contexts 1] [--lr 1e-3] [--out DIR]

Trains the translators of ``--layers`` (``all`` for every layer; each trained layer costs a
[tokens, 576] x [576, 49152] matmul forward and backward per step, which is what bounds a CPU
run) from the identity with Adam on ``--train-contexts`` packed 128-token contexts of the
standard-library docstrings, then scores both lenses on ``--eval-contexts`` other contexts
(every position after BOS). The defaults fit a few minutes on 2 CPU cores; the logit lens of
the same layers is computed from the same residuals, so the columns are directly comparable.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import mechscope
from mechscope.analysis import TunedLensConfig, compare_lenses, train_tuned_lens
from mechscope.data import pack, stdlib_docstrings
from mechscope.files import atomic_text

CONTEXT = 128


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="default: the bundled SmolLM2-135M-Instruct")
    parser.add_argument("--layers", default="5,12,19,26", help="'all' or comma-separated layer indices")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--train-contexts", type=int, default=128)
    parser.add_argument("--eval-contexts", type=int, default=8)
    parser.add_argument("--batch-contexts", type=int, default=1)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="save the lens and the numbers here")
    args = parser.parse_args()
    torch.manual_seed(args.seed)

    started = time.time()
    model = mechscope.load(args.model)
    layers = None if args.layers == "all" else tuple(int(layer) for layer in args.layers.split(","))
    contexts = pack(model.tokenizer, stdlib_docstrings(), CONTEXT, n_contexts=args.train_contexts + args.eval_contexts,
                    seed=args.seed)
    train, held_out = contexts[:args.train_contexts], contexts[args.train_contexts:]
    config = TunedLensConfig(steps=args.steps, batch_contexts=args.batch_contexts, lr=args.lr, seed=args.seed,
                             warmup_steps=min(10, max(1, args.steps // 10)), layers=layers)
    prepared = time.time()
    lens = train_tuned_lens(model, train, config, checkpoint_dir=args.out / "checkpoints" if args.out else None)
    trained = time.time()
    comparison = compare_lenses(model, lens, held_out, layers=layers)
    scored = time.time()

    n_trained = len(layers) if layers is not None else model.cfg.n_layers
    print(f"\n{model.cfg.name}: {n_trained} of {model.cfg.n_layers} translators trained, {args.steps} steps x "
          f"{args.batch_contexts} context(s) of {CONTEXT} tokens ({args.steps * args.batch_contexts * (CONTEXT - 1)} "
          f"training tokens seen, from {len(train)} contexts), Adam lr {args.lr}")
    print(f"held out: {comparison.n_tokens} tokens ({len(held_out)} contexts); load+pack {prepared - started:.0f} s, "
          f"train {trained - prepared:.0f} s, score {scored - trained:.0f} s\n")
    print("| residual after block | point | logit lens KL | tuned lens KL | tuned / logit | ||A - I|| / sqrt(d) |")
    print("|---:|---|---:|---:|---:|---:|")
    distance = lens.identity_distance()
    for layer, label, logit, tuned in zip(comparison.layers, comparison.labels, comparison.logit_lens_kl.tolist(),
                                          comparison.tuned_lens_kl.tolist()):
        ratio = f"{tuned / logit:.3f}" if logit > 1e-9 else "-"
        print(f"| {layer} | {label} | {logit:.3f} | {tuned:.3f} | {ratio} | {float(distance[layer]):.3f} |")
    if args.out is not None:
        lens.save(args.out / "lens")
        summary = {"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                   "comparison": comparison.to_json(), "seconds": {"train": trained - prepared, "score": scored - trained}}
        atomic_text(args.out / "benchmark.json", json.dumps(summary, indent=1))
        print(f"\nsaved {args.out / 'lens'}.safetensors/.json and {args.out / 'benchmark.json'}")


if __name__ == "__main__":
    main()
