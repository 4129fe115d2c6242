"""Text <-> token conversion with clear errors for the inputs that usually go wrong."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mechscope.errors import InputTypeError, MechscopeError

TextInput = str | Sequence[str]
ModelInput = TextInput | torch.Tensor


def tokenize(
    tokenizer,
    text: TextInput,
    prepend_bos: bool | None = None,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Tokenize one prompt or a batch. Returns (tokens [batch, pos], attention_mask or None).

    ``prepend_bos=None`` keeps the tokenizer's own behaviour; True makes sure every row starts
    with the BOS token; False strips special tokens. Prompts of different lengths are padded on
    the right and an attention mask is returned; a tokenizer without a pad token cannot pad, and
    says so instead of guessing one.
    """
    texts = [text] if isinstance(text, str) else list(text)
    if not texts:
        raise MechscopeError("input is empty: pass a prompt, a list of prompts, or a token tensor")
    for index, item in enumerate(texts):
        if not isinstance(item, str):
            raise InputTypeError(f"prompt {index} is a {type(item).__name__}, expected str")
    encoded = [tokenizer(t, add_special_tokens=prepend_bos is not False)["input_ids"] for t in texts]
    if prepend_bos:
        bos = tokenizer.bos_token_id
        if bos is None:
            raise MechscopeError("prepend_bos=True but the tokenizer has no BOS token")
        encoded = [ids if ids[:1] == [bos] else [bos, *ids] for ids in encoded]
    lengths = [len(ids) for ids in encoded]
    empty = [i for i, n in enumerate(lengths) if n == 0]
    if empty:
        raise MechscopeError(f"prompt(s) {empty} tokenize to zero tokens; nothing to run the model on")
    longest = max(lengths)
    if all(n == longest for n in lengths):
        return torch.tensor(encoded, device=device), None
    if tokenizer.pad_token_id is None:
        raise MechscopeError(
            f"prompts have different token lengths {sorted(set(lengths))} and the tokenizer has no pad "
            "token; set tokenizer.pad_token (e.g. to tokenizer.eos_token) or pass equal-length prompts"
        )
    tokens = torch.full((len(encoded), longest), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(encoded), longest), dtype=torch.long)
    for row, ids in enumerate(encoded):
        tokens[row, : len(ids)] = torch.tensor(ids)
        mask[row, : len(ids)] = 1
    return tokens.to(device), mask.to(device)


def as_token_tensor(tokens: torch.Tensor) -> torch.Tensor:
    """Validate a token tensor and give it a batch dimension: [pos] -> [1, pos]."""
    if tokens.dtype not in (torch.int64, torch.int32):
        raise InputTypeError(f"token tensor must be integer, got {tokens.dtype}")
    if tokens.dim() == 1:
        tokens = tokens.unsqueeze(0)
    if tokens.dim() != 2:
        raise MechscopeError(f"token tensor must be [batch, pos] or [pos], got shape {tuple(tokens.shape)}")
    if tokens.numel() == 0:
        raise MechscopeError(f"input is empty: token tensor of shape {tuple(tokens.shape)}")
    return tokens.long()
