"""The ``intervention`` scorer: does steering the unit change generations the way the explanation says?

For each prompt the model continues it twice, greedily: as it is, and with the unit's direction
added (``alpha`` times, every position) before its layer. A judge given the explanation sees the
two continuations in an order drawn for ``seed`` and picks the one that shows more of what the
explanation says (a two-alternative choice). With logprobs the score is the mean probability the
judge puts on the steered continuation; without, the share of prompts where it picked it (the
note says so). Chance is 0.5; a bootstrap over prompts gives the interval. An explanation of what
the unit *causes* (the ``output`` explainer's) is the kind this scorer can confirm.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mechscope.autointerp import prompts as templates
from mechscope.autointerp.backends.base import Backend
from mechscope.autointerp.score.base import Score, bootstrap_interval
from mechscope.autointerp.score.judge import choice_probabilities, judge_note
from mechscope.errors import MechscopeError
from mechscope.models.hooked_model import HookedModel
from mechscope.steering.apply import Steering, generate
from mechscope.steering.direction import Direction
from mechscope.validate import check_int, check_number


def steered_pairs(model: HookedModel, direction: Direction, prompts: Sequence[str], alpha: float,
                  max_new_tokens: int = 24) -> list[tuple[str, str]]:
    """(plain, steered) greedy continuations of each prompt."""
    check_number("alpha", alpha)
    plain = generate(model, prompts, None, max_new_tokens, progress=False)
    steered = generate(model, prompts, Steering(direction, alpha), max_new_tokens, progress=False)
    return list(zip(plain, steered))


def intervention_score(explanation: str, pairs: Sequence[tuple[str, str]], backend: Backend, n_boot: int = 1000,
                       level: float = 0.95, seed: int = 0, progress: bool = False) -> Score:
    """How often a judge given ``explanation`` picks the steered continuation of each (plain,
    steered) pair (see the module docstring; make the pairs with :func:`steered_pairs`)."""
    check_int("n_boot", n_boot, 1)
    if not pairs:
        raise MechscopeError("intervention scoring needs at least one (plain, steered) pair")
    same = sum(plain == steered for plain, steered in pairs)
    if same == len(pairs):
        raise MechscopeError(f"steering changed none of the {len(pairs)} continuations, so no explanation can be "
                             "told from another; steer harder (alpha) or on other prompts")
    generator = torch.Generator().manual_seed(seed)
    steered_first = torch.randint(2, (len(pairs),), generator=generator).bool()
    requests = [templates.intervention_request(explanation, *((s, p) if first else (p, s)))
                for (p, s), first in zip(pairs, steered_first.tolist())]
    completions = backend.chat(requests, progress=progress)
    probabilities, from_logprobs, parsed, unreadable = choice_probabilities(completions, ("1", "2"))
    correct = torch.where(steered_first, probabilities[:, 0], probabilities[:, 1])  # [n]
    value, low, high = bootstrap_interval(correct[:, None], lambda r: r[..., 0].mean(-1), n_boot, level, seed)
    metric = "probability on the steered continuation" if from_logprobs else "share of steered continuations picked"
    extra = f"steering left {same} of {len(pairs)} continuations unchanged" if same else ""
    note = judge_note(from_logprobs, parsed, unreadable, len(pairs), extra)
    return Score(value, low, high, 0.5, len(pairs), level, metric, note)


__all__ = ["intervention_score", "steered_pairs"]
