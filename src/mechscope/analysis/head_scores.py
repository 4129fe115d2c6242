"""Head characterisation: previous-token, induction and duplicate-token scores (where a head
attends) and the copy-suppression score (what its output does to the tokens it attends to) for
every head, measured on repeated random token sequences."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import torch

from mechscope.errors import MechscopeError
from mechscope.hooks import names
from mechscope.models.hooked_model import HookedModel

AttentionScoreKind = Literal["previous_token", "induction", "duplicate_token"]
HeadScoreKind = Literal["previous_token", "induction", "duplicate_token", "copy_suppression"]
ATTENTION_KINDS: tuple[str, ...] = get_args(AttentionScoreKind)
KINDS: tuple[str, ...] = get_args(HeadScoreKind)


@dataclass
class HeadScores:
    """Each score is [n_layers, n_heads].

    ``previous_token``, ``induction``, ``duplicate_token``: the mean attention weight a head
    puts on the key the behaviour predicts (1.0 = all of it), averaged over prompts and query
    positions. ``copy_suppression``: how far the head's direct output pushes down the logits of
    the earlier tokens it attends to, in standard deviations of its logit effect over the
    vocabulary (see :func:`copy_suppression_scores`; 0 for a head without the behaviour, None
    when built without it)."""

    previous_token: torch.Tensor
    induction: torch.Tensor
    duplicate_token: torch.Tensor
    copy_suppression: torch.Tensor | None = None

    def get(self, kind: str) -> torch.Tensor:
        if kind not in KINDS:
            raise MechscopeError(f"unknown head score {kind!r}; choose one of: {', '.join(KINDS)}")
        scores = getattr(self, kind)
        if scores is None:
            raise MechscopeError(f"these head scores were built without {kind!r}; head_scores(model) computes it")
        return scores

    def ranked(self, kind: str, k: int = 10) -> list[tuple[int, int, float]]:
        """(layer, head, score) of the k highest-scoring heads for ``kind``."""
        scores = self.get(kind)
        order = scores.flatten().argsort(descending=True)[:k]
        n_heads = scores.shape[1]
        return [(int(i) // n_heads, int(i) % n_heads, float(scores.flatten()[i])) for i in order]


def repeated_random_tokens(model: HookedModel, seq_len: int, n_sequences: int, seed: int) -> torch.Tensor:
    """[n_sequences, 1 + 2 * seq_len]: BOS (when the tokenizer has one), then a random sequence
    of ordinary (non-special) tokens, then the same sequence again."""
    special = set(getattr(model.tokenizer, "all_special_ids", []) or [])
    candidates = torch.tensor([t for t in range(min(model.cfg.d_vocab, len(model.tokenizer))) if t not in special])
    generator = torch.Generator().manual_seed(seed)
    picks = candidates[torch.randint(len(candidates), (n_sequences, seq_len), generator=generator)]
    bos = model.tokenizer.bos_token_id
    prefix = torch.full((n_sequences, 1), bos if bos is not None else int(candidates[0]))
    return torch.cat([prefix, picks, picks], dim=1)


@torch.no_grad()
def head_scores(model: HookedModel, seq_len: int = 20, n_sequences: int = 8, seed: int = 0) -> HeadScores:
    """Score every head. Query positions in the second copy at offset i attend to the first
    copy's position i (duplicate token) or i + 1 (induction); previous-token scores use every
    query position after the first. The copy-suppression score (:func:`copy_suppression_scores`)
    reads the same forward pass: in the second copy every token has appeared before, and the
    model predicts (by induction) tokens of the first copy, which is what such heads suppress."""
    if seq_len < 2:
        raise MechscopeError(f"seq_len must be at least 2, got {seq_len}")
    tokens = repeated_random_tokens(model, seq_len, n_sequences, seed).to(model.device)
    _, cache = model.run_with_cache(tokens, names=_pattern_and_z)
    total = tokens.shape[1]
    queries_all = torch.arange(1, total)
    queries_second = torch.arange(1 + seq_len, total)
    scores = {kind: torch.zeros(model.cfg.n_layers, model.cfg.n_heads) for kind in ATTENTION_KINDS}
    for layer in range(model.cfg.n_layers):
        pattern = cache["pattern", layer].float().mean(0)  # [head, q, k]
        scores["previous_token"][layer] = pattern[:, queries_all, queries_all - 1].mean(-1).cpu()
        scores["duplicate_token"][layer] = pattern[:, queries_second, queries_second - seq_len].mean(-1).cpu()
        scores["induction"][layer] = pattern[:, queries_second, queries_second - seq_len + 1].mean(-1).cpu()
    return HeadScores(**scores, copy_suppression=_copy_suppression(model, cache, tokens))


def _pattern_and_z(name: str) -> bool:
    return name.endswith("attn.hook_pattern") or name.endswith("attn.hook_z")


@torch.no_grad()
def copy_suppression_scores(model: HookedModel, tokens: torch.Tensor) -> torch.Tensor:
    """Copy-suppression score [n_layers, n_heads] of every head on ``tokens`` [batch, pos]
    (unpadded rows; position 0 is taken to be BOS and is never a key), after McDougall et al.
    2023, "Copy Suppression": a head that attends to an earlier token and writes minus that
    token's unembedding lowers the logit of exactly the tokens it attends to.

    Definition, for head h of layer l, with A [batch, head, q, k] its attention pattern and
    r[b, q] [d_model] its direct output at query q (z @ W_O for that head alone, through
    Gemma's post-attention norm where there is one, centred for LayerNorm models):

    - the logit effect on token v is r[b, q] . u_v, where u_v [d_model] is token v's
      unembedding with the final norm's weight folded in, centred over the vocabulary
      (u_v - mean_v' u_v'), so a shift of every logit counts for nothing;
    - standardised over the vocabulary: s[b, q, v] = (r . u_v) / sqrt(r^T C r), with
      C = mean_v u_v u_v^T [d_model, d_model] (so std_v s = 1); the final norm's scale
      divides numerator and denominator alike and cancels;
    - score = -(1 / (batch * (pos - 2))) sum_b sum_{q=2}^{pos-1} sum_{k=1}^{q-1}
      A[b, h, q, k] * s[b, q, tokens[b, k]].

    So a score of 1 means the tokens the head attends to (weighted by attention) have their
    logits pushed one standard deviation below the average token's; a copying head scores
    negative, and a head whose output is unrelated to what it attends to scores about 0. The
    final soft-cap (Gemma) is left out: the score is linear in the head's output."""
    if tokens.dim() != 2 or tokens.shape[1] < 3:
        raise MechscopeError(f"tokens must be [batch, pos >= 3] (a query needs an earlier key after BOS), "
                             f"got shape {tuple(tokens.shape)}")
    tokens = tokens.to(model.device)
    _, cache = model.run_with_cache(tokens, names=_pattern_and_z)
    return _copy_suppression(model, cache, tokens)


def _copy_suppression(model: HookedModel, cache, tokens: torch.Tensor) -> torch.Tensor:
    cfg = model.cfg
    directions = model.unembed_directions(torch.arange(cfg.d_vocab, device=model.device))  # [vocab, d_model]
    directions = directions - directions.mean(0)
    covariance = directions.T @ directions / cfg.d_vocab  # [d_model, d_model]
    attended = directions[tokens]  # [batch, pos, d_model]: each key's own token
    pos = tokens.shape[1]
    query, key = torch.arange(pos, device=model.device)[:, None], torch.arange(pos, device=model.device)[None, :]
    earlier = ((key >= 1) & (key < query)).float()  # [q, k]: keys after BOS, before the query
    scores = torch.zeros(cfg.n_layers, cfg.n_heads)
    for layer in range(cfg.n_layers):
        z = cache[names.attn(layer, "z")]  # [batch, pos, head, d_head]
        result = torch.einsum("bphd,hdm->bphm", z, model.W_O(layer).to(z.device, z.dtype))
        if model.adapter.attn_out_is_norm:
            result = model.linearise_attn_post_norm(layer, result)
        result = result.float()
        if cfg.norm_type == "layer":
            result = result - result.mean(-1, keepdim=True)  # the final LayerNorm centres first
        effect = torch.einsum("bqhm,bkm->bhqk", result, attended)  # logit effect on key k's token
        spread = torch.einsum("bqhm,mn,bqhn->bhq", result, covariance, result).clamp_min(0).sqrt()
        # A head that writes nothing (e.g. ablated) has no logit effect to standardise: score 0.
        standardised = torch.where(spread[..., None] > 0, effect / spread.clamp_min(1e-30)[..., None],
                                   torch.zeros_like(effect))
        pattern = cache["pattern", layer].float()  # [batch, head, q, k]
        weighted = (pattern * standardised * earlier).sum(-1)  # [batch, head, q]
        scores[layer] = -weighted[:, :, 2:].mean((0, 2)).cpu()
    return scores
