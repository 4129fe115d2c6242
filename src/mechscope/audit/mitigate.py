"""Mitigation and verification: remove a found behaviour along its direction, and measure what
it cost.

Four edits of the fine-tune. Three act along the behaviour direction of :mod:`localise`:
"ablation" projects it out of the residual stream at every layer at run time,
"orthogonalise" bakes that into the weights (the same function, as a plain model that can be
saved), and "steering" subtracts the direction at its layer. The fourth, "capping", holds each
layer's own behaviour directions (localisation's per-layer means at the reply's start and over
the trigger's tokens) within the range they take on neutral prompts
(:mod:`mechscope.steering.capping`; :func:`choose_caps` picks how tight): ablation removes what
ordinary text also does with a direction, capping only the excursion past it. For each: the behaviour rate on
triggered prompts before and after, next-token KL to the unedited fine-tune on neutral chat
prompts, perplexity on the default corpus and the IOI logit difference before and after.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from mechscope.data.contexts import default_contexts
from mechscope.errors import MechscopeError
from mechscope.models.hooked_model import HookedModel
from mechscope.organisms.validity import ioi_logit_diff
from mechscope.steering.apply import DirectionalAblation, Steering, generate
from mechscope.steering.capping import ActivationCap, fit_cap_ladder
from mechscope.steering.direction import Direction
from mechscope.steering.evaluate import last_token_logits, next_token_kl, perplexity
from mechscope.steering.orthogonalise import orthogonalise, save_orthogonalised
from mechscope.validate import check_choice, check_int, check_number

Method = Literal["ablation", "orthogonalise", "steering", "capping"]
METHODS: tuple[Method, ...] = ("ablation", "orthogonalise", "steering", "capping")


@dataclass(frozen=True)
class Mitigation:
    """One edit's before / after numbers. ``reduction``: 1 - rate_after / rate_before (None
    when the behaviour never fired before)."""

    method: Method
    rate_before: float
    rate_after: float
    neutral_kl: float
    perplexity_before: float
    perplexity_after: float
    ioi_before: float | None
    ioi_after: float | None
    sample: str

    @property
    def reduction(self) -> float | None:
        return None if self.rate_before == 0 else 1 - self.rate_after / self.rate_before

    def to_json(self) -> dict:
        return {**vars(self), "reduction": self.reduction}


def edit_intervention(direction: Direction | None, method: Method, caps: ActivationCap | None = None
                      ) -> DirectionalAblation | Steering | ActivationCap:
    """The run-time intervention of ``method`` (for "orthogonalise", the ablation it bakes into
    the weights: the same function), to run with hooks or :func:`generate`."""
    check_choice("method", method, METHODS)
    if method == "capping":
        if caps is None:
            raise MechscopeError("the 'capping' mitigation needs caps (steering.fit_caps on the per-layer behaviour "
                                 "directions); pass caps= or leave 'capping' out of methods")
        return caps
    if direction is None:
        raise MechscopeError(f"the {method!r} mitigation needs a behaviour direction")
    if method == "steering":
        return Steering(direction, -direction.scale, layers=direction.layer)
    return DirectionalAblation(direction)


def choose_caps(model: HookedModel, directions: Mapping[int, torch.Tensor], prompts: Sequence[str],
                quantiles: Sequence[float], kl_budget: float) -> tuple[ActivationCap, float, float]:
    """(caps, quantile, KL): :func:`~mechscope.steering.fit_caps` of ``directions`` on the
    untriggered chat ``prompts`` at the first of ``quantiles`` (most clamping first) whose
    next-token KL on those prompts is at most ``kl_budget``, or at the last where none is."""
    check_number("kl_budget", kl_budget, 0, strict_minimum=True)
    ladder = fit_cap_ladder(model, directions, prompts, quantiles, chat=True)
    reference = last_token_logits(model, list(prompts), (), chat=True)
    for quantile, caps in zip(quantiles, ladder):
        kl = next_token_kl(model, list(prompts), caps.hooks(model), chat=True, reference=reference)
        if kl <= kl_budget:
            break
    return caps, quantile, kl


def _edited(model: HookedModel, direction: Direction | None, method: Method, caps: ActivationCap | None):
    """(model to run, hooks to run it with, generation interventions) for ``method``."""
    if method == "orthogonalise":
        return orthogonalise(model, direction), (), None
    intervention = edit_intervention(direction, method, caps)
    return model, intervention.hooks(model), intervention


def mitigate(model: HookedModel, direction: Direction | None, triggered: Sequence[str], shows: Callable[[str], bool],
             neutral: Sequence[str], methods: Sequence[Method] = METHODS, reply_tokens: int = 24,
             n_contexts: int = 8, caps: ActivationCap | None = None) -> list[Mitigation]:
    """Each of ``methods`` applied and measured (see the module docstring): ``triggered``
    prompts (where the behaviour, judged by ``shows(reply)``, should fire), ``neutral`` chat
    prompts for KL; ``caps`` (fitted on neutral prompts other than these) for "capping", the
    one edit that needs no ``direction``."""
    check_int("reply_tokens", reply_tokens, 1)
    for method in methods:
        edit_intervention(direction, method, caps)  # each edit's inputs checked before any generation
    if not triggered or not neutral:
        raise MechscopeError("mitigation needs triggered prompts and neutral prompts to measure on")
    before = generate(model, list(triggered), max_new_tokens=reply_tokens, progress=False)
    rate_before = sum(map(shows, before)) / len(before)
    contexts = default_contexts(model, n_contexts, 64)
    ppl_before, ioi_before = perplexity(model, contexts), ioi_logit_diff(model)
    results = []
    for method in methods:
        edited, hooks, intervention = _edited(model, direction, method, caps)
        after = generate(edited, list(triggered), intervention, max_new_tokens=reply_tokens, progress=False)
        kl = next_token_kl(model, list(neutral), hooks, chat=True) if method != "orthogonalise" else \
            _model_kl(model, edited, neutral)
        results.append(Mitigation(method, rate_before, sum(map(shows, after)) / len(after), kl, ppl_before,
                                  perplexity(edited, contexts, hooks), ioi_before, ioi_logit_diff(edited, hooks),
                                  after[0]))
    return results


@torch.no_grad()
def _model_kl(model: HookedModel, edited: HookedModel, prompts: Sequence[str]) -> float:
    """Mean KL(P_model || P_edited) of the next token after each chat prompt."""
    from mechscope.steering.evaluate import kl_divergence, last_token_logits

    return kl_divergence(last_token_logits(model, list(prompts), (), chat=True),
                         last_token_logits(edited, list(prompts), (), chat=True))


def save_mitigated(model: HookedModel, direction: Direction, folder: str | Path) -> Path:
    """The fine-tune with ``direction`` orthogonalised out of its weights, as a HF folder."""
    return save_orthogonalised(model, direction, folder)


__all__ = ["METHODS", "Method", "Mitigation", "choose_caps", "edit_intervention", "mitigate", "save_mitigated"]
