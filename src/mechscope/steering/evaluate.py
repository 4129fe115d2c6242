"""What an intervention does: a behaviour score (logit- or probe-based, no external judge) against
its side effects (KL on neutral prompts, perplexity on ordinary text)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F

from mechscope.analysis.activations import prompt_activations
from mechscope.data.contexts import default_contexts  # kept importable from here
from mechscope.errors import MechscopeError
from mechscope.models.hooked_model import HookedModel, HookSpec
from mechscope.validate import check_int

__all__ = ["Behaviour", "LogitBehaviour", "ProbeBehaviour", "default_contexts", "kl_divergence", "last_token_logits",
           "next_token_kl", "perplexity", "token_log_odds"]


def _checked_tokens(model: HookedModel, tokens: Sequence[int], what: str) -> torch.Tensor:
    ids = torch.as_tensor(list(tokens), dtype=torch.long)
    if ids.numel() == 0:
        raise MechscopeError(f"{what} is empty; give at least one token id")
    if ids.min() < 0 or ids.max() >= model.cfg.d_vocab:
        raise MechscopeError(f"{what} has ids outside [0, {model.cfg.d_vocab})")
    return ids.to(model.device)


@torch.no_grad()
def last_token_logits(model: HookedModel, prompts: Sequence[str], hooks: HookSpec = (), chat: bool | None = None,
                      batch_size: int = 16) -> torch.Tensor:
    """Next-token logits [n_prompts, d_vocab] (float32) after each prompt's last token (with
    ``chat``, the first token of the reply), with ``hooks`` active."""
    if not prompts:
        raise MechscopeError("no prompts given")
    rows = []
    check_int("batch_size", batch_size, minimum=1)
    for start in range(0, len(prompts), batch_size):
        tokens, mask = model.tokenize_prompts(list(prompts[start:start + batch_size]), chat)
        logits = model.run_with_hooks(tokens, fwd_hooks=hooks, attention_mask=mask)
        last = (mask.sum(1) - 1) if mask is not None else torch.full((len(tokens),), tokens.shape[1] - 1)
        rows.append(logits[torch.arange(len(tokens)), last.to(logits.device)].float())
    return torch.cat(rows)


def token_log_odds(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log(p / (1 - p)) [n] where p is the probability mass of ``tokens`` under logits [n, d_vocab]."""
    log_probs = logits.float().log_softmax(-1)
    inside = log_probs[:, tokens].logsumexp(-1)
    outside = torch.log1p(-inside.exp().clamp(max=1 - 1e-7))
    return inside - outside


class Behaviour(Protocol):
    """Anything with ``score(model, hooks) -> float``: higher means more of the behaviour."""

    def score(self, model: HookedModel, hooks: HookSpec = ()) -> float: ...


@dataclass
class LogitBehaviour:
    """Mean over ``prompts`` of the log-odds of the next token being one of ``tokens`` (e.g. the
    first tokens of refusals), or, with ``versus``, of log p(tokens) - log p(versus)."""

    prompts: Sequence[str]
    tokens: Sequence[int]
    versus: Sequence[int] | None = None
    chat: bool | None = None

    def per_prompt(self, model: HookedModel, hooks: HookSpec = ()) -> torch.Tensor:
        logits = last_token_logits(model, self.prompts, hooks, self.chat)
        tokens = _checked_tokens(model, self.tokens, "tokens")
        if self.versus is None:
            return token_log_odds(logits, tokens)
        log_probs = logits.log_softmax(-1)
        versus = _checked_tokens(model, self.versus, "versus")
        return log_probs[:, tokens].logsumexp(-1) - log_probs[:, versus].logsumexp(-1)

    def score(self, model: HookedModel, hooks: HookSpec = ()) -> float:
        return float(self.per_prompt(model, hooks).mean())


@dataclass
class ProbeBehaviour:
    """Mean probe score of the activation at ``hook_name`` (read after any intervention there),
    at each prompt's token ``position``. ``probe`` is anything with ``score(x [n, d]) -> [n]``."""

    prompts: Sequence[str]
    probe: object
    hook_name: str
    position: int = -1
    chat: bool | None = None

    def score(self, model: HookedModel, hooks: HookSpec = ()) -> float:
        activations = prompt_activations(model, self.prompts, self.hook_name, self.position, self.chat,
                                         fwd_hooks=hooks, device=model.device, progress=False)
        return float(self.probe.score(activations[self.hook_name][:, 0]).mean())


def kl_divergence(base: torch.Tensor, other: torch.Tensor) -> float:
    """Mean KL(base || other) in nats between next-token distributions given as logits [n, d_vocab]."""
    return float(F.kl_div(other.float().log_softmax(-1), base.float().log_softmax(-1), log_target=True,
                          reduction="batchmean"))


@torch.no_grad()
def next_token_kl(model: HookedModel, prompts: Sequence[str], hooks: HookSpec, chat: bool | None = None,
                  reference: torch.Tensor | None = None) -> float:
    """Mean KL(unsteered || steered) of the next-token distribution after each prompt, in nats.
    ``reference`` (logits [n, d_vocab] of the unsteered model) saves recomputing it in sweeps."""
    base = last_token_logits(model, prompts, (), chat) if reference is None else reference
    steered = last_token_logits(model, prompts, hooks, chat)
    return kl_divergence(base, steered)


@torch.no_grad()
def perplexity(model: HookedModel, contexts: torch.Tensor, hooks: HookSpec = (), batch_size: int = 8) -> float:
    """exp(mean next-token NLL) over token contexts [n, pos] with ``hooks`` active."""
    if contexts.dim() != 2 or contexts.shape[1] < 2:
        raise MechscopeError(f"contexts must be token ids [n, pos >= 2], got shape {tuple(contexts.shape)}")
    total, count = 0.0, 0
    check_int("batch_size", batch_size, minimum=1)
    for start in range(0, len(contexts), batch_size):
        batch = contexts[start:start + batch_size].to(model.device)
        logits = model.run_with_hooks(batch, fwd_hooks=hooks).float()
        nll = F.cross_entropy(logits[:, :-1].flatten(0, 1), batch[:, 1:].flatten(), reduction="sum")
        total, count = total + float(nll), count + batch[:, 1:].numel()
    return math.exp(total / count)


