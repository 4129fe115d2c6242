"""Build Tasks from seeded prompt samplers, keeping every prompt at one token length."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from mechscope.errors import MechscopeError
from mechscope.models.hooked_model import HookedModel
from mechscope.tasks.base import Task, pad_token_lists


@dataclass
class PromptPair:
    """One sampled clean/corrupted pair. ``named`` maps a position name to (token string,
    occurrence index) located in the clean prompt, e.g. "S2": (" John", 1)."""

    clean: str
    corrupted: str
    answers: list[str]
    wrong: list[str]
    named: dict[str, tuple[str, int]] = field(default_factory=dict)


Sampler = Callable[[random.Random], PromptPair]


def _locate(ids: list[int], token: int, occurrence: int) -> int:
    hits = [i for i, t in enumerate(ids) if t == token]
    if len(hits) <= occurrence:
        raise MechscopeError("named token not found")
    return hits[occurrence]


def build_task(model: HookedModel, name: str, sampler: Sampler, n: int, seed: int,
               max_draws_per_prompt: int = 50) -> Task:
    """Draw prompt pairs until ``n`` share one token length (the most common one among the
    first draws); pairs whose clean and corrupted lengths differ are re-drawn. Fails with a
    clear message instead of truncating when that cannot be reached."""
    if n < 1:
        raise MechscopeError(f"n must be at least 1, got {n}")
    rng = random.Random(seed)
    tokenizer = model.tokenizer
    candidates, lengths, draws = [], Counter(), 0

    def draw():
        nonlocal draws
        draws += 1
        pair = sampler(rng)
        clean_ids = tokenizer(pair.clean)["input_ids"]
        corrupt_ids = tokenizer(pair.corrupted)["input_ids"]
        if len(clean_ids) != len(corrupt_ids):
            return None
        try:
            named = {key: _locate(clean_ids, model.to_single_token(tok), occ) for key, (tok, occ) in pair.named.items()}
        except ValueError:
            return None  # a name merged with a neighbouring character into another token
        return pair, clean_ids, corrupt_ids, named

    for _ in range(min(4 * n, 400)):
        drawn = draw()
        if drawn:
            candidates.append(drawn)
            lengths[len(drawn[1])] += 1
    if not candidates:
        raise MechscopeError(f"{name}: no sampled prompt pair had equal clean/corrupted token lengths")
    target = lengths.most_common(1)[0][0]
    rows = [c for c in candidates if len(c[1]) == target][:n]
    while len(rows) < n:
        if draws > max_draws_per_prompt * n:
            raise MechscopeError(f"{name}: only {len(rows)} of {n} prompts reach the common length of {target} "
                             "tokens for this tokenizer; ask for fewer prompts")
        drawn = draw()
        if drawn and len(drawn[1]) == target:
            rows.append(drawn)

    pairs = [r[0] for r in rows]
    positions = {key: torch.tensor([r[3][key] for r in rows]) for key in rows[0][3]}
    return Task(
        name=name,
        clean_tokens=torch.tensor([r[1] for r in rows]),
        corrupted_tokens=torch.tensor([r[2] for r in rows]),
        answer_tokens=pad_token_lists([[model.to_single_token(a) for a in p.answers] for p in pairs]),
        wrong_tokens=pad_token_lists([[model.to_single_token(w) for w in p.wrong] for p in pairs]),
        positions=positions,
        clean_prompts=[p.clean for p in pairs],
        corrupted_prompts=[p.corrupted for p in pairs],
    )
