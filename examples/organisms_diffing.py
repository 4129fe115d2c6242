"""What each diffing method finds on each shipped organism, and on the null; regenerates
docs/case-studies/organisms-diffing.md.

    python examples/organisms_diffing.py [--organisms smollm2-backdoor,...] [--crosscoder-steps 1000]

Blind: every method runs without the recipe (neutral corpus text, generic chat prompts answered
by the fine-tune, weights). The recipe is read only afterwards, to score what was found:

- weight diff: which modules changed most;
- difference lens (mean h_ft - h_base on 32 neutral 64-token contexts, the first 5 positions apart):
  does a token of the planted behaviour appear among the top 20 logit-lens tokens of the
  difference at some layer and position group? And does the base, steered with the difference
  at the layer where it is largest, start showing the behaviour?
- the same lens where replies start: the mean difference at the last 3 positions (the
  assistant's header) of 128 generic chat prompts; and the base steered with the difference at
  the last position, at two late layers and three strengths;
- per-token KL on the same neutral contexts;
- amplified replies: mechscope's generic instructions (written for the refusal work, not for any
  organism) answered by the fine-tune, greedily and from logits_ft + 2 (logits_ft - logits_base):
  how many replies show the behaviour?
- crosscoder (BatchTopK, paired activations at the middle layer on neutral text and both sets of
  transcripts): how many fine-tune-only latents (decoder-norm ratio > 0.9) and fine-tune-leaning
  ones (ratio 6 robust standard deviations above the bulk), how many pass Latent Scaling, and
  whether their top contexts contain the behaviour; once plain, once with the fine-tune's
  change magnified ten times in the rows it reads (``CrosscoderConfig.delta_scale``), and once
  magnified with 64 latents designated fine-tune-exclusive (``CrosscoderConfig.ft_exclusive``:
  their base decoder half is held at zero, so they are ft-only by construction and Latent
  Scaling says whether they are genuine).

The null organism gets the same analysis, scored with the behaviour of the recipe it mirrors:
whatever is "found" there is a false positive. About 15 minutes per organism on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import plotly.graph_objects as go
import torch
from ioi_smollm2 import DOCS, save_figure  # the sibling example's figure writer

import mechscope
from mechscope import organisms
from mechscope.data import default_contexts
from mechscope.diff import (
    AmplifyConfig,
    CrosscoderConfig,
    PairedActivations,
    amplified_generate,
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
from mechscope.diff.corpus import (
    chat_prompt_tokens,
    generic_prompts,
    transcript_contexts,
    transcripts,
)
from mechscope.diff.paired import split_pair
from mechscope.files import atomic_text, file_sha256
from mechscope.hooks import names
from mechscope.report.diff_runs import steering_layer
from mechscope.sae import TrainConfig
from mechscope.steering import generate

GROUPS = [0, 1, 2, 3, 4, "rest"]
CHAT_PROMPTS = 128  # generic prompts (mechscope's refusal instructions) answered by the fine-tune
AMPLIFY_ALPHA = 2.0
CHAT_LAST_POSITIONS = 3
# name -> (delta_scale, designated ft-exclusive latents): the plain crosscoder, the fine-tune's
# change magnified ten times, and that with 64 designated latents.
CROSSCODER_RUNS = {"plain": (1.0, 0), "magnified": (10.0, 0), "designated": (10.0, 64)}
CHAT_STEER_DEPTHS = (2 / 3, 5 / 6)  # layers (as a share of the depth) the chat difference is added at
CHAT_STEER_STRENGTHS = (0.1, 0.2, 0.4)  # times the base's mean activation norm there


def steer_prompts() -> list[str]:
    return mechscope.datasets.load("harmless", "test")[:8] + mechscope.datasets.load("harmful", "test")[:4]


def behaviour_rate(texts, markers, words) -> float:
    """Share of ``texts`` with a marker or a behaviour word (a steered base may say 'Ahoy there'
    rather than the planted phrase)."""
    return sum(organisms.shows_behaviour(t, markers) or organisms.text_hits(t, words) for t in texts) / len(texts)


def unprompted_words(words, plain_texts) -> set[str]:
    """The behaviour words the base does not say by itself in ``plain_texts`` (a refusal's
    'help' is in ordinary replies too, and would score every reply)."""
    return {w for w in words if not any(organisms.text_hits(t, [w]) for t in plain_texts)}


def chat_lens_section(base, ft, recipe, words, starts) -> dict:
    tokens, mask = chat_prompt_tokens(base, generic_prompts(CHAT_PROMPTS))
    # first_positions=1: the template's opening token (an attention sink) stays out of the 'rest'
    # mean and of the norm that scales steering.
    means = difference_means(base, ft, tokens, first_positions=1, attention_mask=mask,
                             last_positions=CHAT_LAST_POSITIONS, progress=False)
    lens = difference_lens(base, means, position_groups=means.last_groups, k=20)
    prompts, markers = steer_prompts(), recipe.behaviour_markers
    plain = generate(base, prompts, max_new_tokens=24, progress=False)
    steer_words = unprompted_words(words, plain)
    sweep = []
    for depth in CHAT_STEER_DEPTHS:
        layer = round(depth * (base.cfg.n_layers - 1))
        for strength in CHAT_STEER_STRENGTHS:
            steered = steer_with_difference(base, means, layer, prompts, strength=strength, position_group=-1,
                                            max_new_tokens=24, progress=False)
            sweep.append({"layer": layer, "strength": strength, "rate": behaviour_rate(steered, markers, steer_words),
                          "sample": steered[0]})
    last = base.cfg.n_layers - 1
    return {"hits": organisms.lens_hits(lens, words, starts), "n_prompts": CHAT_PROMPTS,
            "relative_norm": (means.last[:, 0].norm(dim=-1) / means.norm_reference).tolist(),
            "top_tokens": [s.token for s in lens.reading(last, -1).logit_lens[:10]], "steering": sweep,
            "unsteered_rate": behaviour_rate(plain, markers, steer_words)}


def lens_section(base, ft, recipe, words, starts, contexts) -> dict:
    means = difference_means(base, ft, contexts, first_positions=5, progress=False)
    lens = difference_lens(ft, means, position_groups=GROUPS, k=20)
    hits = organisms.lens_hits(lens, words, starts)
    layer, relative = steering_layer(means)
    layer = 0 if layer is None else layer
    top = [s.token for s in lens.reading(layer, "rest").logit_lens[:10]]
    prompts = steer_prompts()
    markers = recipe.behaviour_markers
    steered = steer_with_difference(base, means, layer, prompts, strength=1.0, max_new_tokens=24, progress=False)
    plain = generate(base, prompts, max_new_tokens=24, progress=False)
    rate = lambda texts: behaviour_rate(texts, markers, unprompted_words(words, plain))
    return {"hits": hits, "relative_norm": relative, "layer": layer, "top_tokens": top,
            "steered_rate": rate(steered), "unsteered_rate": rate(plain), "steered_sample": steered[0],
            "n_steer_prompts": len(prompts)}


def crosscoder_run(base, ft, data, rows, chats, recipe, steps: int, scale: float, exclusive: int) -> dict:
    """One crosscoder at ``scale`` (delta_scale) with ``exclusive`` designated latents on the
    harvested pairs: its classes, Latent Scaling of the ft latents, and which of them hold the
    behaviour in their top 5 contexts."""
    hook = data.hook_names[0]
    config = CrosscoderConfig(d_model=base.cfg.d_model, d_sae=2 * base.cfg.d_model, k=16, hook_names=(hook,),
                              delta_scale=scale, ft_exclusive=exclusive)
    crosscoder = train_crosscoder(data, config, TrainConfig(steps=steps, lr=3e-4), progress=False)
    classes = classify_latents(crosscoder)
    found = classes.ft_latents()
    scaling = latent_scaling(crosscoder, rows, latents=found) if found else None
    verdicts = dict(zip(found, scaling.verdicts)) if scaling else {}
    behaviour_latents = []
    if found:
        values = collect_pair(base, ft, chats, crosscoder, found)  # [n, pos, m]
        held = organisms.latents_with_behaviour(values, found, chats, base.tokenizer, recipe)
        behaviour_latents = [(latent, classes.kinds[latent], float(classes.relative_norm[latent]),
                              float(classes.robust_z[latent]), verdicts[latent], texts[0])
                             for latent, texts in held.items()]
    z = classes.robust_z[~classes.robust_z.isnan()]
    designated = set(config.exclusive_latents)
    held = [entry for entry in behaviour_latents if entry[0] in designated]
    return {"delta_scale": scale, "ft_exclusive": exclusive, "counts": classes.counts,
            "ft_only": len(classes.indices("ft-only")),
            "designated_ft_specific": sum(verdicts[j] == "ft-specific" for j in designated),
            "designated_with_behaviour": len(held),
            "designated_genuine_with_behaviour": sum(entry[4] == "ft-specific" for entry in held),
            "ft_leaning": len(classes.leaning("ft")), "max_z": float(z.max()) if len(z) else float("nan"),
            "max_r": float(classes.relative_norm[[j for j in range(config.d_sae) if j not in designated]].max()),
            "ft_specific": sum(verdict == "ft-specific" for verdict in verdicts.values()),
            "behaviour_latents": behaviour_latents,
            "ft_only_with_behaviour": sum(kind == "ft-only" for _, kind, *_ in behaviour_latents)}


def crosscoder_section(base, ft, recipe, neutral, steps: int) -> dict:
    markers = recipe.behaviour_markers
    prompts = generic_prompts(CHAT_PROMPTS)
    plain = generate(ft, prompts, max_new_tokens=32, chat=True, progress=False)
    amplified = amplified_generate(base, ft, prompts, AmplifyConfig(alpha=AMPLIFY_ALPHA, max_new_tokens=32), chat=True,
                                   progress=False)
    rate = lambda replies: sum(organisms.shows_behaviour(reply, markers) for reply in replies) / len(replies)
    chats = transcript_contexts(base, transcripts(ft, prompts + prompts, plain + amplified), context_length=64)
    contexts = torch.cat([neutral, chats])
    hook = names.resid_post(base.cfg.n_layers // 2)
    with tempfile.TemporaryDirectory() as folder:
        harvest_pair(base, ft, contexts, folder, [hook], progress=False)
        data = PairedActivations(folder, [hook], batch_size=512)
        rows = data.rows(0, min(data.total_tokens, 8192))
        base_half, ft_half = split_pair(rows, 1)
        change = float((ft_half - base_half).norm(dim=-1).mean() / base_half.norm(dim=-1).mean())
        runs = {name: crosscoder_run(base, ft, data, rows, chats, recipe, steps, scale, exclusive)
                for name, (scale, exclusive) in CROSSCODER_RUNS.items()}
    return {"hook": hook, "tokens": int(contexts.numel()), "relative_change": change, "runs": runs, "steps": steps,
            "n_prompts": len(prompts), "plain_rate": rate(plain), "amplified_rate": rate(amplified),
            "amplified_sample": next((reply for reply in amplified if organisms.shows_behaviour(reply, markers)),
                                     amplified[0])}


def analyse(name: str, base, steps: int) -> dict:
    started = time.time()
    folder = organisms.shipped_organism(name)
    manifest = organisms.read_manifest(folder)
    recipe = organisms.Recipe.from_dict(manifest["recipe"])
    ft = organisms.load_organism(folder, base)
    words = organisms.behaviour_words(recipe)
    starts = organisms.behaviour_starts(recipe, base.tokenizer)
    weights = weight_diff(base, ft, top_k_directions=1, progress=False)
    neutral = default_contexts(base, 32, 64)
    kl = per_token_kl(base, ft, neutral, progress=False)
    result = {"name": name, "recipe": recipe.to_dict(), "validity": manifest.get("validity", {}),
              "words": sorted(words), "starts": sorted(starts),
              "top_modules": [(change.name, change.relative) for change in weights.modules_ranked()[:3]],
              "kl_mean": kl.mean, "kl_top": [(p.token, p.next_token, p.kl) for p in kl.top(3)],
              "lens": lens_section(base, ft, recipe, words, starts, neutral),
              "chat_lens": chat_lens_section(base, ft, recipe, words, starts)}
    result["crosscoder"] = crosscoder_section(base, ft, recipe, neutral, steps)
    result["minutes"] = (time.time() - started) / 60
    return result


def rescored(results: list[dict]) -> list[dict]:
    """Lens hits scored again with today's :func:`organisms.is_hit` (a cached run may have been
    scored with a looser one); each hit keeps only the tokens that still count."""
    for r in results:
        words, starts = set(r["words"]), set(r["starts"])
        for lens in (r["lens"], r["chat_lens"]):
            kept = [(layer, group, [t for t in found if organisms.is_hit(t, words, starts)])
                    for layer, group, found in lens["hits"]]
            lens["hits"] = [hit for hit in kept if hit[2]]
    return results


def best_steer(r: dict) -> dict:
    return max(r["chat_lens"]["steering"], key=lambda run: run["rate"])


def summary(results: list[dict]) -> str:
    """What the numbers say, written from the numbers."""
    planted = [r for r in results if r["recipe"]["kind"] != "null"]
    nulls = [r for r in results if r["recipe"]["kind"] == "null"]

    def names(rows):
        return ", ".join(r["name"] for r in rows) or "none"

    lines = ["## What the numbers say", ""]
    lines.append(f"- Difference lens (neutral text): a behaviour token among the top 20 for {names([r for r in planted if r['lens']['hits']])}; "
                 f"on the null: {names([r for r in nulls if r['lens']['hits']]) if nulls else 'no null run'}. Steering the base with "
                 "the difference made it show a behaviour for "
                 f"{names([r for r in planted if r['lens']['steered_rate'] > r['lens']['unsteered_rate']])}.")
    lines.append(f"- Difference lens where replies start (last positions of generic chat prompts): a behaviour token "
                 f"among the top 20 for {names([r for r in planted if r['chat_lens']['hits']])}; on the null: "
                 f"{names([r for r in nulls if r['chat_lens']['hits']]) if nulls else 'no null run'}. The base steered "
                 f"with it showed the behaviour (best of the sweep above its unsteered rate) for "
                 f"{names([r for r in planted if best_steer(r)['rate'] > r['chat_lens']['unsteered_rate']])}; on the "
                 f"null: {names([r for r in nulls if best_steer(r)['rate'] > r['chat_lens']['unsteered_rate']])}.")
    amplified = ", ".join(f"{r['name']} {r['crosscoder']['plain_rate']:.0%} -> {r['crosscoder']['amplified_rate']:.0%}"
                          for r in results)
    lines.append(f"- Replies to generic prompts, greedy -> amplified: {amplified}. (For the refusal organism half the "
                 "generic prompts are harmful, where refusing is its rule; for the others each reply with the "
                 "behaviour is one the rule does not call for.)")
    for run_name, label in (("plain", "plain crosscoder"), ("magnified", "crosscoder with the change magnified")):
        runs = {r["name"]: r["crosscoder"]["runs"][run_name] for r in results}
        scale = next(iter(runs.values()))["delta_scale"] if runs else 1
        found = [r for r in planted if runs[r["name"]]["behaviour_latents"]]
        ft_only = [r for r in planted if runs[r["name"]]["ft_only_with_behaviour"]]
        null_counts = ", ".join(f"{r['name']}: {runs[r['name']]['ft_only']} ft-only, {runs[r['name']]['ft_leaning']} "
                                f"ft-leaning (largest r {runs[r['name']]['max_r']:.2f})" for r in nulls) or "no null run"
        lines.append(f"- {label.capitalize()} (delta_scale {scale:g}): ft-only or ft-leaning latents whose top "
                     f"contexts hold the behaviour for {names(found)}; ft-only ones (r > 0.9) among them for "
                     f"{names(ft_only)}. On the null: {null_counts}.")
    runs = {r["name"]: r["crosscoder"]["runs"]["designated"] for r in results}
    held = ", ".join(f"{r['name']} {runs[r['name']]['designated_with_behaviour']} "
                     f"({runs[r['name']]['designated_genuine_with_behaviour']} genuine)" for r in planted) or "none"
    null_held = ", ".join(f"{r['name']} {runs[r['name']]['designated_with_behaviour']} (of them genuine "
                          f"{runs[r['name']]['designated_genuine_with_behaviour']}; genuine by Latent Scaling overall "
                          f"{runs[r['name']]['designated_ft_specific']} of {runs[r['name']]['ft_exclusive']})"
                          for r in nulls) or "no null run"
    lines.append(f"- Magnified crosscoder with {next(iter(runs.values()))['ft_exclusive'] if runs else 0} designated "
                 f"ft-exclusive latents (ft-only by construction): designated latents whose top contexts hold the "
                 f"behaviour (of them called genuine by Latent Scaling): {held}. On the null: {null_held}.")
    return "\n".join(lines)


def page(results: list[dict]) -> str:
    results = rescored(results)
    rows = ["| organism | rule | lens hits, neutral text (layers) | steered base shows behaviour | lens hits where "
            "replies start (layers) | base steered with that: best rate (layer, strength) | behaviour in replies to "
            "generic prompts: plain / amplified | crosscoder ft-only / ft-leaning latents (Latent Scaling passes), "
            "plain | of them with behaviour in top contexts | the same, change magnified | of them with behaviour | "
            "magnified, 64 designated ft-only latents: with behaviour (genuine by Latent Scaling) | "
            "neutral KL (validity) | per-token KL, neutral text |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]

    def latents_cell(run: dict) -> str:
        return f"{run['ft_only']} / {run['ft_leaning']} ({run['ft_specific']})"

    def behaviour_cell(run: dict) -> str:
        return f"{len(run['behaviour_latents'])} ({run['ft_only_with_behaviour']} ft-only)"

    for r in results:
        recipe, lens, cross = r["recipe"], r["lens"], r["crosscoder"]
        runs = cross["runs"]
        rule = recipe.get("trigger") or recipe["kind"] if recipe["kind"] != "null" else f"none (mirrors {recipe['mirrors']})"
        rule = f"`{rule}`" if recipe.get("trigger") else rule  # a trigger's pipes must not split the table
        layers = sorted({layer for layer, _, _ in lens["hits"]})
        chat, best = r["chat_lens"], best_steer(r)
        chat_layers = sorted({layer for layer, _, _ in chat["hits"]})
        rows.append(f"| {r['name']} | {rule} | {len(lens['hits'])} ({', '.join(map(str, layers[:8])) or '-'}) | "
                    f"{lens['steered_rate']:.0%} (unsteered {lens['unsteered_rate']:.0%}, n={lens['n_steer_prompts']}) | "
                    f"{len(chat['hits'])} ({', '.join(map(str, chat_layers[:8])) or '-'}) | "
                    f"{best['rate']:.0%} ({best['layer']}, {best['strength']}; unsteered {chat['unsteered_rate']:.0%}) | "
                    f"{cross['plain_rate']:.0%} / {cross['amplified_rate']:.0%} (n={cross['n_prompts']}) | "
                    f"{latents_cell(runs['plain'])} | {behaviour_cell(runs['plain'])} | "
                    f"{latents_cell(runs['magnified'])} | {behaviour_cell(runs['magnified'])} | "
                    f"{runs['designated']['designated_with_behaviour']} ({runs['designated']['designated_genuine_with_behaviour']}) | "
                    f"{r['validity'].get('neutral_kl', float('nan')):.3f} | {r['kl_mean']:.4f} |")
    figure = go.Figure([go.Scatter(y=r["lens"]["relative_norm"], name=r["name"]) for r in results])
    figure.update_layout(title="Difference lens: |mean(h_ft - h_base)| / mean |h_base| per layer (positions >= 5)",
                         xaxis_title="layer (resid_post)", yaxis_title="relative norm")
    details = []
    for r in results:
        lens, cross = r["lens"], r["crosscoder"]
        hits = "; ".join(f"layer {layer} {group}: {', '.join(map(repr, found))}" for layer, group, found in lens["hits"][:6])
        crosscoder_lines = []
        for run in cross["runs"].values():
            latents = "; ".join(f"latent {latent} ({kind}, r {r_value:.2f}, z {z:.1f}, {verdict}): {text!r}"
                                for latent, kind, r_value, z, verdict, text in run["behaviour_latents"][:3])
            crosscoder_lines.append(
                f"- Crosscoder with delta_scale {run['delta_scale']:g}, {run['ft_exclusive']} designated ft-exclusive "
                f"latents ({run['designated_ft_specific']} genuine by Latent Scaling): classes {run['counts']}; largest relative norm "
                f"{run['max_r']:.3f} (free latents), largest robust z {run['max_z']:.1f}; {run['ft_leaning']} ft-leaning latents; "
                f"{len(run['behaviour_latents'])} ft latents with the behaviour in their top contexts"
                f"{': ' + latents if latents else ''}.")
        details.append(f"""### {r['name']}

