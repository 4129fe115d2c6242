"""Reuse the unpatched prefix of a run: blocks before the first patched layer compute exactly
what the base run computed, so a patched batch can take their output from the base cache.

For the duration of a context, each skipped block's ``forward`` is shadowed by an instance
attribute that returns the cached residual stream (repeated for the batch); on exit the block's
previous instance attribute (if any) is put back. No weights, hooks or configs are touched.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

from mechscope.models.hooked_model import HookedModel


@contextmanager
def reuse_prefix(model: HookedModel, start_layer: int, base_resid_post: dict[int, torch.Tensor], repeats: int):
    """Blocks 0..start_layer-1 return the base run's ``hook_resid_post`` of block
    start_layer-1 ([n, pos, d_model] repeated ``repeats`` times along the batch) instead of
    computing. Only valid when nothing before ``start_layer`` is patched."""
    if start_layer <= 0:
        yield
        return
    cached = base_resid_post[start_layer - 1].repeat(repeats, 1, 1)
    layers = model.hf_model.get_submodule(model.adapter.layers)
    skipped = [layers[index] for index in range(start_layer)]

    def shortcut(*args, **kwargs):
        return cached

    # A block may already carry an instance-level forward (accelerate's dispatch wrappers do);
    # put back exactly what was there.
    previous = [block.__dict__.get("forward") for block in skipped]
    try:
        for block in skipped:
            block.forward = shortcut
        yield
    finally:
        for block, earlier in zip(skipped, previous):
            if earlier is None:
                block.__dict__.pop("forward", None)
            else:
                block.forward = earlier
