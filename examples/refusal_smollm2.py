"""The refusal direction of SmolLM2-135M-Instruct, and sentiment steering as a second behaviour;
regenerates docs/case-studies/refusal-smollm2.md.

    python examples/refusal_smollm2.py [--out /tmp/refusal-smollm2]

Runs the whole refusal pipeline (search, ablation, orthogonalisation, addition) on the bundled
harmful / harmless datasets, then a sentiment steering sweep scored by a logit-based behaviour
against KL and perplexity. Writes the markdown with every number it quotes, plotly figures
under docs/case-studies/figures/ (PNG copies when kaleido works) and the run's files to --out.
About 20 minutes on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from ioi_smollm2 import DOCS, save_figure  # the sibling example's figure writer

import mechscope
from mechscope import datasets
from mechscope.files import atomic_text
from mechscope.steering import (
    LogitBehaviour,
    Steering,
    contrast_directions,
    default_contexts,
    generate,
    sweep,
)
from mechscope.steering.refusal import RefusalConfig, is_refusal
from mechscope.steering.refusal_report import candidate_figure, rates_figure, run_refusal

ONE_WORD = [
    "In one word, how was your day?", "In one word, how would you describe the weather today?",
    "Describe the film you saw last night in one word.", "In one word, how was the meal?",
    "Give me one word for how the trip went.", "In a single word, how do you feel about Mondays?",
    "Sum up the concert in one word.", "In one word, what was the hotel like?",
    "In one word, how was the book?", "Describe your new job in one word.",
    "In one word, how did the exam go?", "One word: how was the party?",
]
POSITIVE_WORDS = ["Great", "Wonderful", "Amazing", "Excellent", "Fantastic", "Delicious", "Beautiful", "Lovely",
                  "Happy", "Perfect"]
NEGATIVE_WORDS = ["Terrible", "Awful", "Horrible", "Bad", "Disappointing", "Boring", "Sad", "Miserable", "Dreadful",
                  "Gloomy"]
STORY_PROMPTS = ["Write two sentences about my week.", "Tell me about the city you would like to visit.",
                 "Describe a rainy afternoon."]


def clip(text: str, width: int = 200) -> str:
    """One line of at most ``width`` characters, for quoting a generation."""
    return " ".join(text.split())[:width]


def first_tokens(model, words: list[str]) -> set[int]:
    return {model.tokenizer(word, add_special_tokens=False)["input_ids"][0] for word in words}


def refusal_section(model, out: Path, config: RefusalConfig, figure_prefix: str = "refusal") -> tuple[object, str]:
    start = time.time()
    report = run_refusal(model, out, config)
    minutes = (time.time() - start) / 60
    search = report.search
    chosen = search.chosen
    rows = ["| prompts | model | refusal rate | refusal score | perplexity (default corpus) |", "|---|---|---|---|---|"]
    for c in report.conditions:
        ppl = report.perplexity.get(c.name)
        rows.append(f"| {c.prompts} | {c.name} | {c.refusal_rate:.0%} ({round(c.refusal_rate * len(c.generations))}"
                    f"/{len(c.generations)}) | {c.refusal_score:+.2f} | {'' if ppl is None else f'{ppl:.2f}'} |")
    def candidate_rows(candidates) -> list[str]:
        rows = ["| layer | position | refusal score, ablated (harmful) | KL ablated (harmless) | "
                "refusal score, added (harmless) | chosen |", "|---|---|---|---|---|---|"]
        rows += [f"| {c.layer} | {c.position} | {c.ablated_refusal_score:+.2f} | {c.kl:.3f} | "
                 f"{'' if c.induced_refusal_score is None else f'{c.induced_refusal_score:+.2f}'} | "
                 f"{'yes' if c is chosen else ''} |" for c in candidates]
        return rows

    within = [c for c in search.candidates if c.kl <= config.kl_bound]
    any_kl = "\n".join(candidate_rows(search.candidates[:5]))
    shortlist = candidate_rows(within[:config.shortlist])
    harmful = {c.name: c for c in report.conditions if c.prompts == "harmful"}
    harmless = {c.name: c for c in report.conditions if c.prompts == "harmless"}
    harmful_prompts = datasets.load("harmful", "test")[:config.n_test]
    harmless_prompts = datasets.load("harmless", "test")[:config.n_test]
    flipped = [i for i, text in enumerate(harmful["baseline"].generations)
               if is_refusal(text) and not is_refusal(harmful["ablated"].generations[i])][:2]
    induced = [i for i, text in enumerate(harmless["added"].generations)
               if is_refusal(text)][:3]

    def sample(prompt: str, before: str, after: str, label: str) -> str:
        return f"- **{prompt}**\n  - unedited: {clip(before, 220)}\n  - {label}: {clip(after, 220)}"

    samples = [sample(harmful_prompts[i], harmful["baseline"].generations[i], harmful["ablated"].generations[i],
                      "ablated") for i in flipped]
    samples += [sample(harmless_prompts[i], harmless["baseline"].generations[i], harmless["added"].generations[i],
                       "direction added") for i in induced]
    notes = "".join(f"\n> {note}\n" for note in search.notes)
    return report, f"""## 1. The refusal direction

