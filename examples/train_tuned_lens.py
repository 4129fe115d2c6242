"""Train a tuned lens, save and reload it, and read a prompt through it beside the logit lens.

    python examples/train_tuned_lens.py [--tiny] [--steps 30] [--layers 5,12,19,26] [--out mechscope-lens]

On the bundled SmolLM2 (the default) a few translators train in a few minutes on a CPU
(``--layers all`` trains every one; each layer costs a vocabulary-wide matmul per step); with
``--tiny`` a random tiny llama trains every layer in seconds. Training checkpoints into
``--out``/checkpoints, so an interrupted run picks up where it stopped when rerun. Writes
``--out``/lens.safetensors + lens.json and an inspect report with the tuned lens
(``--out``/report.html).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import mechscope
from mechscope.analysis import (
    TunedLens,
    TunedLensConfig,
    compare_lenses,
    logit_lens,
    train_tuned_lens,
    tuned_lens,
)
from mechscope.data import pack, stdlib_docstrings
from mechscope.report import inspect_prompt, write_report

PROMPT = "When Mary and John went to the store, John gave a drink to"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="a random tiny llama instead of SmolLM2")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--layers", default=None, help="'all' or e.g. 5,12,19,26 (default: all with --tiny, "
                                                       "else 5,12,19,26)")
    parser.add_argument("--out", type=Path, default=Path("mechscope-lens"))
    args = parser.parse_args()

    model = mechscope.load_tiny("llama") if args.tiny else mechscope.load()
    layers_text = args.layers or ("all" if args.tiny else "5,12,19,26")
    layers = None if layers_text == "all" else tuple(int(layer) for layer in layers_text.split(","))
    length = 64 if args.tiny else 128
    contexts = pack(model.tokenizer, stdlib_docstrings(limit=300 if args.tiny else None), length, n_contexts=72)
    train, held_out = contexts[:64], contexts[64:]

    # 1. Train from the identity (= the logit lens), resumably, and save (safetensors + JSON).
    config = TunedLensConfig(steps=args.steps, batch_contexts=8 if args.tiny else 1, layers=layers, warmup_steps=3)
    lens = train_tuned_lens(model, train, config, checkpoint_dir=args.out / "checkpoints")
    lens.save(args.out / "lens")
    # Loading checks every key, shape and dtype, and that the lens fits this model.
    lens = TunedLens.load(args.out / "lens", model)

    # 2. Both lenses on held-out text: KL(model output || lens) after each chosen block.
    comparison = compare_lenses(model, lens, held_out, layers=layers)
    print(comparison.table())

    # 3. One prompt: the top token of each lens after each block (row l of the tuned lens is
    # the residual the logit lens calls "L{l+1}", so logit.log_probs[1:] lines up with it).
    _, cache = model.run_with_cache(model.to_tokens(PROMPT))
    logit, tuned = logit_lens(model, cache), tuned_lens(model, lens, cache)
    print(f"\n{PROMPT!r}\n| point | logit lens top token | tuned lens top token |\n|---|---|---|")
    shown = range(model.cfg.n_layers) if layers is None else [*layers, model.cfg.n_layers - 1]
    for layer in shown:
        (plain_token, plain_p), (tuned_token, tuned_p) = logit.top_tokens[layer + 1][0], tuned.top_tokens[layer][0]
        print(f"| {tuned.labels[layer]} | {plain_token!r} {plain_p:.2f} | {tuned_token!r} {tuned_p:.2f} |")

    # 4. The inspect report with the tuned lens added (a table, a heatmap and the KL by layer).
    report = write_report(inspect_prompt(model, PROMPT, tuned_lens=lens), args.out / "report.html")
    print(f"\nwrote {args.out / 'lens'}.safetensors/.json and {report}")


if __name__ == "__main__":
    main()
