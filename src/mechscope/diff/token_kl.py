"""Per-token KL divergence between a base model's and a fine-tune's next-token distributions:
where, token by token, the fine-tune predicts differently."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from mechscope.diff.compat import DiffInput, check_comparable, input_batches, model_label
from mechscope.errors import MechscopeError
from mechscope.models.hooked_model import HookedModel
from mechscope.validate import check_int

POSITION_CHUNK = 256  # positions whose float64 log-softmax is held at once (a row of d_vocab each)


@dataclass(frozen=True)
class KLPosition:
    """One position: the token there (``token``), the token that follows it (``next_token``; None
    at a text's last position) and KL(P_base || P_ft) of the prediction made there."""

    text_index: int
    position: int
    token: str
    next_token: str | None
    kl: float

    def to_json(self) -> dict[str, Any]:
        return {"text_index": self.text_index, "position": self.position, "token": self.token,
                "next_token": self.next_token, "kl": self.kl}


@dataclass(frozen=True, eq=False)
class TokenKL:
    """KL(P_base || P_ft) of the next-token distribution at every (unpadded) position.

    ``kl[i]`` [n_i] float64 for text i (position j: the prediction after reading its tokens
    0..j); ``token_ids[i]`` / ``tokens[i]`` its n_i tokens (padding removed)."""

    kl: tuple[torch.Tensor, ...]
    token_ids: tuple[tuple[int, ...], ...]
    tokens: tuple[tuple[str, ...], ...]
    base_name: str = ""
    ft_name: str = ""

    def __post_init__(self) -> None:
        if not (len(self.kl) == len(self.token_ids) == len(self.tokens)):
            raise MechscopeError(f"{len(self.kl)} KL rows, {len(self.token_ids)} token rows and {len(self.tokens)} "
                                 "token-string rows; they must match")
        for index, (kl, ids) in enumerate(zip(self.kl, self.token_ids)):
            if kl.shape != (len(ids),):
                raise MechscopeError(f"text {index}: KL shape {tuple(kl.shape)} for {len(ids)} tokens")

    @property
    def n_tokens(self) -> int:
        return sum(len(ids) for ids in self.token_ids)

    @property
    def mean(self) -> float:
        """The mean KL over every position of every text."""
        return float(torch.cat(self.kl).mean())

    @property
    def text_means(self) -> list[float]:
        return [float(kl.mean()) for kl in self.kl]

    def top(self, k: int = 20) -> list[KLPosition]:
        """The ``k`` positions with the largest KL, largest first."""
        k = check_int("k", k, minimum=1)
        flat = torch.cat(self.kl)
        texts = torch.cat([torch.full((len(kl),), index) for index, kl in enumerate(self.kl)])
        starts = torch.cat([torch.zeros(1, dtype=torch.long), torch.tensor([len(kl) for kl in self.kl]).cumsum(0)])
        result = []
        for flat_index in flat.topk(min(k, len(flat))).indices.tolist():
            text = int(texts[flat_index])
            position = flat_index - int(starts[text])
            strings = self.tokens[text]
            result.append(KLPosition(text, position, strings[position],
                                     strings[position + 1] if position + 1 < len(strings) else None,
                                     float(flat[flat_index])))
        return result

    def to_json(self, top_k: int = 20) -> dict[str, Any]:
        return {"base": self.base_name, "ft": self.ft_name, "mean": self.mean, "n_tokens": self.n_tokens,
                "text_means": self.text_means, "top": [item.to_json() for item in self.top(top_k)],
                "texts": [{"tokens": list(tokens), "kl": kl.tolist()} for tokens, kl in zip(self.tokens, self.kl)]}


def kl_of_logits(base_logits: torch.Tensor, ft_logits: torch.Tensor) -> torch.Tensor:
    """KL(softmax(base) || softmax(ft)) [...] of logits [..., d_vocab], in float64 (the sum over
    a large vocabulary of nearly equal log-probabilities cancels badly in float32)."""
    log_p = base_logits.double().log_softmax(-1)
    log_q = ft_logits.to(log_p.device).double().log_softmax(-1)
    return (log_p.exp() * (log_p - log_q)).sum(-1)


@torch.no_grad()
def per_token_kl(base: HookedModel, ft: HookedModel, inputs: DiffInput, batch_size: int = 8,
                 attention_mask: torch.Tensor | None = None, progress: bool = True) -> TokenKL:
    """KL(P_base || P_ft) at every position of ``inputs`` (a text, texts, or a [n, pos] token
    tensor with ``attention_mask`` or the mask ``to_tokens`` remembered). Padding is dropped."""
    check_comparable(base, ft)
    kls, ids, strings = [], [], []
    for tokens, mask in input_batches(base, inputs, attention_mask, batch_size, progress, "token KL"):
        base_logits = base(tokens, attention_mask=mask)
        ft_logits = ft(tokens, attention_mask=mask)
        for row in range(len(tokens)):
            # Padding may sit on either side; the real positions are those the mask keeps.
            keep = mask[row].bool()
            if not bool(keep.any()):
                raise MechscopeError(f"text {len(kls)} has no unpadded token (its attention mask is all zeros)")
            kept = keep.nonzero().squeeze(-1).to(base_logits.device)
            row_kl = torch.cat([kl_of_logits(base_logits[row, kept[start:start + POSITION_CHUNK]],
                                             ft_logits[row, kept[start:start + POSITION_CHUNK].to(ft_logits.device)])
                                for start in range(0, len(kept), POSITION_CHUNK)])
            row_ids = tokens[row][keep].tolist()
            kls.append(row_kl.cpu())
            ids.append(tuple(row_ids))
            strings.append(tuple(base.tokenizer.decode([token]) for token in row_ids))
    return TokenKL(tuple(kls), tuple(ids), tuple(strings), model_label(base), model_label(ft))
