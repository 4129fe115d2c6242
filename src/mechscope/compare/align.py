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
from mechscope.validate import check_int


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


@dataclass(frozen=True)
class AlignedRun:
    """Both models' activations at every aligned position of ``texts`` (outliers not yet
    dropped): ``a`` / ``b`` {hook: [n, d]}; per row its ``text`` index and the character spans of
    A's and B's tokens (``start_a`` / ``start_b`` to ``end``), [n] each."""

    a: dict[str, torch.Tensor]
    b: dict[str, torch.Tensor]
    text: torch.Tensor
    start_a: torch.Tensor
    start_b: torch.Tensor
    end: torch.Tensor

    @property
    def pairs(self) -> int:
        return len(self.text)


@torch.no_grad()
def run_aligned(model_a, model_b, texts, hooks_a: list[str], hooks_b: list[str], minimum_pairs: int = 64,
                progress: bool = True) -> AlignedRun:
    """Run both models (HookedModels) on each of ``texts`` and keep ``hooks_a`` / ``hooks_b`` at
    the positions where both tokenizers end a token at the same character; fewer than
    ``minimum_pairs`` over all texts is a ConfigError that says how many aligned."""
    from tqdm.auto import tqdm

    check_int("minimum_pairs", minimum_pairs, 4)
    texts = list(texts)
    if not texts or not all(isinstance(text, str) and text for text in texts):
        raise ConfigError("give at least one text to compare the models on, each a non-empty string")
    found = {"a": {hook: [] for hook in hooks_a}, "b": {hook: [] for hook in hooks_b}}
    places: dict[str, list[torch.Tensor]] = {key: [] for key in ("text", "start_a", "start_b", "end")}
    for index, text in enumerate(tqdm(texts, desc="aligned activations", disable=not progress)):
        alignment = aligned_positions(model_a.tokenizer, model_b.tokenizer, text, minimum=0)
        if alignment.pairs == 0:
            continue
        for side, model, ids, positions in (("a", model_a, alignment.ids_a, alignment.positions_a),
                                            ("b", model_b, alignment.ids_b, alignment.positions_b)):
            _, cache = model.run_with_cache(ids[None], names=list(found[side]))
            for hook in found[side]:
                found[side][hook].append(cache[hook][0, positions].float().cpu())
            offsets = torch.tensor(model.tokenizer(text, return_offsets_mapping=True)["offset_mapping"])[positions]
            places[f"start_{side}"].append(offsets[:, 0])
            if side == "a":
                places["end"].append(offsets[:, 1])
        places["text"].append(torch.full((alignment.pairs,), index, dtype=torch.long))
    pairs = sum(len(rows) for rows in places["text"])
    if pairs < minimum_pairs:
        raise ConfigError(f"only {pairs} positions of the {len(texts)} texts align between the two tokenizers; "
                          f"{minimum_pairs} are needed: give more or longer texts (plain prose aligns best)")
    return AlignedRun({hook: torch.cat(rows) for hook, rows in found["a"].items()},
                      {hook: torch.cat(rows) for hook, rows in found["b"].items()},
                      *(torch.cat(places[key]) for key in ("text", "start_a", "start_b", "end")))


def typical_rows(a: torch.Tensor, b: torch.Tensor, norm_ratio: float = 10.0) -> tuple[torch.Tensor, int]:
    """(mask [n], dropped): the rows of paired activations a [n, d_a], b [n, d_b] where neither
    side's norm exceeds ``norm_ratio`` x its median (outlier "massive activation" tokens would
    dominate any similarity), and how many rows were dropped."""
    if a.shape[0] != b.shape[0]:
        raise ConfigError(f"paired activations need the same rows; got {a.shape[0]} and {b.shape[0]}")
    keep = typical_tokens(a.float(), norm_ratio) & typical_tokens(b.float(), norm_ratio)
    return keep, int((~keep).sum())


__all__ = ["AlignedRun", "Alignment", "aligned_positions", "run_aligned", "typical_rows"]
