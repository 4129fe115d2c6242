"""The ``inspect`` job: everything the first layer of analysis says about one prompt."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mechscope.analysis import (
    DirectLogitAttribution,
    HeadScores,
    LensComparison,
    LogitLens,
    TunedLens,
    compare_lenses,
    direct_logit_attribution,
    head_scores,
    logit_lens,
)
from mechscope.analysis.head_scores import ATTENTION_KINDS
from mechscope.analysis.tuned_lens import tuned_lens as read_tuned_lens
from mechscope.errors import MechscopeError
from mechscope.models.hooked_model import HookedModel


@dataclass
class Inspection:
    """Results of inspecting one prompt (the last position's next-token prediction).

    ``tuned`` (the tuned lens at the last position, rows = the residual after each block) and
    ``lens_kl`` (per-layer KL to the model's output of the logit and tuned lens, over the
    prompt's positions after the first) are set when a tuned lens was given."""

    prompt: str
    model_name: str
    str_tokens: list[str]
    top_next: list[tuple[str, float]]
    top_next_ids: list[int]
    lens: LogitLens
    attribution: DirectLogitAttribution
    heads: HeadScores
    tuned: LogitLens | None = None
    lens_kl: LensComparison | None = None

    def to_json(self) -> dict:
        labels, by_layer = self.attribution.by_layer()
        summary = {
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
            "head_scores": {kind: _ranked(self.heads, kind) for kind in ATTENTION_KINDS},
        }
        # Beside "head_scores" rather than in it: that key keeps the attention-weight scores
        # (fractions in [0, 1]); copy suppression is in standard deviations of a logit effect.
        if self.heads.copy_suppression is not None:
            summary["copy_suppression"] = _ranked(self.heads, "copy_suppression")
        if self.tuned is not None:
            summary["tuned_lens"] = [{"point": label, "top": [{"token": t, "prob": p} for t, p in top]}
                                     for label, top in zip(self.tuned.labels, self.tuned.top_tokens)]
        if self.lens_kl is not None:
            summary["lens_kl"] = self.lens_kl.to_json()
        return summary


def _ranked(heads: HeadScores, kind: str) -> list[dict]:
    return [{"layer": lay, "head": h, "score": s} for lay, h, s in heads.ranked(kind, 10)]


@torch.no_grad()
def inspect_prompt(model: HookedModel, prompt: str, k: int = 10, head_seq_len: int = 20,
                   head_sequences: int = 8, tuned_lens: TunedLens | None = None) -> Inspection:
    """Top next tokens, logit lens, DLA of the top vs second token, head scores; with
    ``tuned_lens`` (e.g. ``TunedLens.load(path, model)``) also the tuned lens and its KL to the
    model's output beside the logit lens's."""
    if k < 2:
        raise MechscopeError(f"k must be at least 2 (the analysis compares the top two tokens), got {k}")
    tokens = model.to_tokens(prompt)
    logits, cache = model.run_with_cache(tokens)
    probs = logits[0, -1].float().softmax(-1)
    top = probs.topk(k)
    top_next = [(model.tokenizer.decode([int(t)]), float(p)) for t, p in zip(top.indices, top.values)]
    first, second = int(top.indices[0]), int(top.indices[1])
    tuned, lens_kl = None, None
    if tuned_lens is not None:
        tuned = read_tuned_lens(model, tuned_lens, cache, k=5)
        # Every position after the first (BOS) when there is one, so a short prompt still
        # gives a few tokens' worth of KL; a one-token prompt uses its only position.
        lens_kl = compare_lenses(model, tuned_lens, tokens, skip_first=tokens.shape[1] > 1, check_name=False)
    return Inspection(
        prompt=prompt,
        model_name=model.cfg.name or model.cfg.family,
        str_tokens=model.to_str_tokens(tokens),
        top_next=top_next,
        top_next_ids=[int(t) for t in top.indices],
        lens=logit_lens(model, cache, k=5),
        attribution=direct_logit_attribution(model, cache, first, second),
        heads=head_scores(model, seq_len=head_seq_len, n_sequences=head_sequences),
        tuned=tuned,
        lens_kl=lens_kl,
    )