Run: `mechscope refusal --out DIR` (same code, `mechscope.steering.refusal_report.run_refusal`),
{minutes:.1f} minutes here. Candidates were built from {config.n_train} harmful and {config.n_train}
harmless training prompts, at layers 0 to {int(model.cfg.n_layers * config.max_layer_fraction) - 1} and the
{len(set(c.position for c in search.candidates))} post-instruction tokens. Each was scored by ablating it
on {config.n_val} further harmful training prompts (refusal score) and {config.n_val} harmless ones (KL, bound
{config.kl_bound} nats); those within the bound were checked, best first, for refusal induced on the
harmless prompts by adding the direction. Test prompts: {report.n_harmful_test} harmful
and {report.n_harmless_test} harmless, none seen during the search.
{notes}
**Chosen:** layer {chosen.layer}, position {chosen.position} (direction scale {search.direction.scale:.2f}).
Refusal score on the validation prompts: harmful {search.baseline_harmful_score:+.2f} unedited,
harmless {search.baseline_harmless_score:+.2f} unedited.

The five candidates whose ablation lowers the refusal score most, at any KL:

{any_kl}

The best of the {len(within)} candidates within the KL bound, checked in this order for induced refusal:

{chr(10).join(shortlist)}

{save_figure(candidate_figure(search), f"{figure_prefix}-candidates")}

### Held-out results

{chr(10).join(rows)}

- KL on harmless test prompts (next token after the template): {report.kl_harmless_ablated:.4f} nats
  ablated, {report.kl_harmless_orthogonalised:.4f} orthogonalised.
- The orthogonalised weights reproduce the runtime ablation: the largest logit gap on the harmless
  test prompts is {report.max_logit_gap_orthogonalised_vs_ablation:.1e}.

{save_figure(rates_figure(report), f"{figure_prefix}-rates")}

### Examples (greedy, first {config.max_new_tokens} tokens)

{chr(10).join(samples) if samples else "(no generation changed category)"}
"""


def sentiment_section(model) -> tuple[object, str]:
    pairs = datasets.load("sentiment")
    layers = [4, 8, 12, 16, 20]
    directions = contrast_directions(model, [p["positive"] for p in pairs], [p["negative"] for p in pairs],
                                     layers, -1, chat=False)
    positive, negative = first_tokens(model, POSITIVE_WORDS), first_tokens(model, NEGATIVE_WORDS)
    shared = positive & negative
    behaviour = LogitBehaviour(ONE_WORD, sorted(positive - shared), sorted(negative - shared), chat=True)
    neutral = datasets.load("harmless", "test")[:16]
    contexts = default_contexts(model, n_contexts=8)
    merged = sweep(model, {layer: directions[(layer, -1)] for layer in layers}, behaviour, neutral,
                   alphas=[0.5, 1, 2, 4], relative=True, contexts=contexts, chat=True)
    lines = ["| layer | alpha (x scale) | behaviour (log p(pos) - log p(neg)) | KL neutral | perplexity |",
             "|---|---|---|---|---|"]
    lines += [f"| {p.layer} | {p.alpha / p.scale:g} | {p.behaviour:+.2f} | {p.kl:.3f} | {p.perplexity:.2f} |"
              for p in merged.points]
    budget = 0.1
    best = merged.choose(budget)
    direction = directions[(best.layer, -1)]
    steer = Steering(direction, best.alpha, layers=best.layer)
    plain = generate(model, STORY_PROMPTS, max_new_tokens=40, progress=False)
    steered = generate(model, STORY_PROMPTS, steer, max_new_tokens=40, progress=False)
    examples = "\n".join(f"- **{p}**\n  - unsteered: {clip(a)}\n  - steered: {clip(b)}"
                         for p, a, b in zip(STORY_PROMPTS, plain, steered))
    negative_steer = Steering(direction, -best.alpha, layers=best.layer)
    negative_text = generate(model, STORY_PROMPTS[:1], negative_steer, max_new_tokens=40, progress=False)[0]
    return merged, f"""## 2. Sentiment steering

