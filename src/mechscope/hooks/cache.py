"""ActivationCache: activations of one run, by hook name, with residual-stream decompositions."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

import torch

from mechscope.hooks.errors import MechscopeError, OutOfRangeError, UnknownHookError

if TYPE_CHECKING:
    from mechscope.models.hooked_model import HookedModel

PosSelector = int | slice | torch.Tensor | None

# Short names accepted as cache[("resid_post", 3)], TransformerLens-style.
_SHORT_NAMES = {
    "resid_pre": "hook_resid_pre", "resid_mid": "hook_resid_mid", "resid_post": "hook_resid_post",
    "attn_out": "hook_attn_out", "mlp_out": "hook_mlp_out", "mlp_in": "hook_mlp_in",
    "q": "attn.hook_q", "k": "attn.hook_k", "v": "attn.hook_v", "z": "attn.hook_z",
    "result": "attn.hook_result", "pattern": "attn.hook_pattern", "attn_scores": "attn.hook_attn_scores",
    "scores": "attn.hook_attn_scores", "pre": "mlp.hook_pre", "post": "mlp.hook_post",
    "pre_linear": "mlp.hook_pre_linear", "normalized": "ln1.hook_normalized",
}


def _take_pos(tensor: torch.Tensor, pos: PosSelector, axis: int = 1) -> torch.Tensor:
    if pos is None:
        return tensor
    index = [slice(None)] * tensor.dim()
    index[axis] = pos
    return tensor[tuple(index)]


class ActivationCache(Mapping[str, torch.Tensor]):
    """Dict-like map from hook name to activation. Holds references, not copies.

    Stacked views of the residual stream follow TransformerLens: components are stacked on a new
    leading axis, so a stack has shape [components, batch, pos, d_model] (pos dropped when
    ``pos_slice`` is an int).
    """

    def __init__(self, store: dict[str, torch.Tensor], model: HookedModel,
                 attention_mask: torch.Tensor | None = None):
        self._store = store
        self.model = model
        self.attention_mask = attention_mask  # [batch, pos] when the run was padded, else None

    def resolve_position(self, position: int, batch_index: int = 0) -> int:
        """The position to read for row ``batch_index``. In a padded run, negative positions
        count back from that row's last *real* token (padding excluded), so -1 is the prompt's
        last token; otherwise they are returned unchanged (ordinary negative indexing)."""
        if position >= 0 or self.attention_mask is None:
            return position
        length = int(self.attention_mask[batch_index].sum())
        if length + position < 0:
            raise OutOfRangeError(f"position {position} is before the start of prompt {batch_index} ({length} tokens)")
        return length + position

    # ------------------------------------------------------------ mapping
    def _full_name(self, key) -> str:
        if isinstance(key, tuple):
            short, layer = key
            return f"blocks.{layer}.{_SHORT_NAMES.get(short, short)}"
        return key

    def __getitem__(self, key) -> torch.Tensor:
        name = self._full_name(key)
        if name in self._store:
            return self._store[name]
        self.model.catalogue.get(name)  # raises with close matches if the name is invalid
        raise UnknownHookError(f"{name!r} is a valid hook point but was not cached in this run; pass it in "
                       f"names=... (this cache holds {len(self._store)} activations)")

    def __iter__(self) -> Iterator[str]:
        return iter(self._store)

    def __len__(self) -> int:
        return len(self._store)

    def __repr__(self) -> str:
        return f"ActivationCache({len(self)} activations)"

    def to(self, device: str | torch.device) -> ActivationCache:
        return ActivationCache({k: v.to(device) for k, v in self._store.items()}, self.model, self.attention_mask)

    # ------------------------------------------------------------ residual stream
    def _final_resid(self) -> torch.Tensor:
        return self[f"blocks.{self.model.cfg.n_layers - 1}.hook_resid_post"]

    def accumulated_resid(
        self, layer: int | None = None, incl_mid: bool = False, apply_ln: bool = False,
        pos_slice: PosSelector = None, return_labels: bool = False,
    ):
        """Residual stream before each block up to ``layer`` (exclusive), plus the final
        residual when ``layer`` is None. Shape [components, batch, pos, d_model]."""
        n_layers = self.model.cfg.n_layers
        stop = n_layers if layer is None else layer
        labels, parts = [], []
        for index in range(stop):
            labels.append(f"{index}_pre")
            parts.append(self[f"blocks.{index}.hook_resid_pre"])
            if incl_mid:
                labels.append(f"{index}_mid")
                parts.append(self[f"blocks.{index}.hook_resid_mid"])
        if layer is None or layer >= n_layers:
            labels.append("final_post")
            parts.append(self._final_resid())
        stack = _take_pos(torch.stack(parts), pos_slice, axis=2)
        if apply_ln:
            stack = self.apply_ln_to_stack(stack, layer, pos_slice)
        return (stack, labels) if return_labels else stack

    def decompose_resid(
        self, layer: int | None = None, mode: str = "all", apply_ln: bool = False,
        incl_embeds: bool = True, pos_slice: PosSelector = None, return_labels: bool = False,
    ):
        """The residual stream at the input of ``layer`` (None: the final residual) as the sum of
        its writers: embeddings, then each earlier block's attn_out and/or mlp_out.
        ``mode``: "all", "attn" or "mlp". Shape [components, batch, pos, d_model]."""
        if mode not in ("all", "attn", "mlp"):
            raise MechscopeError(f"mode must be 'all', 'attn' or 'mlp', got {mode!r}")
        stop = self.model.cfg.n_layers if layer is None else layer
        labels, parts = [], []
        if incl_embeds:
            labels.append("embed")
            parts.append(self["hook_embed"])
            if "hook_pos_embed" in self.model.catalogue:
                labels.append("pos_embed")
                parts.append(self["hook_pos_embed"].expand_as(parts[0]))  # [1, pos, d] in GPT-2
        for index in range(stop):
            if mode in ("all", "attn"):
                labels.append(f"{index}_attn_out")
                parts.append(self[f"blocks.{index}.hook_attn_out"])
            if mode in ("all", "mlp"):
                labels.append(f"{index}_mlp_out")
                parts.append(self[f"blocks.{index}.hook_mlp_out"])
        stack = _take_pos(torch.stack(parts), pos_slice, axis=2)
        if apply_ln:
            stack = self.apply_ln_to_stack(stack, layer, pos_slice)
        return (stack, labels) if return_labels else stack

    def stack_head_results(
        self, layer: int | None = None, pos_slice: PosSelector = None, apply_ln: bool = False,
        return_labels: bool = False,
    ):
        """Each head's write into the residual for blocks before ``layer`` (None: all), as
        [layer * head, batch, pos, d_model], labels "L{l}H{h}". Uses ``attn.hook_result`` when
        cached, else computes z @ W_O per layer with one einsum (the o_proj bias is not included).
        Where a norm follows o_proj (Gemma), it is linearised around the whole attention output
        (each head scaled by the norm's weight over the output's RMS), so the heads of a layer
        still add up to ``hook_attn_out``."""
        cfg = self.model.cfg
        stop = cfg.n_layers if layer is None else layer
        parts, labels = [], []
        for index in range(stop):
            result_name = f"blocks.{index}.attn.hook_result"
            if result_name in self._store:
                result = _take_pos(self._store[result_name], pos_slice)
            else:
                z = _take_pos(self[f"blocks.{index}.attn.hook_z"], pos_slice)
                w_o = self.model.W_O(index).to(z.device, z.dtype)
                result = torch.einsum("...hd,hdm->...hm", z, w_o)
            if self.model.adapter.attn_out_is_norm:
                result = self.model.linearise_attn_post_norm(index, result)
            parts.append(result.movedim(-2, 0))
            labels.extend(f"L{index}H{head}" for head in range(cfg.n_heads))
        stack = torch.cat(parts) if parts else torch.empty(0)
        if apply_ln:
            stack = self.apply_ln_to_stack(stack, layer, pos_slice)
        return (stack, labels) if return_labels else stack

    def norm_scale(self, layer: int | None = None, pos_slice: PosSelector = None) -> torch.Tensor:
        """The normalisation denominator of the residual stream [batch, pos, 1] at the final norm
        (layer None) or at ``layer``'s ln1: sqrt(mean(x^2) + eps), x centred first for LayerNorm."""
        cfg = self.model.cfg
        if layer is None or layer >= cfg.n_layers:
            resid = self._final_resid()
        else:
            resid = self[f"blocks.{layer}.hook_resid_pre"]
        resid = _take_pos(resid, pos_slice).float()
        if cfg.norm_type == "layer":
            resid = resid - resid.mean(-1, keepdim=True)
        return (resid.pow(2).mean(-1, keepdim=True) + cfg.norm_eps).sqrt()

    def apply_ln_to_stack(
        self, stack: torch.Tensor, layer: int | None = None, pos_slice: PosSelector = None
    ) -> torch.Tensor:
        """Apply the (linearised) norm to every component of a residual stack: centre each
        component for LayerNorm and divide by the scale of the *whole* residual stream, so the
        components still sum to the normalised residual. The norm's weight and bias are not
        applied; :meth:`logit_attrs` folds them into the unembedding."""
        if self.model.cfg.norm_type == "layer":
            stack = stack - stack.mean(-1, keepdim=True)
        scale = self.norm_scale(layer, pos_slice)
        return (stack / scale).to(stack.dtype)

    def logit_attrs(
        self, stack: torch.Tensor, tokens: int | torch.Tensor, incorrect_tokens: int | torch.Tensor | None = None,
        pos_slice: int = -1,
    ) -> torch.Tensor:
        """Direct logit attribution: each component's contribution to the logit of ``tokens``
        (minus ``incorrect_tokens``; one id, or one per batch row) at position ``pos_slice``.

        ``stack``: [components, batch, d_model], already restricted to that position and not yet
        normalised. Returns [components, batch]. The contributions plus the model's
        ``logit_bias`` add up to the logits before any final soft-capping.
        """
        if stack.dim() != 3:
            raise MechscopeError(f"stack must be [components, batch, d_model] at one position, got {tuple(stack.shape)}")
        directions = self.model.unembed_directions(tokens, incorrect_tokens)  # [1 or batch, d_model], fp32
        normed = self.apply_ln_to_stack(stack.float(), None, pos_slice)
        return (normed * directions.to(normed.device)).sum(-1)
