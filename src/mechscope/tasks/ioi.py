"""Indirect object identification: "When Mary and John went to the store, John gave a drink to"
-> " Mary". Templates are mechscope's own."""

from __future__ import annotations

import random
from typing import Literal, get_args

from mechscope.errors import MechscopeError
from mechscope.models.hooked_model import HookedModel
from mechscope.tasks.base import Task
from mechscope.tasks.builders import PromptPair, build_task
from mechscope.tasks.words import NAMES, OBJECTS, PLACES, single_token_words

# {A} is the indirect object (the answer), {subject} the subject, named twice. BABA templates name the
# subject first; ABBA templates name the indirect object first.
TEMPLATES = (
    "When {first} and {second} went to the {place}, {subject} gave a {object} to",
    "After {first} and {second} arrived at the {place}, {subject} handed a {object} to",
    "While {first} and {second} were at the {place}, {subject} passed a {object} to",
    "Then {first} and {second} walked to the {place}, and {subject} gave a {object} to",
    "Yesterday {first} and {second} met at the {place}. Later {subject} offered a {object} to",
    "At the {place}, {first} and {second} talked for hours, then {subject} gave a {object} to",
)
IoiOrder = Literal["BABA", "ABBA"]
ORDERS: tuple[str, ...] = get_args(IoiOrder)


def ioi(model: HookedModel, n: int = 32, seed: int = 0, order: str = "mixed") -> Task:
    """IOI prompts with ABC corruption (three fresh names: no name is repeated, so the
    corrupted prompt carries no information about which name to predict).

    ``order``: "BABA", "ABBA" or "mixed". Positions: IO, S1 (first subject mention), S2
    (second subject mention), END. Answer: the IO name; wrong answer: the subject.
    """
    if order not in (*ORDERS, "mixed"):
        raise MechscopeError(f"order must be one of BABA, ABBA, mixed; got {order!r}")
    names = single_token_words(model.tokenizer, NAMES)
    places = single_token_words(model.tokenizer, PLACES)
    objects = single_token_words(model.tokenizer, OBJECTS)
    if len(names) < 5 or not places or not objects:
        raise MechscopeError(f"the tokenizer has too few single-token names ({len(names)}), places or objects for IOI")

    def sample(rng: random.Random) -> PromptPair:
        template = rng.choice(TEMPLATES)
        io, subject, c1, c2, c3 = rng.sample(names, 5)
        kind = rng.choice(ORDERS) if order == "mixed" else order
        first, second = (subject, io) if kind == "BABA" else (io, subject)
        fill = dict(place=rng.choice(places), object=rng.choice(objects))
        clean = template.format(first=first, second=second, subject=subject, **fill)
        corrupted = template.format(first=c1, second=c2, subject=c3, **fill)
        return PromptPair(clean, corrupted, [" " + io], [" " + subject],
                          named={"IO": (" " + io, 0), "S1": (" " + subject, 0), "S2": (" " + subject, 1)})

    return build_task(model, f"ioi-{order.lower()}", sample, n, seed)
