"""Per-head views of a model's attention input projections, for every adapter layout."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from mechscope.models.hooked_model import HookedModel

PARTS = ("q", "k", "v")


def input_projection(model: HookedModel, layer: int, part: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(weight [heads, d_head, d_model], bias [heads, d_head] or None) of ``part`` ("q", "k" or
    "v") at ``layer``, so that ``hook_{part}[..., h, :] = ln1(x) @ weight[h].T + bias[h]``.
    ``heads`` is n_heads for q and n_kv_heads for k and v. Views, not copies."""
    if part not in PARTS:
        raise ValueError(f"part must be one of {PARTS}, got {part!r}")
    adapter, cfg = model.adapter, model.cfg
    block = model.hf_model.get_submodule(f"{adapter.layers}.{layer}")
    heads = cfg.n_heads if part == "q" else cfg.n_kv_heads
    if not adapter.fused_qkv:
        module = block.get_submodule(getattr(adapter, f"{part}_proj"))
        bias = None if module.bias is None else module.bias.view(heads, cfg.d_head)
        return module.weight.view(heads, cfg.d_head, cfg.d_model), bias
    module = block.get_submodule(adapter.qkv_proj)
    index = PARTS.index(part)
    width = cfg.n_heads * cfg.d_head
    if adapter.qkv_layout == "concat":
        # GPT-2's Conv1D stores [d_model, 3 * width] (in_out, like its o_proj): [q | k | v] columns.
        weight = module.weight[:, index * width:(index + 1) * width].T.view(heads, cfg.d_head, cfg.d_model)
        bias = None if module.bias is None else module.bias[index * width:(index + 1) * width].view(heads, cfg.d_head)
        return weight, bias
    # GPT-NeoX: rows grouped per head as [q | k | v], each d_head wide.
    weight = module.weight.view(cfg.n_heads, 3, cfg.d_head, cfg.d_model)[:, index]
    bias = None if module.bias is None else module.bias.view(cfg.n_heads, 3, cfg.d_head)[:, index]
    return weight, bias
