"""Head characterisation: previous-token, induction and duplicate-token scores for every head,
measured on repeated random token sequences."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mechscope.errors import MechscopeError
from mechscope.models.hooked_model import HookedModel

KINDS = ("previous_token", "induction", "duplicate_token")


@dataclass
class HeadScores:
    """Each score is [n_layers, n_heads]: the mean attention weight a head puts on the key the
    behaviour predicts (1.0 = all of it), averaged over prompts and query positions."""

    previous_token: torch.Tensor
    induction: torch.Tensor
    duplicate_token: torch.Tensor

    def get(self, kind: str) -> torch.Tensor:
        if kind not in KINDS:
            raise MechscopeError(f"unknown head score {kind!r}; choose one of: {', '.join(KINDS)}")
        return getattr(self, kind)

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
    query position after the first."""
    if seq_len < 2:
        raise MechscopeError(f"seq_len must be at least 2, got {seq_len}")
    tokens = repeated_random_tokens(model, seq_len, n_sequences, seed).to(model.device)
    _, cache = model.run_with_cache(tokens, names=lambda name: name.endswith("attn.hook_pattern"))
    total = tokens.shape[1]
    queries_all = torch.arange(1, total)
    queries_second = torch.arange(1 + seq_len, total)
    scores = {kind: torch.zeros(model.cfg.n_layers, model.cfg.n_heads) for kind in KINDS}
    for layer in range(model.cfg.n_layers):
        pattern = cache["pattern", layer].float().mean(0)  # [head, q, k]
        scores["previous_token"][layer] = pattern[:, queries_all, queries_all - 1].mean(-1).cpu()
        scores["duplicate_token"][layer] = pattern[:, queries_second, queries_second - seq_len].mean(-1).cpu()
        scores["induction"][layer] = pattern[:, queries_second, queries_second - seq_len + 1].mean(-1).cpu()
    return HeadScores(**scores)
