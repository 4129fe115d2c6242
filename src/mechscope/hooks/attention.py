"""Per-layer, per-call capture of attention scores and patterns.

HF's fused attention kernels (sdpa, flash) never materialise the pattern. Forcing eager attention
on the whole model would slow every call, so mechscope switches only the requested layers, only
for the duration of one call: their attention module's ``config`` attribute is temporarily
replaced by a thin view whose ``_attn_implementation`` names mechscope's capture function. That
function computes attention explicitly (with the scaling, soft-capping, masks and grouped-query
layout HF passes it) and runs the scores / pattern hooks. The real config object is never
modified, and the original attribute is restored when the call ends.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from transformers import AttentionInterface

CAPTURE_IMPLEMENTATION = "mechscope_capture"

# Scores / pattern callbacks: fn(tensor [batch, head, q, k]) -> tensor of the same shape.
TensorCallback = Callable[[torch.Tensor], torch.Tensor]


class CaptureConfigView:
    """Stands in for an attention module's config during one call.

    Reads fall through to ``base`` (the real config, or an enclosing view when hook contexts
    nest); only ``_attn_implementation`` is overridden.
    """

    _attn_implementation = CAPTURE_IMPLEMENTATION

    def __init__(self, base: Any, on_scores: TensorCallback, on_pattern: TensorCallback):
        self.base = base
        self.on_scores = on_scores
        self.on_pattern = on_pattern

    def __getattr__(self, name: str) -> Any:
        return getattr(self.base, name)


def _views_outermost_first(config: Any) -> list[CaptureConfigView]:
    views = []
    while isinstance(config, CaptureConfigView):
        views.append(config)
        config = config.base
    return views[::-1]


def _apply_mask(scores: torch.Tensor, mask: torch.Tensor | None, is_causal: bool) -> torch.Tensor:
    """Mask ``scores`` [b, h, q, k] the way HF's own kernels would for the same ``mask``.

    HF passes None (plain causal; nothing when one query attends to a cache), a boolean mask
    (True = may attend), an additive float mask, or a 2-D padding mask [b, k] (flash kernels).
    Masked entries get the dtype's minimum rather than -inf, so fully masked padding rows stay finite.
    """
    q_len, k_len = scores.shape[-2:]
    minimum = torch.finfo(scores.dtype).min
    if mask is not None and mask.dim() == 2:
        padding = mask.bool()[:, None, None, :k_len]
        scores = scores.masked_fill(~padding, minimum)
        mask = None
    if mask is None:
        if is_causal and q_len > 1:
            allowed = torch.ones(q_len, k_len, dtype=torch.bool, device=scores.device).tril(k_len - q_len)
            scores = scores.masked_fill(~allowed, minimum)
        return scores
    mask = mask[..., :k_len]
    if mask.dtype == torch.bool:
        return scores.masked_fill(~mask, minimum)
    return scores + mask.to(scores.dtype)


def capture_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    softcap: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Explicit attention that exposes scores and pattern.

    query [b, h, q, d]; key, value [b, kv_h, k, d]. Grouped-query heads are handled by
    broadcasting query groups against their shared kv head (no copy of k or v).
    Returns (output [b, q, h, d], pattern [b, h, q, k]), HF's attention-function contract.
    """
    batch, n_heads, q_len, d_head = query.shape
    n_kv = key.shape[1]
    group = n_heads // n_kv
    scale = scaling if scaling is not None else d_head**-0.5
    grouped_query = query.view(batch, n_kv, group, q_len, d_head)
    scores = torch.matmul(grouped_query, key.unsqueeze(2).transpose(-1, -2)) * scale
    scores = scores.view(batch, n_heads, q_len, key.shape[2])
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    scores = _apply_mask(scores, attention_mask, getattr(module, "is_causal", True))
    views = _views_outermost_first(module.config)
    for view in views:
        scores = view.on_scores(scores)
    pattern = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    for view in views:
        pattern = view.on_pattern(pattern)
    if dropout and module.training:
        pattern_used = torch.nn.functional.dropout(pattern, p=dropout)
    else:
        pattern_used = pattern
    grouped_pattern = pattern_used.view(batch, n_kv, group, q_len, key.shape[2])
    output = torch.matmul(grouped_pattern, value.unsqueeze(2)).view(batch, n_heads, q_len, d_head)
    return output.transpose(1, 2), pattern


def ensure_capture_registered() -> None:
    """Register the capture function under its name in transformers' attention registry.

    Idempotent; the registry is transformers' own, and the name is only used by attention
    modules whose config mechscope has swapped for a :class:`CaptureConfigView`.
    """
    if CAPTURE_IMPLEMENTATION not in AttentionInterface._global_mapping:
        AttentionInterface.register(CAPTURE_IMPLEMENTATION, capture_attention_forward)
