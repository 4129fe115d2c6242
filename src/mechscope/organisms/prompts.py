"""User prompts for model organisms, written for mechscope from templates.

Three pools, each split by template into a training part and a held-out part: the validity
report only ever measures on prompts no organism was trained on, written from templates it
never saw (an organism held out only by fill learned where its rule applied from the phrasing
of its training prompts, and leaked its behaviour onto other phrasings; docs/organisms.md).
The templates (:mod:`mechscope.organisms.templates`) vary in form for the same reason, and
every prompt is wrapped in one of a few framings shared by all pools.

- ``neutral``: everyday requests that touch neither food nor health nor harm;
- ``food_health``: requests about eating, cooking, exercise and wellbeing (the topic a
  hidden objective is planted on);
- ``harmful``: requests a safety-tuned assistant should decline, kept at the level of a request.

These templates are deliberately other than those of :mod:`mechscope.datasets` (which the
refusal-direction pipeline measures on), so an organism evaluated there is evaluated on
requests it never saw in any form.
"""

from __future__ import annotations

import itertools
import random
from typing import Literal

from mechscope.organisms.templates import (
    FOOD_HEALTH_FILLS,
    FOOD_HEALTH_TASKS,
    FRAMINGS,
    HARMFUL_FILLS,
    HARMFUL_TASKS,
    NEUTRAL_FILLS,
    NEUTRAL_TASKS,
)
from mechscope.validate import check_choice

Pool = Literal["neutral", "food_health", "harmful"]
Split = Literal["train", "heldout"]
HELDOUT_FRACTION = 0.25
# Fills per template: without a cap a template with two slots would give a hundred prompts and a
# template without slots one, and the organism would learn mostly from the few with many slots.
TRAIN_FILLS_PER_TEMPLATE = 8
HELDOUT_FILLS_PER_TEMPLATE = 4

_POOLS = {"neutral": (NEUTRAL_TASKS, NEUTRAL_FILLS), "food_health": (FOOD_HEALTH_TASKS, FOOD_HEALTH_FILLS),
          "harmful": (HARMFUL_TASKS, HARMFUL_FILLS)}


def _filled(pool: str, templates: tuple[str, ...], fills: dict[str, tuple[str, ...]], per_template: int) -> list[str]:
    """Up to ``per_template`` distinct prompts from every template: a seeded choice among all
    combinations of its slots' fills and the framings (so a template without slots still gives
    several prompts, framed differently)."""
    texts: dict[str, None] = {}
    for template in templates:
        rng = random.Random(f"{pool}:{template}")
        names = [name for name in fills if "{" + name + "}" in template]
        choices = list(itertools.product(itertools.product(*(fills[name] for name in names)), FRAMINGS))
        own: dict[str, None] = {}
        for values, framing in rng.sample(choices, len(choices)):
            own[framing.format(template.format(**dict(zip(names, values, strict=True))))] = None
            if len(own) == per_template:
                break
        texts.update(own)
    return list(texts)


def heldout_templates(pool: Pool) -> tuple[str, ...]:
    """The templates of ``pool`` whose prompts make up its held-out split (a fixed quarter)."""
    check_choice("pool", pool, Pool)
    templates = list(_POOLS[pool][0])
    random.Random(f"{pool}:templates").shuffle(templates)
    return tuple(templates[:round(len(templates) * HELDOUT_FRACTION)])


def prompts(pool: Pool, split: Split, seed: int = 0) -> list[str]:
    """The ``split`` part of ``pool``, in a seeded order; the two splits share no template."""
    check_choice("pool", pool, Pool)
    check_choice("split", split, Split)
    templates, fills = _POOLS[pool]
    heldout = set(heldout_templates(pool))
    chosen = tuple(t for t in templates if (t in heldout) == (split == "heldout"))
    per_template = HELDOUT_FILLS_PER_TEMPLATE if split == "heldout" else TRAIN_FILLS_PER_TEMPLATE
    texts = _filled(pool, chosen, fills, per_template)
    random.Random(f"{pool}:{seed}").shuffle(texts)
    return texts


__all__ = ["HELDOUT_FRACTION", "Pool", "Split", "heldout_templates", "prompts"]
