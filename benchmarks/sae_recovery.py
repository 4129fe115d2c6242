"""How well each dictionary architecture recovers a planted sparse dictionary.

Activations are built from a known dictionary (``SparseDictionaryData``: n_features unit
directions in d dimensions, each feature on with probability p); every architecture is trained
on the same batches and scored on held-out samples by mean max cosine of its decoder to the true
directions, MCC of its latents to the true activations, L0, FVU and dead-latent fraction.

    python benchmarks/sae_recovery.py [--features 512] [--d 128] [--steps 4000] [--expansion 1 2]

Expected L0 of the data is n_features x p; the sparsity settings below target it, as a user who
knows nothing but the rough L0 would set them.
"""

from __future__ import annotations

import argparse
import time

import torch

from mechscope.sae import (
    SAEConfig,
    SparseDictionaryData,
    TrainConfig,
    fraction_of_variance_unexplained,
    mcc,
    mean_max_cosine,
    train,
)


def configs(d: int, d_sae: int, k: int) -> dict[str, SAEConfig]:
    return {
        "relu": SAEConfig(d, d_sae, "relu"),
        "topk": SAEConfig(d, d_sae, "topk", k=k),
        "batchtopk": SAEConfig(d, d_sae, "batchtopk", k=k),
        "jumprelu": SAEConfig(d, d_sae, "jumprelu"),
        "matryoshka": SAEConfig(d, d_sae, "matryoshka", k=k, matryoshka_widths=(d_sae // 4, d_sae // 2, d_sae)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--features", type=int, default=512)
    parser.add_argument("--d", type=int, default=128)
    parser.add_argument("--p-active", type=float, default=0.01)
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--expansion", type=float, nargs="+", default=[1.0, 2.0],
                        help="dictionary sizes as multiples of the true number of features")
    args = parser.parse_args()
    torch.manual_seed(0)
    data = SparseDictionaryData(args.features, args.d, p_active=args.p_active, batch_size=1024, seed=0)
    true_l0 = args.features * args.p_active
    k = max(1, round(true_l0))
    x, activations = data.sample(10**6, 8192)
    print(f"{args.features} true features in d={args.d}, true L0 {true_l0:.1f} (k={k}), {args.steps} steps of 1024\n")
    print("| d_sae | architecture | mean max cosine | MCC | L0 | FVU | dead | train s |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|")
    for expansion in args.expansion:
        d_sae = int(expansion * args.features)
        named = configs(args.d, d_sae, k)
        start = time.perf_counter()
        saes = train(list(named.values()), data, TrainConfig(steps=args.steps, lr=3e-3), progress=True)
        seconds = (time.perf_counter() - start) / len(saes)  # trained together: the mean per dictionary
        for (name, _), sae in zip(named.items(), saes, strict=True):
            with torch.no_grad():
                latents = sae.encode(x)
                fvu = fraction_of_variance_unexplained(sae.decode(latents), x)
            l0 = float((latents > 0).sum(-1).float().mean())
            dead = float(((latents > 0).sum(0) == 0).float().mean())
            print(f"| {d_sae} | {name} | {mean_max_cosine(sae.W_dec, data.dictionary):.3f} | "
                  f"{mcc(latents, activations):.3f} | {l0:.1f} | {fvu:.3f} | {dead:.2f} | {seconds:.0f} |")


if __name__ == "__main__":
    main()