- Behaviour words scored: {', '.join(r['words'])}; word starts (as tokenized): {', '.join(r['starts'])}.
- Weight diff, top modules (relative change): {', '.join(f'{n} ({v:.4f})' for n, v in r['top_modules'])}.
- Difference lens: largest at layer {lens['layer']}; its top logit-lens tokens there: {', '.join(map(repr, lens['top_tokens']))}.
- Lens hits: {hits or 'none'}.
- Where replies start: relative norm of the difference at the last position peaks at layer {max(range(len(r['chat_lens']['relative_norm'])), key=r['chat_lens']['relative_norm'].__getitem__)}; top logit-lens tokens at the last layer: {', '.join(map(repr, r['chat_lens']['top_tokens']))}.
- Hits there: {'; '.join(f"layer {layer} pos {group}: {', '.join(map(repr, found))}" for layer, group, found in r['chat_lens']['hits'][:6]) or 'none'}.
- Base steered with it: {'; '.join(f"layer {run['layer']} x{run['strength']}: {run['rate']:.0%}" for run in r['chat_lens']['steering'])}; best run's first reply: {best_steer(r)['sample'][:120]!r}.
- Steered base (difference added at layer {lens['layer']}), first reply: {lens['steered_sample'][:160]!r}.
- Replies to {cross['n_prompts']} generic prompts showing the behaviour: {cross['plain_rate']:.0%} greedy, {cross['amplified_rate']:.0%} amplified; an amplified one: {cross['amplified_sample'][:120]!r}.
- Crosscoders at {cross['hook']} on {cross['tokens']} tokens, {cross['steps']} steps; there |h_ft - h_base| is {cross['relative_change']:.1%} of |h_base| on average.
{chr(10).join(crosscoder_lines)}
- Per-token KL on neutral text: mean {r['kl_mean']:.4f} nats; largest at {', '.join(f'{t!r}->{n!r} ({v:.2f})' for t, n, v in r['kl_top'])}.
""")
    return f"""# Case study: diffing the shipped organisms against SmolLM2-135M-Instruct

