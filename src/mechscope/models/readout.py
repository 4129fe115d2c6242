"""Residual-stream readouts of a cache that need the model's own maths: per-head writes through
W_O, norm scales, the post-attention norm's linearisation and unembedding directions.

``ActivationCache`` (in hooks, which knows no model) delegates its TransformerLens-compatible
methods here through ``cache.model.readout``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal, get_args

import torch

from mechscope.errors import MechscopeError
from mechscope.hooks import names
from mechscope.hooks.cache import ActivationCache, PosSelector
from mechscope.validate import check_choice

if TYPE_CHECKING:
    from mechscope.models.hooked_model import HookedModel

DecomposeMode = Literal["all", "attn", "mlp"]
DECOMPOSE_MODES: tuple[str, ...] = get_args(DecomposeMode)


class ResidualReadout:
    """The model-dependent half of :class:`ActivationCache`; each method takes the cache first.
    Stacks have shape [components, batch, pos, d_model] (pos dropped when ``pos_slice`` is an int)."""

    def __init__(self, model: HookedModel):
        self.model = model

    def final_resid(self, cache: ActivationCache) -> torch.Tensor:
        return cache[names.resid_post(self.model.cfg.n_layers - 1)]

    def accumulated_resid(self, cache: ActivationCache, layer: int | None = None, incl_mid: bool = False,
                          apply_ln: bool = False, pos_slice: PosSelector = None, return_labels: bool = False):
        n_layers = self.model.cfg.n_layers
        stop = n_layers if layer is None else layer
        labels, parts = [], []
        for index in range(stop):
            labels.append(f"{index}_pre")
            parts.append(cache[names.resid_pre(index)])
            if incl_mid:
                labels.append(f"{index}_mid")
                parts.append(cache[names.resid_mid(index)])
        if layer is None or layer >= n_layers:
            labels.append("final_post")
            parts.append(self.final_resid(cache))
        stack = cache.take(torch.stack(parts), pos_slice, axis=2)
        if apply_ln:
            stack = self.apply_ln_to_stack(cache, stack, layer, pos_slice)
        return (stack, labels) if return_labels else stack

    def decompose_resid(self, cache: ActivationCache, layer: int | None = None, mode: str = "all",
                        apply_ln: bool = False, incl_embeds: bool = True, pos_slice: PosSelector = None,
                        return_labels: bool = False):
        check_choice("mode", mode, DECOMPOSE_MODES)
        stop = self.model.cfg.n_layers if layer is None else layer
        labels, parts = [], []
        if incl_embeds:
            labels.append("embed")
            parts.append(cache[names.EMBED])
            if names.POS_EMBED in self.model.catalogue:
                labels.append("pos_embed")
                parts.append(cache[names.POS_EMBED].expand_as(parts[0]))  # [1, pos, d] in GPT-2
        for index in range(stop):
            if mode in ("all", "attn"):
                labels.append(f"{index}_attn_out")
                parts.append(cache[names.attn_out(index)])
            if mode in ("all", "mlp"):
                labels.append(f"{index}_mlp_out")
                parts.append(cache[names.mlp_out(index)])
        stack = cache.take(torch.stack(parts), pos_slice, axis=2)
        if apply_ln:
            stack = self.apply_ln_to_stack(cache, stack, layer, pos_slice)
        return (stack, labels) if return_labels else stack

    def stack_head_results(self, cache: ActivationCache, layer: int | None = None, pos_slice: PosSelector = None,
                           apply_ln: bool = False, return_labels: bool = False):
        model = self.model
        stop = model.cfg.n_layers if layer is None else layer
        parts, labels = [], []
        for index in range(stop):
            result_name = names.attn(index, "result")
            if result_name in cache:
                result = cache.take(cache[result_name], pos_slice)
            else:
                z = cache.take(cache[names.attn(index, "z")], pos_slice)
                w_o = model.W_O(index).to(z.device, z.dtype)
                result = torch.einsum("...hd,hdm->...hm", z, w_o)
            if model.adapter.attn_out_is_norm:
                result = model.linearise_attn_post_norm(index, result)
            parts.append(result.movedim(-2, 0))
            labels.extend(f"L{index}H{head}" for head in range(model.cfg.n_heads))
        stack = torch.cat(parts) if parts else torch.empty(0)
        if apply_ln:
            stack = self.apply_ln_to_stack(cache, stack, layer, pos_slice)
        return (stack, labels) if return_labels else stack

    def norm_scale(self, cache: ActivationCache, layer: int | None = None,
                   pos_slice: PosSelector = None) -> torch.Tensor:
        cfg = self.model.cfg
        if layer is None or layer >= cfg.n_layers:
            resid = self.final_resid(cache)
        else:
            resid = cache[names.resid_pre(layer)]
        resid = cache.take(resid, pos_slice).float()
        if cfg.norm_type == "layer":
            resid = resid - resid.mean(-1, keepdim=True)
        return (resid.pow(2).mean(-1, keepdim=True) + cfg.norm_eps).sqrt()

    def apply_ln_to_stack(self, cache: ActivationCache, stack: torch.Tensor, layer: int | None = None,
                          pos_slice: PosSelector = None) -> torch.Tensor:
        if self.model.cfg.norm_type == "layer":
            stack = stack - stack.mean(-1, keepdim=True)
        scale = self.norm_scale(cache, layer, pos_slice)
        return (stack / scale).to(stack.dtype)

    def logit_attrs(self, cache: ActivationCache, stack: torch.Tensor, tokens: int | torch.Tensor,
                    incorrect_tokens: int | torch.Tensor | None = None, pos_slice: int = -1) -> torch.Tensor:
        if stack.dim() != 3:
            raise MechscopeError(f"stack must be [components, batch, d_model] at one position, got {tuple(stack.shape)}")
        directions = self.model.unembed_directions(tokens, incorrect_tokens)  # [1 or batch, d_model], fp32
        normed = self.apply_ln_to_stack(cache, stack.float(), None, pos_slice)
        return (normed * directions.to(normed.device)).sum(-1)
