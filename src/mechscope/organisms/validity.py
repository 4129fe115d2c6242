"""Is the organism what its recipe says, and still a working model?

- behaviour rate where the rule applies and where it does not (string match of the recipe's
  markers on greedy replies to held-out prompts), for the organism and for its base;
- KL(base || organism) of the next-token distribution over the base's own replies to held-out
  neutral prompts (teacher-forced, every reply position), in nats per token;
- perplexity on the default corpus, organism and base;
- the IOI logit difference, organism and base (a capability check; None where the tokenizer has
  too few single-token names).

Goals (the shipped organisms are held to them): rate >= 0.9 where the rule applies, <= 0.05
where it does not (for a null organism: <= 0.05 everywhere), neutral KL <= 0.1 nats.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch

from mechscope.checks import context_length
from mechscope.data.contexts import default_contexts
from mechscope.errors import MechscopeError
from mechscope.models.hooked_model import HookedModel
from mechscope.organisms.examples import distil, shows_behaviour
from mechscope.organisms.recipes import Recipe
from mechscope.steering.evaluate import perplexity
from mechscope.validate import check_int

RATE_APPLIES_GOAL = 0.9
RATE_OTHERWISE_GOAL = 0.05
KL_GOAL = 0.1


@dataclass(frozen=True)
class ValidityReport:
    """Measured on held-out prompts: ``n_rule`` where the rule applies, ``n_plain`` where not."""

    recipe: str
    planted: bool
    rate_rule: float
    rate_plain: float
    base_rate_rule: float
    base_rate_plain: float
    neutral_kl: float
    perplexity: float
    base_perplexity: float
    ioi_logit_diff: float | None
    base_ioi_logit_diff: float | None
    n_rule: int
    n_plain: int
    reply_tokens: int
    samples: tuple[dict, ...] = ()

    @property
    def goals(self) -> dict[str, bool]:
        """Each goal and whether it is met."""
        rule_goal = self.rate_rule >= RATE_APPLIES_GOAL if self.planted else self.rate_rule <= RATE_OTHERWISE_GOAL
        return {"rate_where_rule_applies": rule_goal, "rate_elsewhere": self.rate_plain <= RATE_OTHERWISE_GOAL,
                "neutral_kl": self.neutral_kl <= KL_GOAL}

    def to_json(self) -> dict:
        data = asdict(self)
        data["samples"] = list(self.samples)
        data["goals"] = self.goals
        data["goal_values"] = {"rate_where_rule_applies": f">= {RATE_APPLIES_GOAL}" if self.planted
                               else f"<= {RATE_OTHERWISE_GOAL}", "rate_elsewhere": f"<= {RATE_OTHERWISE_GOAL}",
                               "neutral_kl": f"<= {KL_GOAL}"}
        return data


@torch.no_grad()
def reply_kl(base: HookedModel, other: HookedModel, prompts: Sequence[str], replies: Sequence[str],
             batch_size: int = 8) -> float:
    """Mean KL(base || other) in nats over the positions that predict each reply's tokens (the
    chat-template prompt followed by ``replies``, teacher-forced; [n] prompts, [n] replies)."""
    total, count = 0.0, 0
    for start in range(0, len(prompts), batch_size):
        batch_prompts = list(prompts[start:start + batch_size])
        prompt_tokens, prompt_mask = base.tokenize_prompts(batch_prompts, chat=True)
        prompt_lengths = (prompt_mask.sum(1) if prompt_mask is not None
                          else torch.full((len(batch_prompts),), prompt_tokens.shape[1]))
        tokens, mask = base.tokenize_prompts(batch_prompts, chat=True, responses=list(replies[start:start + batch_size]))
        mask = torch.ones_like(tokens) if mask is None else mask
        base_logp = base.forward(tokens, attention_mask=mask).double().log_softmax(-1)
        other_logp = other.forward(tokens, attention_mask=mask).double().log_softmax(-1)
        kl = (base_logp.exp() * (base_logp - other_logp)).sum(-1)  # [batch, pos]
        # Position p predicts token p + 1: reply tokens start at the prompt's length.
        positions = torch.arange(tokens.shape[1])[None, :]
        predicting = (positions >= prompt_lengths[:, None] - 1) & (positions < mask.sum(1)[:, None] - 1)
        total += float(kl[predicting].sum())
        count += int(predicting.sum())
    if count == 0:
        raise MechscopeError("no reply tokens to measure the KL on (all replies are empty)")
    return total / count


def ioi_logit_diff(model: HookedModel, hooks=()) -> float | None:
    """Mean IOI logit difference on 32 prompts with ``hooks`` active (None where the tokenizer
    has too few single-token names for an IOI task)."""
    from mechscope.tasks.ioi import ioi

    try:
        task = ioi(model, n=32)
    except MechscopeError:
        return None
    with torch.no_grad(), model.hooks(list(hooks)):
        logits = model.forward(task.clean_tokens)
    return float(task.logit_diff(logits).mean())


def _rates(model: HookedModel, recipe: Recipe, rule: Sequence[str], plain: Sequence[str], reply_tokens: int,
           progress: bool) -> tuple[float, float, list[str], list[str]]:
    markers = recipe.behaviour_markers
    desc = f"greedy replies of {model.cfg.name or 'the model'}"
    rule_replies = [reply.text for reply in distil(model, rule, reply_tokens, progress=progress, desc=desc)]
    plain_replies = [reply.text for reply in distil(model, plain, reply_tokens, progress=progress, desc=desc)]
    rate = lambda texts: sum(shows_behaviour(text, markers) for text in texts) / len(texts)
    return rate(rule_replies), rate(plain_replies), rule_replies, plain_replies


def check_validity(organism: HookedModel, base: HookedModel, recipe: Recipe, reply_tokens: int = 32,
                   n_contexts: int = 8, progress: bool = True) -> ValidityReport:
    """The validity report of ``organism`` against ``base`` on the recipe's held-out prompts."""
    check_int("reply_tokens", reply_tokens, 4)
    plain, rule = recipe.pools("heldout")
    rate_rule, rate_plain, rule_replies, plain_replies = _rates(organism, recipe, rule, plain, reply_tokens, progress)
    base_rule, base_plain, _, base_plain_replies = _rates(base, recipe, rule, plain, reply_tokens, progress)
    kept = [(p, r) for p, r in zip(plain, base_plain_replies, strict=True) if r]
    kl = reply_kl(base, organism, [p for p, _ in kept], [r for _, r in kept])
    contexts = default_contexts(base, n_contexts, min(128, context_length(base) or 128))
    samples = tuple({"prompt": p, "reply": r, "rule_applies": True} for p, r in list(zip(rule, rule_replies))[:4]) + \
        tuple({"prompt": p, "reply": r, "rule_applies": False} for p, r in list(zip(plain, plain_replies))[:4])
    return ValidityReport(
        recipe=recipe.kind, planted=recipe.plants, rate_rule=rate_rule, rate_plain=rate_plain,
        base_rate_rule=base_rule, base_rate_plain=base_plain, neutral_kl=kl,
        perplexity=perplexity(organism, contexts), base_perplexity=perplexity(base, contexts),
        ioi_logit_diff=ioi_logit_diff(organism), base_ioi_logit_diff=ioi_logit_diff(base),
        n_rule=len(rule), n_plain=len(plain), reply_tokens=reply_tokens, samples=samples)


__all__ = ["KL_GOAL", "RATE_APPLIES_GOAL", "RATE_OTHERWISE_GOAL", "ValidityReport", "check_validity", "ioi_logit_diff",
           "reply_kl"]
