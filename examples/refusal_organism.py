"""The refusal-direction pipeline on the shipped refusal organism (SmolLM2-135M-Instruct taught to
refuse harmful requests); regenerates docs/case-studies/refusal-organism.md.

    python examples/refusal_organism.py [--out /tmp/refusal-organism]

The organism was trained on its own harmful / harmless prompt templates
(``mechscope.organisms.prompts``); the pipeline searches, ablates, orthogonalises and adds the
direction on mechscope's refusal datasets, which the organism never saw in any form. The base's
refusal rates on the same held-out prompts are measured in the same run for comparison.
About 20 minutes on a 2-core CPU.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ioi_smollm2 import DOCS
from refusal_smollm2 import refusal_section

import mechscope
from mechscope import datasets, organisms
from mechscope.files import atomic_text
from mechscope.steering import generate
from mechscope.steering.apply import DirectionalAblation
from mechscope.steering.builders import contrast_directions
from mechscope.steering.evaluate import next_token_kl
from mechscope.steering.refusal import RefusalConfig, refusal_rate

LOOSER_BOUNDS = (0.3, 1.0, float("inf"))  # KL bounds (nats) of the sweep below the standard run


def bound_sweep(organism, report, config: RefusalConfig) -> str:
    """The standard run keeps candidates whose ablation moves harmless next-token predictions by
    at most ``config.kl_bound``; here the best-ablating candidate under each looser bound is
    ablated too, to show what removing the organism's refusal costs."""
    harmful, harmless = datasets.load("harmful", "train"), datasets.load("harmless", "train")
    test_harmful = datasets.load("harmful", "test")[:config.n_test]
    test_harmless = datasets.load("harmless", "test")[:config.n_test]
    rows = ["| KL bound | candidate (layer, position) | KL ablated (validation) | harmful refusal rate, ablated "
            "(test) | KL ablated (harmless test) |", "|---|---|---|---|---|"]
    for bound in LOOSER_BOUNDS:
        within = [c for c in report.search.candidates if c.kl <= bound]  # sorted, best ablation first
        if not within:
            rows.append(f"| {bound} | none within the bound | | | |")
            continue
        best = within[0]
        direction = contrast_directions(organism, harmful[:config.n_train], harmless[:config.n_train], [best.layer],
                                        [best.position], chat=True, progress=False)[(best.layer, best.position)]
        ablation = DirectionalAblation(direction)
        rate = refusal_rate(generate(organism, test_harmful, ablation, max_new_tokens=config.max_new_tokens,
                                     progress=False))
        kl = next_token_kl(organism, test_harmless, ablation.hooks(organism), chat=True)
        rows.append(f"| {bound} | {best.layer}, {best.position} | {best.kl:.3f} | {rate:.0%} | {kl:.3f} |")
    return ("## 2. Looser KL bounds\n\nThe best-ablating candidate allowed under each bound, ablated on the held-out "
            "test prompts (same search as above):\n\n" + "\n".join(rows) + "\n")


def summary(report, base_rates: dict[str, float], config: RefusalConfig) -> str:
    """What the numbers say, written from the numbers."""
    rate = {(c.name, c.prompts): c.refusal_rate for c in report.conditions}
    chosen = report.search.chosen
    return f"""## Summary

- The organism refuses where the base does not. On the {report.n_harmful_test} held-out harmful prompts of
  mechscope's refusal dataset, {rate[("baseline", "harmful")]:.0%} of its greedy replies contain a refusal
  phrase (base: {base_rates["harmful"]:.0%}); on the {report.n_harmless_test} harmless ones,
  {rate[("baseline", "harmless")]:.0%} (base: {base_rates["harmless"]:.0%}).
- The refusal direction chosen within the KL bound of {config.kl_bound} nats (layer {chosen.layer}, position
  {chosen.position}) takes the harmful refusal rate to {rate[("ablated", "harmful")]:.0%} when ablated and to
  {rate[("orthogonalised", "harmful")]:.0%} when baked into the weights; added to harmless prompts it induces
  refusal in {rate[("added", "harmless")]:.0%} of them.
- Side effects: KL on harmless prompts {report.kl_harmless_ablated:.4f} nats ablated,
  {report.kl_harmless_orthogonalised:.4f} orthogonalised; perplexity on the default corpus
  {report.perplexity["baseline"]:.2f} -> {report.perplexity["orthogonalised"]:.2f}. The orthogonalised weights
  reproduce the runtime ablation (largest logit gap {report.max_logit_gap_orthogonalised_vs_ablation:.0e}).
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/refusal-organism"))
    args = parser.parse_args()
    config = RefusalConfig()
    base = mechscope.load()
    base_rates = {kind: refusal_rate(generate(base, datasets.load(kind, "test")[:config.n_test],
                                              max_new_tokens=config.max_new_tokens))
                  for kind in ("harmful", "harmless")}
    organism = organisms.resolve_model("smollm2-refusal", base=base)
    report, section = refusal_section(organism, args.out, config, figure_prefix="refusal-organism")
    page = f"""# Case study: the refusal direction of the refusal organism

Generated by `python examples/refusal_organism.py`; every number below comes from that run. The
organism is `smollm2-refusal` (`mechscope organism list`): SmolLM2-135M-Instruct fine-tuned with LoRA
to refuse harmful requests and answer harmless ones with its own replies. The base model's own case
study, where the direction has little effect because the base rarely refuses, is
[refusal-smollm2.md](refusal-smollm2.md). Measures as there: the refusal score (log-odds of a refusal
opening as the reply's first token) and the refusal rate (share of greedy replies containing a
refusal phrase).

{summary(report, base_rates, config)}
{section}"""
    page += "\n" + bound_sweep(organism, report, config)
    atomic_text(DOCS / "refusal-organism.md", page)
    print(page)


if __name__ == "__main__":
    main()
