"""SAE latents across seeds (SmolLM2 twice) and across models (SmolLM2 against Gemma-3-270M).

    python examples/compare_features_smollm2.py [--harvest 1024] [--tokens 1000000] [--texts 192] \\
        [--out mechscope-compare-features]

1. Harvests SmolLM2-135M-Instruct's residual stream after block 15 (of 30) on the default corpus
   (contexts of 128 tokens) and trains two TopK SAEs there (4608 = 8 x 576 latents, k = 32) with
   different seeds (initialisation and batch order); reports the latents they share (decoder
   cosine above --seed-threshold, Hungarian matching), the mean cosine and the paired-decoder
   SVCCA, each against its random-pairing null, and the same for an untrained SAE against a
   trained one (the negative control).
2. Harvests Gemma-3-270M at the layer of the same relative depth (9 of 18) and trains an SAE
   there (8 x 640 latents, k = 32); runs both models on corpus texts, keeps the positions where
   both tokenizers end a token at the same character, and matches the two dictionaries' latents by
   the correlation of their activations on those tokens (latents firing on fewer than
   --min-firing of them are counted and left out: one that fires once correlates 1 with any
   latent firing on that token alone); the control is the same with Gemma's rows shuffled.
3. For the best matched pairs: each latent's top contexts side by side, and each side's offline
   ``tokens`` explanation and whether they agree (against mismatched pairs).

Prints a results block and writes OUT/results.json and OUT/transfer.txt. Harvests and training
resume where they stopped (re-run the same command); a finished SAE is read back from its last
checkpoint. Not run in CI; a smoke run: --harvest 16 --tokens 20000 --texts 8 --threads 1.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import mechscope
from mechscope.compare.latents import (
    aligned_rows,
    cross_model_matches,
    explain_by_tokens,
    feature_transfer,
    seed_stability,
)
from mechscope.compare.runs import corpus_texts
from mechscope.data import StoredActivations, harvest, pack, stdlib_docstrings
from mechscope.files import atomic_text
from mechscope.hooks import names
from mechscope.sae import SAE, SAEConfig, TrainConfig, save_sae, train

BATCH = 4096  # tokens per training step


def training_steps(tokens: int) -> tuple[int, int]:
    """(steps, checkpoint_every) for about ``tokens`` training tokens: 20 checkpoints, the last at
    the last step (steps rounded to a multiple of 20), so re-running a finished training only
    reads it back; under 20 steps, every step."""
    steps = max(1, round(tokens / BATCH))
    if steps < 20:
        return steps, 1
    steps = round(steps / 20) * 20
    return steps, steps // 20


def train_sae(model, hook: str, store: Path, folder: Path, seed: int, args) -> SAE:
    """A TopK SAE (``args.expansion`` x d_model latents, k = ``args.k``) on the harvest in
    ``store``, batches in the seed's order, resumable from ``folder/checkpoints``."""
    d_model = model.cfg.d_model
    cfg = SAEConfig(d_model, args.expansion * d_model, "topk", k=args.k, hook_name=hook, model_name=model.cfg.name)
    steps, every = training_steps(args.tokens)
    data = StoredActivations(store, hook, batch_size=BATCH, seed=seed)
    settings = TrainConfig(steps=steps, lr=args.lr, warmup_steps=min(50, steps // 10), seed=seed,
                           checkpoint_every=every)
    (sae,) = train(cfg, data, settings, folder / "checkpoints")
    save_sae(sae, folder / "sae")
    return sae


def harvested(model, hook: str, folder: Path, args) -> Path:
    contexts = pack(model.tokenizer, stdlib_docstrings(), 128, n_contexts=args.harvest, seed=0)
    return harvest(model, contexts, folder / "store", [hook])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-a", default="smollm2-135m-instruct")
    parser.add_argument("--model-b", default="gemma-3-270m")
    parser.add_argument("--layer-a", type=int, default=15)
    parser.add_argument("--layer-b", type=int, default=None, help="default: the same relative depth as --layer-a")
    parser.add_argument("--harvest", type=int, default=1024, help="training contexts of 128 tokens, per model")
    parser.add_argument("--tokens", type=int, default=1_000_000, help="training tokens per SAE (the harvest is reused)")
    parser.add_argument("--expansion", type=int, default=8, help="latents per residual dimension")
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--texts", type=int, default=192, help="corpus texts for the aligned tokens")
    parser.add_argument("--max-chars", type=int, default=600)
    parser.add_argument("--seed-threshold", type=float, default=0.7, help="decoder cosine of a shared latent")
    parser.add_argument("--cross-threshold", type=float, default=0.5, help="activation correlation of a shared latent")
    parser.add_argument("--min-firing", type=int, default=10,
                        help="latents firing on fewer aligned tokens are left out of the cross-model match (counted)")
    parser.add_argument("--top", type=int, default=10, help="matched pairs shown with contexts and explanations")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--seeds-only", action="store_true",
                        help="stop after the seed comparison (results.json holds it alone)")
    parser.add_argument("--out", type=Path, default=Path("mechscope-compare-features"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    timings: dict[str, float] = {}

    def timed(name: str, start: float) -> None:
        timings[name] = round(time.perf_counter() - start, 1)

    # 1. Seed stability on model A.
    model_a = mechscope.load(args.model_a)
    hook_a = names.resid_post(args.layer_a)
    start = time.perf_counter()
    store_a = harvested(model_a, hook_a, args.out / "model_a", args)
    timed("harvest_a_s", start)
    start = time.perf_counter()
    saes_a = [train_sae(model_a, hook_a, store_a, args.out / "model_a" / f"seed{seed}", seed, args) for seed in (0, 1)]
    timed("train_a_two_seeds_s", start)
    print("matching the two seeds' latents (Hungarian on the decoder cosines) ...")
    start = time.perf_counter()
    seeds = seed_stability(saes_a[0], saes_a[1], args.seed_threshold)
    untrained = seed_stability(SAE(saes_a[0].cfg, seed=12345), saes_a[1], args.seed_threshold)
    timed("seed_matching_s", start)

    if args.seeds_only:
        results = {"settings": {**{k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                                "hook_a": hook_a, "batch_tokens": BATCH, "train_steps": training_steps(args.tokens)[0]},
                   "seed_stability": seeds.to_json(), "untrained_control": untrained.to_json(), "timings_s": timings}
        atomic_text(args.out / "results.json", json.dumps(results, indent=1))
        print(f"seeds ({saes_a[0].cfg.d_sae} latents): shared {seeds.match.shared:.3f}, mean cosine "
              f"{seeds.match.mean_similarity:.3f}; untrained control {untrained.match.shared:.3f} / "
              f"{untrained.match.mean_similarity:.3f}; wrote {args.out / 'results.json'}")
        return

    # 2. Across models, at the same relative depth.
    model_b = mechscope.load(args.model_b)
    layer_b = args.layer_b if args.layer_b is not None else round(
        args.layer_a * (model_b.cfg.n_layers - 1) / (model_a.cfg.n_layers - 1))
    hook_b = names.resid_post(layer_b)
    start = time.perf_counter()
    store_b = harvested(model_b, hook_b, args.out / "model_b", args)
    timed("harvest_b_s", start)
    start = time.perf_counter()
    sae_b = train_sae(model_b, hook_b, store_b, args.out / "model_b" / "seed0", 0, args)
    timed("train_b_s", start)
    start = time.perf_counter()
    rows = aligned_rows(model_a, model_b, corpus_texts(args.texts, args.max_chars), hook_a, hook_b)
    timed("aligned_rows_s", start)
    print(f"matching latents across models on {len(rows.a)} aligned tokens (correlations, then Hungarian) ...")
    start = time.perf_counter()
    cross = cross_model_matches(saes_a[0], rows.a, sae_b, rows.b, args.cross_threshold, args.min_firing)
    timed("cross_matching_s", start)

    # 3. Feature transfer for the best pairs.
    start = time.perf_counter()
    transfer = feature_transfer(cross.match, saes_a[0], sae_b, rows, top=args.top, explainer=explain_by_tokens)
    timed("feature_transfer_s", start)

    results = {"settings": {**{k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                            "hook_a": hook_a, "hook_b": hook_b, "batch_tokens": BATCH,
                            "train_steps": training_steps(args.tokens)[0]},
               "seed_stability": seeds.to_json(), "untrained_control": untrained.to_json(),
               "aligned": {"texts": len(rows.texts), "positions": rows.pairs, "outliers_dropped": rows.dropped,
                           "rows": len(rows.a)},
               "cross_model": cross.to_json(),
               "transfer": transfer.to_json(), "timings_s": timings}
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_text(args.out / "results.json", json.dumps(results, indent=1))
    atomic_text(args.out / "transfer.txt", transfer.to_text() + "\n")

    def svcca_line(found) -> str:
        if found.svcca is None:
            return "paired-decoder SVCCA: too few pairs for the dimensions"
        s = found.svcca
        return (f"paired-decoder SVCCA {s.value:.3f} (random pairings: mean {s.null_mean:.3f}, 95th {s.null_high:.3f}; "
                f"p {s.p_value:.3f}, {s.pairs} pairs)")

    a, b = model_a.cfg.name, model_b.cfg.name
    m, u, c = seeds.match, untrained.match, cross.match
    trained = training_steps(args.tokens)[0] * BATCH
    print(f"""
=== SAE latents across seeds and models ===
seeds ({a} {hook_a}, {saes_a[0].cfg.d_sae} latents, k {args.k}, {trained:,} tokens each):
  shared (cosine > {args.seed_threshold}): {m.shared:.3f}  mean cosine {m.mean_similarity:.3f}  (random pairing: \
shared {m.null_shared:.3f}, mean {m.null_mean:.3f})
  {svcca_line(seeds)}
  control, untrained vs trained: shared {u.shared:.3f}, mean cosine {u.mean_similarity:.3f}
across models ({a} {hook_a} vs {b} {hook_b}, {sae_b.cfg.d_sae} latents), {len(rows.a)} aligned tokens \
of {len(rows.texts)} texts ({rows.dropped} outliers dropped):
  latents firing on >= {args.min_firing} tokens: A {cross.firing_a} (left out {cross.silent_a}), B {cross.firing_b} \
(left out {cross.silent_b})
  shared (correlation > {args.cross_threshold}, of the {len(c.pairs)} pairs): {c.shared:.3f}  MCC \
{c.mean_similarity:.3f}  (random pairing: shared {c.null_shared:.3f}, MCC {c.null_mean:.3f})
  unmatched firing latents: A {len(c.unmatched_a)}, B {len(c.unmatched_b)}
  {svcca_line(cross)}
  control, B's rows shuffled: shared {cross.control_shared:.3f}, MCC {cross.control_mean:.3f}
feature transfer, top {len(transfer.features)} pairs: mean shared top contexts \
{sum(f.shared_top for f in transfer.features) / max(1, len(transfer.features)):.2f} (chance \
{transfer.chance_shared_top:.4f}); explanations agree {transfer.agree_rate} (mismatched pairs: \
{transfer.null_agree_rate})
timings of this invocation (s; a resumed phase only finishes): {timings}
""")
    print(transfer.to_text())
    print(f"\nwrote {args.out / 'results.json'} and {args.out / 'transfer.txt'}")


if __name__ == "__main__":
    main()
