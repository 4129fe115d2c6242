"""Prefix reuse, inside a hook session: blocks before the first patched layer compute exactly
what a base run computed, so their work is cut to one row and their output taken from a cache.

Nothing of the model is replaced: each skipped block's real forward runs, through ordinary
PyTorch hooks. A forward pre-hook slices the block's inputs to the batch's first row (the
hidden states and every batch-indexed tensor argument: masks, position ids, rotary tables), so
the skipped blocks cost one row instead of the whole batch; a forward hook on the last skipped
block returns the cached residual stream for the whole batch. The output is therefore the
cached one whatever the sliced forward computed, and hooks *on* the skipped blocks see the
single row (prefix reuse is only valid when nothing there is patched or read).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class PrefixReuse:
    """``block_modules``: dotted paths of the skipped blocks, in forward order (blocks 0..L-1);
    ``output``: [batch, pos, d_model], what the last of them returns for the whole batch."""

    block_modules: tuple[str, ...]
    output: torch.Tensor


def _first_row(value: Any, rows: int) -> Any:
    """``value`` with every tensor of >= 2 dims whose first axis is the batch cut to one row
    (recursing into tuples and lists, where HF passes rotary tables)."""
    if isinstance(value, torch.Tensor):
        return value[:1] if value.dim() >= 2 and value.shape[0] == rows else value
    if isinstance(value, tuple | list):
        return type(value)(_first_row(item, rows) for item in value)
    return value


def shrink_to_one_row(rows: int):
    """A forward pre-hook (``with_kwargs=True``) cutting a block's batch-indexed inputs to one row."""

    def hook(module, args, kwargs):
        if rows <= 1:
            return None
        return _first_row(args, rows), {key: _first_row(value, rows) for key, value in kwargs.items()}

    return hook


def return_cached(output: torch.Tensor):
    """A forward hook replacing a block's output (a tensor, or a tuple whose first item is the
    hidden states) with ``output``."""

    def hook(module, args, kwargs, result):
        cached = output.to(device=output.device)
        if isinstance(result, torch.Tensor):
            return cached.to(result.dtype)
        return (cached.to(result[0].dtype), *result[1:])

    return hook
