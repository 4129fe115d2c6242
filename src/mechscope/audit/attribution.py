"""Attribution of a behaviour to the words of prompts where it already occurs: gradient x input
and single-token ablation of each user-message token on log P(the reply opens with the
behaviour). Where the behaviour answers a topic rather than a trigger string, these name the
topic's words; the strongest are tried as triggers too."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from mechscope.audit.trigger_objective import ChatSlots, target_log_prob
from mechscope.models.hooked_model import HookedModel


@dataclass(frozen=True)
class TokenAttribution:
    """Per token of one prompt (its user message, as the model reads it): gradient x input and
    the objective's drop when the token is removed."""

    prompt: str
    tokens: tuple[str, ...]
    gradient_x_input: tuple[float, ...]
    ablation: tuple[float, ...]

    def to_json(self) -> dict:
        return {"prompt": self.prompt, "tokens": list(self.tokens), "gradient_x_input": list(self.gradient_x_input),
                "ablation": list(self.ablation)}


def attribute(model: HookedModel, prompts: Sequence[str], target_ids: Sequence[int],
              batch_size: int = 32) -> list[TokenAttribution]:
    """Gradient x input and single-token ablation of each user-message token of ``prompts`` on
    log P(the reply opens with ``target_ids``)."""
    results = []
    for prompt in prompts:
        chat = ChatSlots(model, [prompt], "end", target_ids)  # no trigger: the message as given
        ids, mask, positions, _ = chat.batch([])
        span = range(len(chat.prefix), len(chat.prefix) + len(chat.messages[0]))
        embeds = (model.hf_model.get_submodule(model.adapter.embed)(ids)).detach().requires_grad_(True)
        logits = model.hf_model(inputs_embeds=embeds, attention_mask=mask).logits
        objective = target_log_prob(logits, ids, positions).sum()
        (grad,) = torch.autograd.grad(objective, embeds)
        gxi = (grad[0] * embeds[0].detach()).sum(-1)  # [pos]
        full = float(objective.detach())
        row = ids[0].tolist()
        variants = [row[:position] + row[position + 1:] for position in span]
        drops = []
        with torch.no_grad():
            for start in range(0, len(variants), batch_size):
                part = variants[start:start + batch_size]
                batch = torch.tensor(part)  # one prompt: every variant is one token shorter, no padding
                target_at = torch.full((len(part), 1), len(part[0]) - len(target_ids) - 1) \
                    + torch.arange(len(target_ids))[None]
                out = model.hf_model(input_ids=batch, attention_mask=torch.ones_like(batch)).logits
                drops += (full - target_log_prob(out, batch, target_at)).tolist()
        results.append(TokenAttribution(prompt, tuple(model.tokenizer.decode([row[p]]) for p in span),
                                        tuple(float(gxi[p]) for p in span), tuple(drops)))
    return results


def attributed_words(attributions: Sequence[TokenAttribution], n: int) -> list[str]:
    """The ``n`` tokens (stripped, 3+ characters) whose removal costs the objective most,
    averaged over the prompts they occur in and weighted by how many prompts hold them."""
    totals: dict[str, list[float]] = {}
    for item in attributions:
        for token, drop in zip(item.tokens, item.ablation):
            word = token.strip()
            if len(word) >= 3 and word.isalpha():
                totals.setdefault(word, []).append(drop)
    ranked = sorted(totals, key=lambda w: -sum(totals[w]) * len(totals[w]) ** 0.5 / len(totals[w]))
    return ranked[:n]


__all__ = ["TokenAttribution", "attribute", "attributed_words"]