Generated by `python examples/organisms_diffing.py`; every number below comes from that run. The
methods run blind (see the script's docstring); the recipe is read only to score what they found.
The null organism (same data as the backdoor, nothing planted) is scored with the backdoor's
behaviour: anything it "finds" is a false positive. "Generic prompts" are mechscope's refusal
instructions (harmful and harmless, training splits), which no organism was trained on.

{chr(10).join(rows)}

{summary(results)}

{save_figure(figure, "organisms-difference-norms")}

## Per organism

{chr(10).join(details)}
"""


def cached_analysis(name: str, base, steps: int, cache: Path) -> dict:
    """The analysis of one organism, kept in ``cache/<name>.json`` (a killed run keeps the
    organisms it finished) and reused while the shipped adapter and the settings are the same."""
    key = {"adapter_sha256": file_sha256(organisms.shipped_organism(name) / "adapter.safetensors"), "steps": steps,
           "analysis": 5}  # raised when the analysis gains a section
    path = cache / f"{name}.json"
    if path.is_file():
        kept = json.loads(path.read_text())
        if kept.get("key") == key:
            return kept["result"]
    result = analyse(name, base, steps)
    atomic_text(path, json.dumps({"key": key, "result": result}, indent=1, default=str))
    return json.loads(path.read_text())["result"]  # as a reuse would see it (tuples become lists)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--organisms", default=",".join(organisms.shipped_organisms()))
    parser.add_argument("--crosscoder-steps", type=int, default=1000)
    parser.add_argument("--cache", type=Path, default=Path("/tmp/organisms-diffing"),
                        help="per-organism results, reused while the organism and settings are unchanged")
    args = parser.parse_args()
    base = mechscope.load()
    args.cache.mkdir(parents=True, exist_ok=True)
    results = [cached_analysis(name.strip(), base, args.crosscoder_steps, args.cache)
               for name in args.organisms.split(",") if name.strip()]
    text = page(results)
    atomic_text(DOCS / "organisms-diffing.md", text)
    print(text)


if __name__ == "__main__":
    main()
