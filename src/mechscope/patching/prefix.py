"""Reuse the unpatched prefix of a run: blocks before the first patched layer compute exactly
what the base run computed, so a patched batch takes their output from the base cache.

It runs through the hook session (:class:`mechscope.hooks.prefix.PrefixReuse`): the skipped
blocks' real forwards run on one row and their output is replaced by the cached residual
stream for the whole batch. Nothing of the model is replaced or shadowed.
"""

from __future__ import annotations

import torch

from mechscope.hooks.prefix import PrefixReuse
from mechscope.models.hooked_model import HookedModel


def prefix_reuse(model: HookedModel, start_layer: int, base_resid_post: dict[int, torch.Tensor],
                 repeats: int) -> PrefixReuse | None:
    """Blocks 0..start_layer-1 return the base run's ``hook_resid_post`` of block
    start_layer-1 ([n, pos, d_model] repeated ``repeats`` times along the batch); None when
    nothing can be skipped. Pass it as ``run_with_hooks(..., prefix=...)``. Only valid when
    nothing before ``start_layer`` is patched."""
    if start_layer <= 0:
        return None
    cached = base_resid_post[start_layer - 1].repeat(repeats, 1, 1)
    return model.prefix_reuse(start_layer, cached)
