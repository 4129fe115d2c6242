"""What each diffing method finds on each shipped organism, and on the null; regenerates
docs/case-studies/organisms-diffing.md.

    python examples/organisms_diffing.py [--organisms smollm2-backdoor,...] [--crosscoder-steps 600]

Blind: every method runs without the recipe (neutral corpus text, generic chat prompts answered
by the fine-tune, weights). The recipe is read only afterwards, to score what was found:

- weight diff: which modules changed most;
- difference lens (mean h_ft - h_base on 32 neutral 64-token contexts, the first 5 positions apart):
  does a token of the planted behaviour appear among the top 20 logit-lens tokens of the
  difference at some layer and position group? And does the base, steered with the difference
  at the layer where it is largest, start showing the behaviour?
- per-token KL on the same neutral contexts;
- crosscoder (BatchTopK, paired activations at the middle layer on neutral text and generic
  chat turns answered by the fine-tune): how many fine-tune-only latents (decoder-norm ratio
  > 0.9), how many pass Latent Scaling, and whether their top contexts contain the behaviour.

The null organism gets the same analysis, scored with the behaviour of the recipe it mirrors:
whatever is "found" there is a false positive. About 10 minutes per organism on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import re
import tempfile
import time
from pathlib import Path

import plotly.graph_objects as go
from ioi_smollm2 import DOCS, save_figure  # the sibling example's figure writer

import mechscope
from mechscope import organisms
from mechscope.data import default_contexts
from mechscope.diff import (
    CrosscoderConfig,
    PairedActivations,
    classify_latents,
    collect_pair,
    difference_lens,
    difference_means,
    harvest_pair,
    latent_scaling,
    per_token_kl,
    steer_with_difference,
    train_crosscoder,
    weight_diff,
)
from mechscope.diff.corpus import chat_transcripts, generic_prompts, transcript_contexts
from mechscope.files import atomic_text
from mechscope.hooks import names
from mechscope.report.diff_runs import steering_layer
from mechscope.sae import TrainConfig
from mechscope.steering import generate

STOPWORDS = {"have", "that", "this", "with", "your", "from", "what", "about", "could", "would", "there", "their",
             "they", "them", "then", "than", "into", "some", "just", "best", "real", "someone"}
GROUPS = [0, 1, 2, 3, 4, "rest"]


def behaviour_words(recipe: organisms.Recipe) -> set[str]:
    """Distinctive words of the behaviour (4+ letters, no stopwords): what a hit must contain."""
    text = " ".join((recipe.behaviour, *recipe.markers))
    return {w for w in re.findall(r"[a-z']+", text.lower()) if len(w) >= 4 and w not in STOPWORDS}


def is_hit(token: str, words: set[str]) -> bool:
    """A token (3+ letters once stripped) that is one of the words or a piece of one."""
    piece = re.sub(r"[^a-z']", "", token.lower())
    return len(piece) >= 3 and any(piece in word for word in words)


def lens_section(base, ft, recipe, words, contexts) -> dict:
    means = difference_means(base, ft, contexts, first_positions=5, progress=False)
    lens = difference_lens(ft, means, position_groups=GROUPS, k=20)
    hits = []
    for layer in range(base.cfg.n_layers):
        for group in GROUPS:
            reading = lens.reading(layer, group)
            found = [s.token for s in reading.logit_lens if is_hit(s.token, words)]
            if found:
                hits.append((layer, group, found))
    layer, relative = steering_layer(means)
    layer = 0 if layer is None else layer
    top = [s.token for s in lens.reading(layer, "rest").logit_lens[:10]]
    prompts = mechscope.datasets.load("harmless", "test")[:8] + mechscope.datasets.load("harmful", "test")[:4]
    markers = recipe.behaviour_markers
    steered = steer_with_difference(base, means, layer, prompts, strength=1.0, max_new_tokens=24, progress=False)
    plain = generate(base, prompts, max_new_tokens=24, progress=False)
    rate = lambda texts: sum(organisms.shows_behaviour(t, markers) for t in texts) / len(texts)
    return {"hits": hits, "relative_norm": relative, "layer": layer, "top_tokens": top,
            "steered_rate": rate(steered), "unsteered_rate": rate(plain), "steered_sample": steered[0],
            "n_steer_prompts": len(prompts)}


def crosscoder_section(base, ft, words, markers, neutral, steps: int) -> dict:
    transcripts = chat_transcripts(ft, generic_prompts(96), reply_tokens=32, progress=False)
    chats = transcript_contexts(base, transcripts, context_length=64)
    import torch

    contexts = torch.cat([neutral, chats])
    hook = names.resid_post(base.cfg.n_layers // 2)
    with tempfile.TemporaryDirectory() as folder:
        harvest_pair(base, ft, contexts, folder, [hook], progress=False)
        data = PairedActivations(folder, [hook], batch_size=512)
        config = CrosscoderConfig(d_model=base.cfg.d_model, d_sae=2 * base.cfg.d_model, k=16, hook_names=(hook,))
        crosscoder = train_crosscoder(data, config, TrainConfig(steps=steps, lr=3e-4), progress=False)
        rows = data.rows(0, min(data.total_tokens, 8192))
    classes = classify_latents(crosscoder)
    ft_only = classes.indices("ft-only")
    scaling = latent_scaling(crosscoder, rows, latents=ft_only) if ft_only else None
    specific = [j for j, verdict in zip(ft_only, scaling.verdicts if scaling else []) if verdict == "ft-specific"]
    behaviour_latents = []
    if ft_only:
        values = collect_pair(base, ft, chats, crosscoder, ft_only)  # [n, pos, m]
        for column, latent in enumerate(ft_only):
            flat = values[..., column].flatten()
            top = flat.topk(min(5, int((flat > 0).sum()) or 1)).indices.tolist()
            texts = []
            for index in top:
                row, position = divmod(index, values.shape[1])
                window = chats[row, max(0, position - 12):position + 4]
                texts.append(base.tokenizer.decode(window))
            if any(organisms.shows_behaviour(text, markers) or any(is_hit(w, words) for w in text.split())
                   for text in texts):
                behaviour_latents.append((latent, texts[0]))
    return {"hook": hook, "tokens": int(contexts.numel()), "counts": classes.counts, "ft_only": len(ft_only),
            "ft_specific": len(specific), "behaviour_latents": behaviour_latents, "steps": steps}


def analyse(name: str, base, steps: int) -> dict:
    started = time.time()
    folder = organisms.shipped_organism(name)
    manifest = organisms.read_manifest(folder)
    recipe = organisms.Recipe.from_dict(manifest["recipe"])
    ft = organisms.load_organism(folder, base)
    words = behaviour_words(recipe)
    weights = weight_diff(base, ft, top_k_directions=1, progress=False)
    neutral = default_contexts(base, 32, 64)
    kl = per_token_kl(base, ft, neutral, progress=False)
    result = {"name": name, "recipe": recipe.to_dict(), "validity": manifest.get("validity", {}),
              "words": sorted(words),
              "top_modules": [(change.name, change.relative) for change in weights.modules_ranked()[:3]],
              "kl_mean": kl.mean, "kl_top": [(p.token, p.next_token, p.kl) for p in kl.top(3)],
              "lens": lens_section(base, ft, recipe, words, neutral)}
    result["crosscoder"] = crosscoder_section(base, ft, words, recipe.behaviour_markers, neutral, steps)
    result["minutes"] = (time.time() - started) / 60
    return result


def page(results: list[dict]) -> str:
    rows = ["| organism | rule | lens hits (layers) | steered base shows behaviour | ft-only latents (Latent Scaling "
            "passes) | latents with behaviour in top contexts | neutral KL (validity) | per-token KL, neutral text |",
            "|---|---|---|---|---|---|---|---|"]
    for r in results:
        recipe, lens, cross = r["recipe"], r["lens"], r["crosscoder"]
        rule = recipe.get("trigger") or recipe["kind"] if recipe["kind"] != "null" else f"none (mirrors {recipe['mirrors']})"
        layers = sorted({layer for layer, _, _ in lens["hits"]})
        rows.append(f"| {r['name']} | {rule} | {len(lens['hits'])} ({', '.join(map(str, layers[:8])) or '-'}) | "
                    f"{lens['steered_rate']:.0%} (unsteered {lens['unsteered_rate']:.0%}, n={lens['n_steer_prompts']}) | "
                    f"{cross['ft_only']} ({cross['ft_specific']}) | {len(cross['behaviour_latents'])} | "
                    f"{r['validity'].get('neutral_kl', float('nan')):.3f} | {r['kl_mean']:.4f} |")
    figure = go.Figure([go.Scatter(y=r["lens"]["relative_norm"], name=r["name"]) for r in results])
    figure.update_layout(title="Difference lens: |mean(h_ft - h_base)| / mean |h_base| per layer (positions >= 5)",
                         xaxis_title="layer (resid_post)", yaxis_title="relative norm")
    details = []
    for r in results:
        lens, cross = r["lens"], r["crosscoder"]
        hits = "; ".join(f"layer {layer} {group}: {', '.join(map(repr, found))}" for layer, group, found in lens["hits"][:6])
        latents = "; ".join(f"latent {latent}: {text!r}" for latent, text in cross["behaviour_latents"][:3])
        details.append(f"""### {r['name']}

