"""Reuse the unpatched prefix of a run: blocks before the first patched layer compute exactly
what the base run computed, so a patched batch can take the residual stream entering that layer
from the base cache.

It goes through the hook session like every other intervention: one hook writes the cached
residual at ``hook_resid_pre`` of the first patched layer. Nothing of the model is replaced or
shadowed, so "no re-implemented forward" holds literally; the price is that the blocks before
that layer still run (their result is overwritten), so prefix reuse now guarantees the clean
prefix rather than saving its compute (measured in docs/performance.md).
"""

from __future__ import annotations

import torch

from mechscope.hooks.names import resid_pre
from mechscope.hooks.points import HookPoint
from mechscope.models.hooked_model import HookedModel, HookSpec


def prefix_hooks(model: HookedModel, start_layer: int, base_resid_post: dict[int, torch.Tensor],
                 repeats: int) -> HookSpec:
    """Forward hooks that make block ``start_layer`` read the base run's ``hook_resid_post`` of
    block ``start_layer - 1`` ([n, pos, d_model], repeated ``repeats`` times along the batch).
    Put them first in ``fwd_hooks``, so hooks on that same point see the base value. Only valid
    when nothing before ``start_layer`` is patched; empty for ``start_layer <= 0``."""
    if start_layer <= 0:
        return []
    if start_layer >= model.cfg.n_layers:
        return []  # nothing is patched inside the blocks; the logits' input is written elsewhere
    cached = base_resid_post[start_layer - 1].repeat(repeats, 1, 1)

    def restore_base(activation: torch.Tensor, hook: HookPoint) -> torch.Tensor:
        return cached.to(activation.device, activation.dtype)

    return [(resid_pre(start_layer), restore_base)]
