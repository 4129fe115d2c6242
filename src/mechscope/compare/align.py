"""Pairing the positions of two models on the same text, across tokenizers.

Two tokenizers cut a text differently, so "position i" means nothing across models. Both
models have read exactly the same characters at a position where **both** tokenizers end a
token at the same character: those positions are paired (:func:`aligned_positions`). Special
tokens (BOS and the like, which cover no characters) are never paired. After the activations
are read, :func:`typical_rows` drops the rows where either model has an outlier-norm ("massive
activation") token, as the SAE evaluation does, and says how many it dropped.

Shapes: positions are indices into each tokenizer's ``input_ids`` of the text (special tokens
included, as the model reads them).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mechscope.errors import ConfigError
from mechscope.sae.evaluate import typical_tokens


@dataclass(frozen=True)
class Alignment:
    """``ids_a`` / ``ids_b`` the two tokenizations [n_a] / [n_b]; ``positions_a`` /
    ``positions_b`` [m] the paired positions (the token ending at the same character in both)."""

    ids_a: torch.Tensor
    ids_b: torch.Tensor
    positions_a: torch.Tensor
    positions_b: torch.Tensor

    @property
    def pairs(self) -> int:
        return len(self.positions_a)


def _token_ends(tokenizer, text: str) -> tuple[torch.Tensor, dict[int, int]]:
    """(input ids [n], {end character: position}) of ``text``; tokens covering no characters
    (special tokens) have no end."""
    if not getattr(tokenizer, "is_fast", False):
        raise ConfigError(f"{type(tokenizer).__name__} is not a fast tokenizer: character offsets are needed to "
                          "align positions across tokenizers")
    encoded = tokenizer(text, return_offsets_mapping=True)
    ends = {}
    for position, (start, end) in enumerate(encoded["offset_mapping"]):
        if end > start:
            ends[end] = position  # a later token ending at the same character (rare) wins: it has read it all
    return torch.tensor(encoded["input_ids"]), ends


def aligned_positions(tokenizer_a, tokenizer_b, text: str, minimum: int = 1) -> Alignment:
    """The positions of ``text`` where both tokenizers end a token at the same character;
    fewer than ``minimum`` pairs is a ConfigError that says how many aligned."""
    if not isinstance(text, str) or not text:
        raise ConfigError("the text to align must be a non-empty string")
    ids_a, ends_a = _token_ends(tokenizer_a, text)
    ids_b, ends_b = _token_ends(tokenizer_b, text)
    shared = sorted(set(ends_a) & set(ends_b))
    if len(shared) < minimum:
        raise ConfigError(f"only {len(shared)} positions of the text align between the two tokenizers (both end a "
                          f"token at the same character; {len(ends_a)} and {len(ends_b)} tokens); {minimum} are "
                          "needed: give longer texts, or plain prose (words and spaces align best)")
    return Alignment(ids_a, ids_b, torch.tensor([ends_a[c] for c in shared], dtype=torch.long),
                     torch.tensor([ends_b[c] for c in shared], dtype=torch.long))


def typical_rows(a: torch.Tensor, b: torch.Tensor, norm_ratio: float = 10.0) -> tuple[torch.Tensor, int]:
    """(mask [n], dropped): the rows of paired activations a [n, d_a], b [n, d_b] where neither
    side's norm exceeds ``norm_ratio`` x its median (outlier "massive activation" tokens would
    dominate any similarity), and how many rows were dropped."""
    if a.shape[0] != b.shape[0]:
        raise ConfigError(f"paired activations need the same rows; got {a.shape[0]} and {b.shape[0]}")
    keep = typical_tokens(a.float(), norm_ratio) & typical_tokens(b.float(), norm_ratio)
    return keep, int((~keep).sum())


__all__ = ["Alignment", "aligned_positions", "typical_rows"]
