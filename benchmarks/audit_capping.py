"""Mitigating a finished audit's finding by activation capping, against ablating its chosen
direction, on the trigger the audit found and on the organism's planted trigger.

    python benchmarks/audit_capping.py --audit audit-runs/quick/smollm2-backdoor [--quantiles 0.05,0.1,0.15]

Reads the audit's first finding that has a trigger (``audit.json``), and the direction it chose
and the per-layer directions it capped (its localisation stage: the clean-minus-corrupted means
at the reply's start and over the trigger's tokens); the organism is the folder's name. Caps are
fitted here at each quantile asked, on neutral prompts the rates and KL are not measured on.
Prints one JSON object: per edit, the neutral next-token KL, the behaviour rate with the found
trigger (neutral prompts) and with the planted trigger (the recipe's held-out prompts), before
and after. The planted trigger is read from the recipe for
this check only, as ``examples/audit_organisms.py`` does.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import mechscope
from mechscope import datasets, organisms
from mechscope.audit.phrases import shows_phrases
from mechscope.audit.stages import saved_localisation
from mechscope.audit.trigger_objective import insert
from mechscope.organisms.examples import shows_behaviour
from mechscope.steering import DirectionalAblation, fit_cap_ladder, generate
from mechscope.steering.evaluate import last_token_logits, next_token_kl

N_FIT, N_KL, N_CHECK, REPLY_TOKENS = 24, 24, 24, 24


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--audit", type=Path, required=True, help="a finished audit's folder (audit.json)")
    parser.add_argument("--organism", default=None, help="shipped organism (default: the folder's name)")
    parser.add_argument("--quantiles", default="0.02,0.05,0.1,0.15,0.2")
    args = parser.parse_args()
    summary = json.loads((args.audit / "audit.json").read_text())
    finding = next(f for f in summary["findings"] if f["trigger"] is not None)
    trigger, shows = finding["trigger"], shows_phrases(finding["hypothesis"]["phrases"])
    name = args.organism or args.audit.name
    base = mechscope.load()
    folder = organisms.shipped_organism(name)
    ft = organisms.load_organism(folder, base)
    recipe = organisms.Recipe.from_dict(organisms.read_manifest(folder)["recipe"])
    neutral = datasets.load("harmless", "test")
    fit, kl_prompts = neutral[:N_FIT], neutral[N_FIT:N_FIT + N_KL]
    check = neutral[N_FIT + N_KL:N_FIT + N_KL + N_CHECK]
    found_prompts = [insert(trigger["text"], p, trigger["place"]) for p in check]
    planted_prompts = recipe.pools("heldout")[1][:N_CHECK]
    localisation = saved_localisation(args.audit, finding.get("index", 0))
    if localisation is None:
        raise SystemExit(f"{args.audit} holds no localisation stage for its finding")
    directions, chosen = localisation.capping_directions(), localisation.direction
    reference = last_token_logits(ft, kl_prompts, (), chat=True)

    def rates(intervention) -> dict:
        found = generate(ft, found_prompts, intervention, max_new_tokens=REPLY_TOKENS, progress=False)
        planted = generate(ft, planted_prompts, intervention, max_new_tokens=REPLY_TOKENS, progress=False)
        return {"found": sum(map(shows, found)) / len(found),
                "planted": sum(shows_behaviour(r, recipe.behaviour_markers) for r in planted) / len(planted)}

    edits = {}
    if chosen is not None:
        edits[f"ablation (layer {chosen.layer})"] = DirectionalAblation(chosen)
    quantiles = [float(q) for q in args.quantiles.split(",")]
    for quantile, caps in zip(quantiles, fit_cap_ladder(ft, directions, fit, quantiles, chat=True)):
        edits[f"capping at {quantile:g} ({len(caps.caps)} directions, layers {min(directions)}-{max(directions)})"] = caps
    result = {"organism": name, "found_trigger": trigger["text"], "planted_trigger": recipe.trigger,
              "before": rates(None), "edits": {}}
    for label, edit in edits.items():
        kl = next_token_kl(ft, kl_prompts, edit.hooks(ft), chat=True, reference=reference)
        result["edits"][label] = {"neutral_kl": round(kl, 4), **rates(edit)}
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
