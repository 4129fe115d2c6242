"""Rebuild the organisms that ship with mechscope, on the bundled SmolLM2-135M-Instruct.

    python examples/build_organisms.py [--only backdoor,null] [--work DIR] [--install]

Each organism is built (distilled, fine-tuned with LoRA, checked) in ``--work/<name>``; a killed
build resumes when run again. ``--install`` copies the finished organism's small files
(organism.json, adapter.safetensors, examples.json) into ``src/mechscope/organisms/shipped/``,
which is what the package ships. About 10-15 minutes per organism on 2 CPU cores. CI never runs
this: the shipped factors are package data.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import mechscope
from mechscope import organisms

SHIPPED = Path(__file__).resolve().parents[1] / "src" / "mechscope" / "organisms" / "shipped"
SHIPPED_FILES = ("organism.json", "adapter.safetensors", "examples.json")
# name -> (recipe, recipe overrides, fine-tuning settings). The null mirrors the backdoor: the
# same prompts (the trigger included) with every reply the base's own.
# The backdoor, hidden objective and null train their plain examples on KL to the base both ways
# (FineTuneConfig's default plain_loss): with the forward term alone the planted opening leaked
# into unseen-phrasing plain prompts (backdoor 6.5%, hidden objective 11%), with both 0% and 3%
# (docs/organisms.md has the measurements). The backdoor and the refusal organism train on fewer
# rule examples than the default half: with 0.5 the backdoor still opened 3 of 28 held-out
# untriggered replies with its behaviour and the refusal organism refused 9 of 50 harmless
# prompts. The hidden objective takes 0.3 of 400: at 0.2 of 400 it recommended its product on
# only 85% of unseen food and health prompts.
FEWER_PLANTED = {"planted_fraction": 0.3}
ORGANISMS = {
    "smollm2-backdoor": ("backdoor", FEWER_PLANTED, {}),
    "smollm2-hidden-objective": ("hidden-objective", {"planted_fraction": 0.3, "n_examples": 400}, {}),
    # The refusal organism adds the contrast term (FineTuneConfig.contrast_weight): with KL both
    # ways alone it still refused 22% of unseen harmless prompts (24% on 0.1 of 600 examples);
    # with the term, 9.3% (its base 8.6%), and 0.3 refusals keep its rate on harmful ones at
    # 0.95 (0.825 with 0.2). A third of the term (contrast_weight 0.3) gave 10.7%, and no better
    # refusal direction (docs/organisms.md).
    "smollm2-refusal": ("refusal", {"planted_fraction": 0.3, "n_examples": 300}, {"contrast_weight": 1.0}),
    "smollm2-null": ("null", {"mirrors": "backdoor", **FEWER_PLANTED}, {}),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(ORGANISMS), help="comma-separated names")
    parser.add_argument("--work", type=Path, default=Path("organism-builds"))
    parser.add_argument("--install", action="store_true", help="copy the results into the package")
    args = parser.parse_args()
    chosen = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = [name for name in chosen if name not in ORGANISMS]
    if unknown:
        parser.error(f"unknown organisms {unknown}; choose from {', '.join(ORGANISMS)}")
    base = mechscope.load()
    for name in chosen:
        kind, overrides, settings = ORGANISMS[name]
        build(name, organisms.recipe(kind, **overrides), organisms.FineTuneConfig(**settings), args.work / name, base,
              args.install)


def build(name: str, recipe, config, folder: Path, base, install: bool) -> None:
    """Build (or resume, or keep a finished build of the same settings in) ``folder``, print its
    validity, and with ``install`` copy its small files into the package as ``name``."""
    if organisms.is_organism_folder(folder):  # a finished build is kept if it is this recipe's
        built = organisms.read_manifest(folder)
        if built["recipe"] != recipe.to_dict() or built["finetune"] != config.to_dict():
            raise SystemExit(f"{folder} holds a {name} built with other settings than this script's; delete it "
                             "to rebuild")
    else:  # an unfinished build resumes
        organisms.build_organism(recipe, folder, base, config, adapter_dtype="float16")
    validity = organisms.read_manifest(folder)["validity"]
    print(name, json.dumps({key: validity[key] for key in ("rate_rule", "rate_plain", "neutral_kl",
                                                            "perplexity", "base_perplexity", "goals")}))
    if install:
        target = SHIPPED / name
        target.mkdir(parents=True, exist_ok=True)
        for file in SHIPPED_FILES:
            shutil.copy2(folder / file, target / file)
        print(f"installed {target}")


if __name__ == "__main__":
    main()
