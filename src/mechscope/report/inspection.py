"""The ``inspect`` job: everything the first layer of analysis says about one prompt."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mechscope.analysis import (
    DirectLogitAttribution,
    HeadScores,
    LogitLens,
    direct_logit_attribution,
    head_scores,
    logit_lens,
)
from mechscope.errors import MechscopeError
from mechscope.models.hooked_model import HookedModel


@dataclass
class Inspection:
    """Results of inspecting one prompt (the last position's next-token prediction)."""

    prompt: str
    model_name: str
    str_tokens: list[str]
    top_next: list[tuple[str, float]]
    top_next_ids: list[int]
    lens: LogitLens
    attribution: DirectLogitAttribution
    heads: HeadScores

    def to_json(self) -> dict:
        labels, by_layer = self.attribution.by_layer()
        return {
            "prompt": self.prompt,
            "model": self.model_name,
            "tokens": self.str_tokens,
            "top_next_tokens": [{"token": t, "prob": p} for t, p in self.top_next],
            "logit_lens": [{"point": label, "top": [{"token": t, "prob": p} for t, p in top]}
                           for label, top in zip(self.lens.labels, self.lens.top_tokens)],
            "dla": {
                "token": self.attribution.token,
                "other_token": self.attribution.other_token,
                "logit_diff": self.attribution.logit_diff,
                "bias": self.attribution.bias,
                "by_layer": dict(zip(labels, by_layer.tolist())),
                "by_head": self.attribution.by_head.tolist(),
                "top_heads": [{"layer": lay, "head": h, "value": v} for lay, h, v in self.attribution.top_heads(10)],
            },
            "head_scores": {kind: [{"layer": lay, "head": h, "score": s} for lay, h, s in self.heads.ranked(kind, 10)]
                            for kind in ("previous_token", "induction", "duplicate_token")},
        }


@torch.no_grad()
def inspect_prompt(model: HookedModel, prompt: str, k: int = 10, head_seq_len: int = 20,
                   head_sequences: int = 8) -> Inspection:
    if k < 2:
        raise MechscopeError(f"k must be at least 2 (the analysis compares the top two tokens), got {k}")
    tokens = model.to_tokens(prompt)
    logits, cache = model.run_with_cache(tokens)
    probs = logits[0, -1].float().softmax(-1)
    top = probs.topk(k)
    top_next = [(model.tokenizer.decode([int(t)]), float(p)) for t, p in zip(top.indices, top.values)]
    first, second = int(top.indices[0]), int(top.indices[1])
    return Inspection(
        prompt=prompt,
        model_name=model.cfg.name or model.cfg.family,
        str_tokens=model.to_str_tokens(tokens),
        top_next=top_next,
        top_next_ids=[int(t) for t in top.indices],
        lens=logit_lens(model, cache, k=5),
        attribution=direct_logit_attribution(model, cache, first, second),
        heads=head_scores(model, seq_len=head_seq_len, n_sequences=head_sequences),
    )
