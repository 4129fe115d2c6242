"""A TopK SAE on SmolLM2's middle residual stream; regenerates docs/case-studies/sae-smollm2.md.

    python examples/sae_smollm2.py [--harvest 1792] [--tokens 2000000] [--out mechscope-sae-smollm2]

Harvests blocks.15.hook_resid_post over the default corpus (resumable), trains a TopK SAE
(4608 latents, k = 32; resumable from checkpoints), evaluates it on held-out contexts (L0, FVU,
cosine, CE loss recovered, KL, dead and dense fractions), picks latents to show and writes
their HTML dashboards under --out and a markdown summary of each into the case study.

Latents shown: the most token-specific ones (most of their top activations on one token), and
a seeded random sample of all latents that fire at all, so the page shows typical latents too,
not only the cleanest.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from pathlib import Path

import torch

import mechscope
from mechscope.data import StoredActivations, harvest, pack, stdlib_docstrings
from mechscope.files import atomic_text
from mechscope.sae import SAEConfig, TrainConfig, evaluate_sae, save_sae, train
from mechscope.sae.dashboard import collect, logit_effects, summarise, write_dashboards

HOOK = "blocks.15.hook_resid_post"
DOC = Path(__file__).resolve().parents[1] / "docs" / "case-studies" / "sae-smollm2.md"


def context_text(model, contexts: torch.Tensor, values: torch.Tensor, where: tuple[int, int], window: int = 10) -> str:
    """One top context as markdown: the activating token in bold with its activation."""
    context, position = where
    pieces = []
    for pos in range(max(1, position - window), min(contexts.shape[1], position + 3)):
        token = model.tokenizer.decode([int(contexts[context, pos])]).replace("\n", "\\n").replace("|", "\\|")
        token = token.replace("`", "'").replace("*", "\\*").replace("_", "\\_")
        pieces.append(f"**[{token}]**<sub>{float(values[context, pos]):.1f}</sub>" if pos == position else token)
    return "".join(pieces)


def most_common_share(tokens: list[int]) -> tuple[int | None, float]:
    """(the most common token id among a latent's top activations, the share of them it takes)."""
    if not tokens:
        return None, 0.0
    token, count = Counter(tokens).most_common(1)[0]
    return token, count / len(tokens)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--harvest", type=int, default=1792, help="training contexts of 128 tokens")
    parser.add_argument("--tokens", type=int, default=2_000_000, help="training tokens (the harvest is reused)")
    parser.add_argument("--search", type=int, default=256, help="contexts searched for the dashboards")
    parser.add_argument("--heldout", type=int, default=64, help="held-out contexts for the evaluation")
    parser.add_argument("--out", type=Path, default=Path("mechscope-sae-smollm2"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-doc", action="store_true", help="do not rewrite the case study")
    args = parser.parse_args()

    model = mechscope.load()
    total = args.harvest + args.heldout + args.search
    contexts = pack(model.tokenizer, stdlib_docstrings(), 128, n_contexts=total, seed=args.seed)
    if len(contexts) < total:
        raise SystemExit(f"the corpus holds {len(contexts)} contexts of 128 tokens; ask for fewer than {total}")
    train_contexts = contexts[:args.harvest]
    heldout = contexts[args.harvest:args.harvest + args.heldout]
    search = contexts[args.harvest + args.heldout:]

    # Wall times are kept only from phases that ran from scratch (a resumed phase's time would
    # understate it), in OUT/timings.json so a resumed run still reports them.
    timings_path = args.out / "timings.json"
    timings = json.loads(timings_path.read_text()) if timings_path.exists() else {}
    fresh = not (args.out / "store" / "manifest.json").exists()
    start = time.perf_counter()
    harvest(model, train_contexts, args.out / "store", [HOOK])
    if fresh:
        timings["harvest_s"] = time.perf_counter() - start
    data = StoredActivations(args.out / "store", HOOK, batch_size=4096, seed=args.seed)
    steps = args.tokens // 4096
    cfg = SAEConfig(model.cfg.d_model, 4608, "topk", k=32, hook_name=HOOK, model_name=model.cfg.name)
    fresh = not (args.out / "checkpoints" / "latest").exists()
    start = time.perf_counter()
    (sae,) = train(cfg, data, TrainConfig(steps=steps, lr=1e-3, checkpoint_every=max(1, steps // 20), seed=args.seed),
                   args.out / "checkpoints")
    if fresh:
        timings["train_s"] = time.perf_counter() - start
    atomic_text(timings_path, json.dumps(timings))
    harvest_time = f"{timings['harvest_s']:.0f} s" if "harvest_s" in timings else "(resumed; time unknown)"
    train_time = (f"{timings['train_s']:.0f} s ({steps * 4096 / timings['train_s']:,.0f} tokens/s)"
                  if "train_s" in timings else "(resumed; time unknown)")
    save_sae(sae, args.out / "sae")
    scored = evaluate_sae(model, sae, heldout)

    values = collect(model, search, HOOK, lambda x: sae.encode(x))  # [n, pos, d_sae]
    flat = values[:, 1:].flatten(0, 1)
    density = (flat > 0).float().mean(0)
    top_rows = flat.topk(20, dim=0).indices.T  # [d_sae, 20] token rows of each latent's top activations
    alive = (density > 0).nonzero().flatten()
    search_tokens = search[:, 1:].flatten()  # aligned with the rows of flat
    specificity = torch.zeros(cfg.d_sae)
    for latent in alive.tolist():
        specificity[latent] = most_common_share(search_tokens[top_rows[latent]].tolist())[1]
    candidates = alive[(density[alive] > 1e-3) & (density[alive] < 0.05)]
    specific = candidates[specificity[candidates].argsort(descending=True)[:4]].tolist()
    generator = torch.Generator().manual_seed(args.seed)
    others = [int(i) for i in alive[torch.randperm(len(alive), generator=generator)] if int(i) not in specific][:4]
    chosen = specific + others
    index = torch.tensor(chosen)
    chosen_values = values[..., index]
    features = summarise(chosen_values, [f"latent {i}" for i in chosen], logit_effects(model, sae.W_dec.detach()[index]))
    dashboards = write_dashboards(model, search, chosen_values, features, args.out / "dashboards",
                                  f"TopK SAE at {HOOK}")
    print(f"dashboards: {dashboards}")
    if args.no_doc:
        return

    def section(latent: int, feature) -> str:
        token_id, share = most_common_share([int(search[c, p]) for c, p in feature.top])
        token = "" if token_id is None else model.tokenizer.decode([token_id])
        up = ", ".join(f"`{t.strip() or repr(t)}`" for t, _ in feature.promoted[:6])
        down = ", ".join(f"`{t.strip() or repr(t)}`" for t, _ in feature.suppressed[:6])
        lines = [f"### Latent {latent}", "",
                 f"Fires on {100 * feature.density:.2f}% of tokens, max activation {feature.max_activation:.1f}; "
                 f"{100 * share:.0f}% of its top {len(feature.top)} activations are on `{token.strip() or repr(token)}`. "
                 f"Its decoder direction promotes {up} and suppresses {down}.", "",
                 "Top activations (the activating token in brackets, its activation below it):", ""]
        lines += [f"- {context_text(model, search, chosen_values[..., chosen.index(latent)], where)}"
                  for where in feature.top[:6]]
        return "\n".join(lines) + "\n"

    histogram = torch.histc(torch.log10(density[alive]), bins=8, min=-5, max=0).long().tolist()
    density_rows = "\n".join(f"| 1e{-5 + i * 5 / 8:.1f} .. 1e{-5 + (i + 1) * 5 / 8:.1f} | {count} |"
                             for i, count in enumerate(histogram))
    doc = f"""# Case study: a TopK SAE on SmolLM2-135M-Instruct's residual stream

Regenerate with `python examples/sae_smollm2.py --harvest {args.harvest} --tokens {args.tokens} --seed {args.seed}`
(every number below comes from that run, on 2 CPU cores). The same run from the command line:

```bash
mechscope sae train --hook {HOOK} --arch topk --k 32 --d-sae 4608 --tokens {args.tokens / 1e6:g}M \\
    --harvest-contexts {args.harvest} --out mechscope-sae
mechscope sae dashboard --sae mechscope-sae/sae --latents {",".join(map(str, chosen))}
```

## Setup

- Model: SmolLM2-135M-Instruct (the bundled GGUF), hook `{HOOK}` (the residual stream after
  block 15 of 30, d_model = {model.cfg.d_model}).
- Corpus: the default corpus (Python standard-library docstrings), packed into contexts of 128
  tokens with BOS; BOS positions are dropped. {args.harvest} contexts ({args.harvest * 127:,} tokens)
  harvested to disk in {harvest_time}, {args.heldout} other contexts held out for the
  evaluation, {args.search} more searched for the dashboards.
- Dictionary: TopK, 4608 latents (8x), k = 32. Adam, lr 1e-3 with warm-up and linear decay,
  batches of 4096 tokens, {steps} steps ({steps * 4096:,} tokens, the harvest reused
  {steps * 4096 / (args.harvest * 127):.1f} times), AuxK on dead latents. Training took
  {train_time}.

## Evaluation on held-out contexts

| metric | value |
|---|---:|
| L0 (active latents per token) | {scored.l0:.1f} |
| fraction of variance unexplained (FVU) | {scored.fvu:.4f} |
| FVU over typical tokens (norm <= 10x the median; {scored.outlier_tokens} tokens excluded) | {scored.fvu_typical:.4f} |
| cosine(reconstruction, activation) | {scored.cosine:.3f} |
| next-token CE, clean | {scored.ce_clean:.3f} |
| CE with the SAE spliced in | {scored.ce_spliced:.3f} |
| CE with the activation zero-ablated | {scored.ce_zero:.3f} |
| **CE loss recovered** | **{scored.ce_recovered:.3f}** |
| KL(clean \\|\\| spliced) per token | {scored.kl:.4f} |
| dead latents (never fire on the held-out tokens) | {100 * scored.dead:.1f}% |
| dense latents (fire on > 10% of tokens) | {100 * scored.dense:.1f}% |

The plain FVU is small because a few tokens (SmolLM2's massive activations, norms tens of times
the median) carry most of the variance and are easy to reconstruct. The FVU over typical tokens,
the cosine and the CE loss recovered are the more telling numbers.

Latent density on the {args.search} search contexts ({len(alive)} of {cfg.d_sae} latents fire there),
log10 of the fraction of tokens:

| log10 density | latents |
|---|---:|
{density_rows}

## Latents

Full dashboards (top contexts shaded by activation, samples from four activation quantiles, the
activation histogram, logit effects) are written to `{args.out}/dashboards/` by the script. The
first four below are the most token-specific latents with density between 0.1% and 5%; the last
four are a seeded random sample of all latents that fire. Logit effects are read through the
final norm and the unembedding. Halfway up the model a direction is not yet about the next token,
so those lists mostly look like noise. The top contexts say more.

{chr(10).join(section(latent, feature) for latent, feature in zip(chosen, features, strict=True))}
"""
    atomic_text(DOC, doc)
    print(f"wrote {DOC}")


if __name__ == "__main__":
    main()