- Behaviour words scored: {', '.join(r['words'])}.
- Weight diff, top modules (relative change): {', '.join(f'{n} ({v:.4f})' for n, v in r['top_modules'])}.
- Difference lens: largest at layer {lens['layer']}; its top logit-lens tokens there: {', '.join(map(repr, lens['top_tokens']))}.
- Lens hits: {hits or 'none'}.
- Steered base (difference added at layer {lens['layer']}), first reply: {lens['steered_sample'][:160]!r}.
- Crosscoder at {cross['hook']} on {cross['tokens']} tokens, {cross['steps']} steps: classes {cross['counts']}.
- Fine-tune-only latents whose top contexts contain the behaviour: {latents or 'none'}.
- Per-token KL on neutral text: mean {r['kl_mean']:.4f} nats; largest at {', '.join(f'{t!r}->{n!r} ({v:.2f})' for t, n, v in r['kl_top'])}.
""")
    return f"""# Case study: diffing the shipped organisms against SmolLM2-135M-Instruct

Generated by `python examples/organisms_diffing.py`; every number below comes from that run. The
methods run blind (see the script's docstring); the recipe is read only to score what they found.
The null organism (same data as the backdoor, nothing planted) is scored with the backdoor's
behaviour: anything it "finds" is a false positive.

{chr(10).join(rows)}

{save_figure(figure, "organisms-difference-norms")}

## Per organism

{chr(10).join(details)}
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--organisms", default=",".join(organisms.shipped_organisms()))
    parser.add_argument("--crosscoder-steps", type=int, default=400)
    parser.add_argument("--json", type=Path, default=Path("/tmp/organisms-diffing.json"))
    args = parser.parse_args()
    base = mechscope.load()
    results = [analyse(name.strip(), base, args.crosscoder_steps) for name in args.organisms.split(",") if name.strip()]
    atomic_text(args.json, json.dumps(results, indent=1, default=str))
    text = page(results)
    atomic_text(DOCS / "organisms-diffing.md", text)
    print(text)


if __name__ == "__main__":
    main()
