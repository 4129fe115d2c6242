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
        # Only reached for names not set on the view; guard dunders and `base` itself so copy /
        # pickle probing an uninitialised instance does not recurse.
        if name.startswith("__") or name == "base":
            raise AttributeError(name)
        return getattr(self.__dict__["base"], name)


def _views_outermost_first(config: Any) -> list[CaptureConfigView]:
    views = []
    while isinstance(config, CaptureConfigView):
        views.append(config)
        config = config.base
    return views[::-1]


def _apply_mask(scores: torch.Tensor, mask: Any, is_causal: bool, sliding_window: int | None) -> torch.Tensor:
    """Mask ``scores`` [b, h, q, k] the way HF's own kernels would for the same arguments.

    HF passes a boolean mask (True = may attend), an additive float mask, None, or (flash
    kernels) a 2-D padding mask [b, k] plus ``sliding_window``. None with several queries means
    causal with torch sdpa's top-left alignment (HF only passes None where that is right, e.g.
    static-cache prefill, whose extra key slots are empty); None with one query means "attend to
    everything cached". Masked entries get the dtype's minimum rather than -inf, so fully masked
    padding rows stay finite.
    """
    q_len, k_len = scores.shape[-2:]
    minimum = torch.finfo(scores.dtype).min
    if mask is not None and not isinstance(mask, torch.Tensor):
        raise NotImplementedError(
            f"attention pattern capture does not support {type(mask).__name__} masks (flex attention); "
            "load the model with attn_implementation='sdpa' or 'eager'"
        )
    if mask is not None and mask.dim() == 4:
        mask = mask[..., :k_len]
        if mask.dtype == torch.bool:
            return scores.masked_fill(~mask, minimum)
        return scores + mask.to(scores.dtype)
    if mask is not None:  # 2-D padding mask
        scores = scores.masked_fill(~mask.bool()[:, None, None, :k_len], minimum)
    if not is_causal:
        return scores
    device = scores.device
    if mask is None and q_len > 1:
        query_pos = torch.arange(q_len, device=device)[:, None]
    else:  # the queries are the last q_len positions of the keys (decoding with a cache)
        query_pos = torch.arange(k_len - q_len, k_len, device=device)[:, None]
    key_pos = torch.arange(k_len, device=device)[None, :]
    allowed = key_pos <= query_pos
    if sliding_window is not None:
        allowed = allowed & (key_pos > query_pos - sliding_window)
    return scores.masked_fill(~allowed, minimum)


def capture_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    softcap: float | None = None,
    sliding_window: int | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Explicit attention that exposes scores and pattern.

    query [b, h, q, d]; key, value [b, kv_h, k, d]. Grouped-query heads: the queries of one
    group are stacked along the query axis, [b, kv_h, group * q, d], and multiplied with their
    shared kv head, so k and v are never repeated per query head.
    Returns (output [b, q, h, d], pattern [b, h, q, k]), HF's attention-function contract.
    """
    batch, n_heads, q_len, d_head = query.shape
    n_kv, k_len = key.shape[1], key.shape[2]
    group = n_heads // n_kv
    scale = scaling if scaling is not None else d_head**-0.5
    stacked_query = query.reshape(batch, n_kv, group * q_len, d_head)
    scores = torch.matmul(stacked_query, key.transpose(-1, -2)) * scale
    scores = scores.view(batch, n_heads, q_len, k_len)
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    scores = _apply_mask(scores, attention_mask, getattr(module, "is_causal", True), sliding_window)
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
    stacked_pattern = pattern_used.reshape(batch, n_kv, group * q_len, k_len)
    output = torch.matmul(stacked_pattern, value).view(batch, n_heads, q_len, d_head)
    return output.transpose(1, 2), pattern


def ensure_capture_registered() -> None:
    """Register the capture function under its name in transformers' attention registry.

    Idempotent; the registry is transformers' own, and the name is only used by attention
    modules whose config mechscope has swapped for a :class:`CaptureConfigView`.
    """
    if CAPTURE_IMPLEMENTATION not in AttentionInterface._global_mapping:
        AttentionInterface.register(CAPTURE_IMPLEMENTATION, capture_attention_forward)