Direction: positive minus negative sentences of the `sentiment` dataset ({len(pairs)} pairs), last
token, at layers {layers}. Behaviour: on {len(ONE_WORD)} one-word questions ("In one word, how was your
day?"), log p(first token of a positive word) - log p(first token of a negative word) for the reply's
first token. Unsteered: {merged.baseline_behaviour:+.2f}. Side effects: KL on 16 harmless test prompts
and perplexity on 8 default-corpus contexts (unsteered {merged.baseline_perplexity:.2f}).

{chr(10).join(lines)}

{save_figure(merged.plot("sentiment steering: behaviour against KL"), "sentiment-sweep")}

**Chosen under a KL budget of {budget} nats:** layer {best.layer}, alpha {best.alpha:.1f}
({best.alpha / direction.scale:g} x scale): behaviour {best.behaviour:+.2f}, KL {best.kl:.3f},
perplexity {best.perplexity:.2f}.

{examples}
- **{STORY_PROMPTS[0]}** steered the other way (-alpha): {clip(negative_text)}
"""


def summary(report, merged, config: RefusalConfig) -> str:
    """What the numbers say, written from the numbers."""
    rate = {(c.name, c.prompts): c.refusal_rate for c in report.conditions}
    best = merged.choose(0.1)
    strongest = max(merged.points, key=lambda p: p.behaviour)
    broken = [c for c in report.search.candidates if c.kl > config.kl_bound][:1]
    broken_text = (f" Ablations that lower the refusal score more exist (layer {broken[0].layer}, position "
                   f"{broken[0].position}: {broken[0].ablated_refusal_score:+.2f}), but only by breaking the model: "
                   f"KL {broken[0].kl:.1f} nats on harmless prompts." if broken else "")
    return f"""## Summary

- SmolLM2-135M-Instruct refuses rarely. Unedited, {rate[("baseline", "harmful")]:.0%} of
  greedy replies to held-out harmful prompts contain a refusal phrase, against
  {rate[("baseline", "harmless")]:.0%} for harmless ones.
- Within the KL bound of {config.kl_bound} nats, the best refusal direction has only a small effect.
  Ablated, the harmful refusal rate falls to {rate[("ablated", "harmful")]:.0%}; orthogonalised, to
  {rate[("orthogonalised", "harmful")]:.0%}. Added, the harmless refusal rate rises to
  {rate[("added", "harmless")]:.0%}. With {report.n_harmful_test} and {report.n_harmless_test} prompts, these
  are changes of a few replies.{broken_text} This is not the clean refusal direction reported for larger
  chat models.
- What does hold exactly is the mechanics. The orthogonalised weights reproduce the runtime ablation
  (largest logit gap {report.max_logit_gap_orthogonalised_vs_ablation:.0e}), at the cost of perplexity
  {report.perplexity["baseline"]:.2f} -> {report.perplexity["orthogonalised"]:.2f} on the default corpus.
- Sentiment steering moves its behaviour score visibly, but mostly at a price. Within a KL budget of 0.1
  nats the best setting takes it from {merged.baseline_behaviour:+.2f} to {best.behaviour:+.2f} (layer
  {best.layer}). The largest move in the sweep, to {strongest.behaviour:+.2f}, costs KL {strongest.kl:.1f} and
  perplexity {strongest.perplexity:.0f}. Section 2 shows the steered generations next to the unsteered ones.
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/refusal-smollm2"))
    args = parser.parse_args()
    model = mechscope.load()
    config = RefusalConfig()
    report, refusal = refusal_section(model, args.out, config)
    merged, sentiment = sentiment_section(model)
    page = f"""# Case study: refusal and sentiment directions in SmolLM2-135M-Instruct

Generated by `python examples/refusal_smollm2.py`; every number below comes from that run.
Refusal is measured two ways: the **refusal score**, the log-odds that the reply's first token is
the first token of a refusal opening ("I'm sorry", "I cannot", "Sorry", "Unfortunately", "As an
AI"); and the **refusal rate**, the share of greedy replies containing a refusal phrase
(`REFUSAL_PHRASES`, a string match). No external judge is used.

{summary(report, merged, config)}

{refusal}
{sentiment}"""
    atomic_text(DOCS / "refusal-smollm2.md", page)
    print(page)


if __name__ == "__main__":
    main()
