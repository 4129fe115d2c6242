"""TopK SAE training, mechscope against SAELens, on the same activations, batches and settings.

    python benchmarks/sae_vs_saelens.py --saelens-python /tmp/saelens-venv/bin/python

SAELens must live in its own venv (it pins its own transformer-lens stack):

    python3 -m venv /tmp/saelens-venv
    /tmp/saelens-venv/bin/pip install torch==2.13.0 sae-lens

SmolLM2's blocks.15.hook_resid_post is harvested once (mechscope's store) into one
safetensors file; both libraries then train a TopK SAE (d_sae 4608, k 32 by default) for the
same number of steps on the same batches (benchmarks/saelens_child.py:batch_rows), with the
same learning rate, warm-up, linear decay, input scaling (E|x| = sqrt(d_in)) and dead-latent
window, each with its own AuxK formulation at its default coefficient. SAELens runs both with
dense latents (its default) and with use_sparse_activations. Every SAE is then loaded with
mechscope.sae.load_sae (SAELens' files included) and scored on the same held-out tokens.
Only the training loop is timed; each run is a separate process, one after another.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

sys.path.insert(0, str(Path(__file__).parent))
from saelens_child import batch_rows  # noqa: E402  (the shared batch order)

from mechscope.files import atomic_file

HOOK = "blocks.15.hook_resid_post"


def prepare(work: Path, n_contexts: int, n_heldout: int) -> Path:
    """Harvest ``n_contexts + n_heldout`` contexts of 128 tokens; write work/activations.safetensors."""
    path = work / "activations.safetensors"
    if path.exists():
        return path
    import mechscope
    from mechscope.data import StoredActivations, harvest, pack, stdlib_docstrings

    model = mechscope.load()
    contexts = pack(model.tokenizer, stdlib_docstrings(), 128, n_contexts=n_contexts + n_heldout, seed=0)
    train_store = harvest(model, contexts[:n_contexts], work / "store-train", [HOOK])
    heldout_store = harvest(model, contexts[n_contexts:], work / "store-heldout", [HOOK])
    tensors = {}
    for name, folder in (("train", train_store), ("heldout", heldout_store)):
        store = StoredActivations(folder, HOOK)
        tensors[name] = store.tokens(0, store.total_tokens)[HOOK].contiguous()
    atomic_file(path, lambda temporary: save_file(tensors, str(temporary)))
    return path


class SameBatches:
    """mechscope's side of the shared batch order: ``batch(step)`` -> [batch, d_in]."""

    def __init__(self, activations: torch.Tensor, batch_size: int):
        self.activations, self.batch_size = activations, batch_size

    def batch(self, step: int) -> torch.Tensor:
        return self.activations[batch_rows(step, len(self.activations), self.batch_size)]


def train_mechscope(data: Path, out: Path, args: argparse.Namespace) -> dict:
    from mechscope.sae import SAEConfig, TrainConfig, save_sae, train

    activations = load_file(str(data))["train"]
    cfg = SAEConfig(activations.shape[1], args.d_sae, "topk", k=args.k, hook_name=HOOK)
    config = TrainConfig(steps=args.steps, lr=args.lr, warmup_steps=args.warmup, decay_fraction=args.decay,
                         dead_after_tokens=args.dead_window * args.batch)
    start = time.perf_counter()
    (sae,) = train(cfg, SameBatches(activations, args.batch), config, progress=False)
    seconds = time.perf_counter() - start
    save_sae(sae, out)
    return {"seconds": seconds, "threads": torch.get_num_threads()}


