"""Factual recall: "The capital of France is" -> " Paris", corrupted by swapping the subject."""

from __future__ import annotations

import random

import torch

from mechscope.errors import MechscopeError
from mechscope.models.hooked_model import HookedModel
from mechscope.tasks.base import Task
from mechscope.tasks.words import CAPITALS
from mechscope.validate import check_int

TEMPLATE = "The capital of {country} is"


@torch.no_grad()
def known_capitals(model: HookedModel) -> list[tuple[str, str]]:
    """The (country, capital) pairs of mechscope's list that the model completes correctly
    (the capital's first token is its top prediction), with single-token country names."""
    usable = []
    for country, capital in CAPITALS:
        if len(model.tokenizer(" " + country, add_special_tokens=False)["input_ids"]) != 1:
            continue
        capital_ids = model.tokenizer(" " + capital, add_special_tokens=False)["input_ids"]
        logits = model(TEMPLATE.format(country=country))
        if int(logits[0, -1].argmax()) == capital_ids[0]:
            usable.append((country, capital))
    return usable


def factual_recall(model: HookedModel, n: int | None = None, seed: int = 0) -> Task:
    """Country -> capital prompts the model gets right; each corrupted prompt names another
    known country. Answer: the capital's first token; wrong: the other country's capital's.
    Positions: SUBJECT (the country token), END."""
    if n is not None:
        check_int("n", n, minimum=1)
    known = known_capitals(model)
    if len(known) < 2:
        raise MechscopeError(f"the model completes only {len(known)} of mechscope's {len(CAPITALS)} capitals "
                         "correctly; factual recall needs at least 2")
    rng = random.Random(seed)
    count = len(known) if n is None else n
    first_token = lambda word: model.tokenizer(" " + word, add_special_tokens=False)["input_ids"][0]  # noqa: E731
    clean_ids, corrupt_ids, answers, wrong, subjects, clean_text, corrupt_text = [], [], [], [], [], [], []
    for index in range(count):
        country, capital = known[index % len(known)]
        other_country, other_capital = rng.choice([pair for pair in known if pair[0] != country])
        clean = TEMPLATE.format(country=country)
        corrupted = TEMPLATE.format(country=other_country)
        a, b = model.tokenizer(clean)["input_ids"], model.tokenizer(corrupted)["input_ids"]
        country_token = first_token(country)
        clean_ids.append(a)
        corrupt_ids.append(b)
        answers.append([first_token(capital)])
        wrong.append([first_token(other_capital)])
        subjects.append(a.index(country_token))
        clean_text.append(clean)
        corrupt_text.append(corrupted)
    return Task("factual-recall", torch.tensor(clean_ids), torch.tensor(corrupt_ids), torch.tensor(answers),
                torch.tensor(wrong), {"SUBJECT": torch.tensor(subjects)}, clean_text, corrupt_text)
