"""Real latents: LLM explanations next to the tokens + lexicon baseline and a shuffled-explanation null.

    python examples/sae_smollm2.py --out mechscope-sae-smollm2      # the layer-15 TopK SAE (once)
    python benchmarks/autointerp_real.py --sae mechscope-sae-smollm2/sae [--latents 50] [--out DIR]

On SmolLM2's blocks.15.hook_resid_post TopK SAE, ``--latents`` latents drawn at random (seed 0)
among those alive are explained twice with ``mechscope explain``'s pipeline (same contexts, same
records, explanations written from one half of each latent's windows and scored on the other):
by the ``llm`` explainer (SmolLM2-135M-Instruct in process), scored by ``--scorers``, and by the
``tokens`` explainer. The null: each latent scored with the llm explanation of another
latent (a derangement, seed 0) on its own windows. An explanation method is informative only
where its scores beat the null's. The tokens baseline is scored by lexicon and embedding (no
language model). Runs resume (answers cached under --out).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

import mechscope
from mechscope.autointerp import (
    ExplainOptions,
    RecordsConfig,
    UnitRecords,
    run_explain,
    sae_units,
    split_records,
)
from mechscope.autointerp.backends import CachedBackend, LocalBackend
from mechscope.autointerp.embedder import SentenceEmbedder
from mechscope.autointerp.run import score_explanation
from mechscope.files import atomic_text
from mechscope.sae import load_sae

RECORDS = RecordsConfig(window=32, n_top=8, n_quantiles=4, per_quantile=6, n_random=10, n_same_tokens=6,
                        n_neighbours=6)


def summarise(values: list[dict]) -> str:
    """mean value, and the share of latents whose interval lies above chance."""
    given = [v for v in values if "value" in v]
    if not given:
        return "not scored"
    return (f"{statistics.mean(v['value'] for v in given):.3f} (above chance {sum(v['above_chance'] for v in given)}"
            f"/{len(given)})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sae", type=Path, required=True)
    parser.add_argument("--latents", type=int, default=50)
    parser.add_argument("--contexts", type=int, default=256)
    parser.add_argument("--scorers", default="detection,fuzzing,embedding")
    parser.add_argument("--out", type=Path, default=Path("/tmp/autointerp-real"))
    args = parser.parse_args()
    scorers = tuple(s for s in args.scorers.split(",") if s)
    model = mechscope.load()
    sae = load_sae(args.sae)
    # A random sample of all latents: the runs report the dead ones.
    generator = torch.Generator().manual_seed(0)
    latents = sorted(torch.randperm(sae.cfg.d_sae, generator=generator)[:args.latents].tolist())
    judge = CachedBackend(LocalBackend(model, batch_size=16), args.out / "cache")
    embedder = SentenceEmbedder()
    source = sae_units(model, sae, latents)
    runs = {}
    for explainer in ("llm", "tokens"):
        # The baseline needs no language model: the tokens explanation is scored by lexicon and embedding.
        chosen = scorers if explainer == "llm" else ("lexicon", "embedding")
        options = ExplainOptions(explainer, chosen, args.contexts, records=RECORDS, n_boot=1000)
        runs[explainer] = run_explain(model, source, options, args.out / explainer, judge, embedder)
        print(f"{explainer}: done ({judge.usage.requests} requests so far)", flush=True)
    llm = {r["unit"]: r for r in runs["llm"]["units"] if r["status"] == "explained"}
    tokens = {r["unit"]: r for r in runs["tokens"]["units"] if r["status"] == "explained"}
    units = sorted(set(llm) & set(tokens), key=lambda u: int(u.split()[1]))
    # The null: another latent's llm explanation, on this latent's held-out windows.
    shift = torch.randperm(len(units), generator=generator).tolist()
    derangement = [(shift.index(i) + 1) % len(units) for i in range(len(units))]
    options = ExplainOptions("llm", scorers, args.contexts, records=RECORDS)
    null = {}
    for unit, other in zip(units, derangement):
        records = UnitRecords.load(args.out / "llm" / "records" / unit.replace(" ", "_"))
        _, score_part = split_records(records, options.seed)
        null[unit] = score_explanation(model, source, source.names.index(unit), llm[units[other]]["explanation"],
                                       score_part, options, judge, embedder)
    rows = {"llm": {}, "tokens": {}, "null (shuffled llm)": {}}
    for name in scorers:
        rows["llm"][name] = summarise([llm[u]["scores"][name] for u in units])
        rows["null (shuffled llm)"][name] = summarise([null[u][name] for u in units])
    for name in ("lexicon", "embedding"):
        rows["tokens"][name] = summarise([tokens[u]["scores"][name] for u in units])
    wins = {name: statistics.mean(float(llm[u]["scores"][name].get("value", 0) >
                                        null[u][name].get("value", 0)) for u in units) for name in scorers}
    result = {"latents": latents, "explained": len(units), "dead": runs["llm"]["dead"], "rows": rows,
              "llm beats its shuffled null": wins, "usage": judge.usage.to_json(),
              "examples": [{"unit": u, "llm": llm[u]["explanation"], "tokens": tokens[u]["explanation"]}
                           for u in units[:12]]}
    atomic_text(args.out / "results.json", json.dumps(result, indent=1))
    print(f"\n{len(units)} latents explained ({len(runs['llm']['dead'])} of {len(latents)} dead)")
    header = list(scorers) + ["lexicon"]
    print("| explanation | " + " | ".join(header) + " |\n|---|" + "---|" * len(header))
    for name, row in rows.items():
        print(f"| {name} | " + " | ".join(row.get(s, "-") for s in header) + " |")
    print("\nshare of latents where the llm explanation beats its shuffled null: "
          + ", ".join(f"{k} {v:.2f}" for k, v in wins.items()))
    for example in result["examples"]:
        print(f"- {example['unit']}: llm {example['llm']!r}; tokens {example['tokens']}")


if __name__ == "__main__":
    main()