def score(folder: Path, heldout: torch.Tensor) -> dict:
    """Held-out FVU over all tokens, and over typical tokens: a handful of tokens with residual
    norms tens of times the median (SmolLM2's massive activations) carry most of the variance,
    so the plain FVU mostly measures how well those few are reconstructed."""
    from mechscope.sae import fraction_of_variance_unexplained, load_sae, typical_tokens

    sae = load_sae(folder)
    with torch.no_grad():
        latents = sae.encode(heldout)
        reconstruction = sae.decode(latents)
    typical = typical_tokens(heldout)
    return {"fvu": fraction_of_variance_unexplained(reconstruction, heldout),
            "fvu_typical": fraction_of_variance_unexplained(reconstruction[typical], heldout[typical]),
            "outliers": int((~typical).sum()), "l0": float((latents > 0).sum(-1).float().mean()),
            "dead": float(((latents > 0).sum(0) == 0).float().mean())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--saelens-python", required=True, help="python of a venv with sae-lens installed")
    parser.add_argument("--work", type=Path, default=Path("/tmp/mechscope-sae-vs-saelens"))
    parser.add_argument("--contexts", type=int, default=1024, help="training contexts of 128 tokens")
    parser.add_argument("--heldout", type=int, default=64)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--d-sae", type=int, default=4608)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--lrs", type=float, nargs="+", default=[1e-3, 3e-3],
                        help="learning rates: each trainer runs at each; the best held-out FVU of each is compared")
    parser.add_argument("--lr", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--decay", type=float, default=0.2, help="fraction of steps with linear decay to 0")
    parser.add_argument("--dead-window", type=int, default=25, help="steps without firing before a latent is dead")
    parser.add_argument("--variants", nargs="*", default=["mechscope", "saelens"],
                        help="also: saelens-sparse (use_sparse_activations; its backward fails on CPU in sae-lens 6.54)")
    parser.add_argument("--child", choices=["mechscope"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    if args.child:
        out = args.work / f"mechscope-lr{args.lr:g}"
        print(json.dumps(train_mechscope(args.work / "activations.safetensors", out, args)))
        return
    data = prepare(args.work, args.contexts, args.heldout)
    activations = load_file(str(data))
    heldout, n_train = activations["heldout"], len(activations["train"])
    del activations  # the children load the training tokens themselves
    tokens = args.steps * args.batch
    print(f"TopK SAE d_sae={args.d_sae} k={args.k}, {args.steps} steps x {args.batch} tokens "
          f"({n_train} distinct training tokens), held-out {len(heldout)} tokens\n")
    rows = []
    for lr in args.lrs:
        for variant in args.variants:
            folder = args.work / f"{variant}-lr{lr:g}"
            result = subprocess.run(_command(variant, lr, folder, data, args), capture_output=True, text=True,
                                    check=False)
            if result.returncode != 0:
                raise SystemExit(f"{variant} failed:\n{result.stderr[-3000:]}")
            timing = json.loads(result.stdout.strip().splitlines()[-1])
            row = {"trainer": variant, "lr": lr, **timing, **score(folder, heldout),
                   "tokens_per_s": tokens / timing["seconds"]}
            rows.append(row)
            print(json.dumps(row), flush=True)
    print(f"\n| trainer | lr | seconds | tokens/s | held-out FVU | FVU without the {rows[0]['outliers']} outlier tokens "
          "| L0 | dead on held-out |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        print(f"| {row['trainer']} | {row['lr']:g} | {row['seconds']:.1f} | {row['tokens_per_s']:,.0f} | "
              f"{row['fvu']:.4f} | {row['fvu_typical']:.4f} | {row['l0']:.1f} | {row['dead']:.3f} |")
    best = {variant: min((r for r in rows if r["trainer"] == variant), key=lambda r: r["fvu_typical"])
            for variant in args.variants}
    speed = {variant: sum(r["tokens_per_s"] for r in rows if r["trainer"] == variant) / len(args.lrs)
             for variant in args.variants}
    print()
    for variant, row in best.items():
        print(f"{variant}: best held-out FVU on typical tokens {row['fvu_typical']:.4f} (lr {row['lr']:g}), "
              f"mean {speed[variant]:,.0f} tokens/s")
    if "mechscope" in best:
        for variant in best:
            if variant != "mechscope":
                print(f"mechscope / {variant}: {speed['mechscope'] / speed[variant]:.2f}x the throughput, "
                      f"best FVU on typical tokens {best['mechscope']['fvu_typical']:.4f} vs "
                      f"{best[variant]['fvu_typical']:.4f}")


def _command(variant: str, lr: float, folder: Path, data: Path, args: argparse.Namespace) -> list[str]:
    shared = ["--steps", str(args.steps), "--batch", str(args.batch), "--d-sae", str(args.d_sae), "--k", str(args.k),
              "--lr", str(lr), "--warmup", str(args.warmup)]
    if variant == "mechscope":
        return [sys.executable, __file__, "--child", "mechscope", "--work", str(args.work), "--saelens-python",
                args.saelens_python, *shared, "--decay", str(args.decay), "--dead-window", str(args.dead_window)]
    command = [args.saelens_python, str(Path(__file__).parent / "saelens_child.py"), str(data), str(folder), *shared,
               "--decay-steps", str(int(args.steps * args.decay)), "--dead-window-steps", str(args.dead_window)]
    return [*command, "--sparse"] if variant == "saelens-sparse" else command

if __name__ == "__main__":
    main()
