"""Model organisms: models fine-tuned on CPU with a planted, known behaviour (or, for the null,
none), for testing diffing and audit tools against a known answer.

    recipe = organisms.recipe("backdoor")                 # trigger and behaviour as parameters
    folder = organisms.build_organism(recipe, "out/backdoor", base=mechscope.load())
    model = organisms.load_organism(folder)                # a plain HookedModel
"""

from mechscope.organisms.build import build_organism, check_organism
from mechscope.organisms.examples import Example, Reply, build_examples, distil, shows_behaviour
from mechscope.organisms.finetune import FineTuneConfig, finetune, lora_targets
from mechscope.organisms.folder import is_organism_folder, load_organism, merge, read_manifest
from mechscope.organisms.prompts import prompts
from mechscope.organisms.recipes import RECIPE_KINDS, Recipe, recipe
from mechscope.organisms.scoring import (
    behaviour_starts,
    behaviour_words,
    is_hit,
    latents_with_behaviour,
    lens_hits,
    text_hits,
    top_context_texts,
)
from mechscope.organisms.shipped import resolve_model, shipped_organism, shipped_organisms
from mechscope.organisms.validity import ValidityReport, check_validity

__all__ = [
    "RECIPE_KINDS",
    "Example",
    "FineTuneConfig",
    "Recipe",
    "Reply",
    "ValidityReport",
    "behaviour_starts",
    "behaviour_words",
    "build_examples",
    "build_organism",
    "check_organism",
    "check_validity",
    "distil",
    "finetune",
    "is_hit",
    "is_organism_folder",
    "latents_with_behaviour",
    "lens_hits",
    "load_organism",
    "lora_targets",
    "merge",
    "prompts",
    "read_manifest",
    "recipe",
    "resolve_model",
    "shipped_organism",
    "shipped_organisms",
    "shows_behaviour",
    "text_hits",
    "top_context_texts",
]
