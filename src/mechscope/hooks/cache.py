"""ActivationCache: activations of one run, by hook name, with residual-stream decompositions."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, Protocol

import torch

from mechscope.hooks import names
from mechscope.hooks.errors import OutOfRangeError, UnknownHookError
from mechscope.hooks.points import HookCatalogue

PosSelector = int | slice | torch.Tensor | None


def take_positions(tensor: torch.Tensor, pos: PosSelector, axis: int = 1) -> torch.Tensor:
    """``tensor`` indexed by ``pos`` along ``axis`` (unchanged for None)."""
    if pos is None:
        return tensor
    index = [slice(None)] * tensor.dim()
    index[axis] = pos
    return tensor[tuple(index)]


class CacheModel(Protocol):
    """What a cache needs of its model: the hook catalogue (to explain a missing name) and a
    ``readout`` that does the model's own maths (``mechscope.models.readout.ResidualReadout``)."""

    catalogue: HookCatalogue
    readout: Any


class ActivationCache(Mapping[str, torch.Tensor]):
    """Dict-like map from hook name to activation. Holds references, not copies.

    Stacked views of the residual stream follow TransformerLens: components are stacked on a new
    leading axis, so a stack has shape [components, batch, pos, d_model] (pos dropped when
    ``pos_slice`` is an int). They need the model's weights and are computed by
    ``model.readout``; the methods here keep TransformerLens' signatures.
    """

    def __init__(self, store: dict[str, torch.Tensor], model: CacheModel,
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

    def rows_positions(self, position: PosSelector) -> torch.Tensor | None:
        """[batch] each row's own index for a negative int ``position`` in a padded run (counted
        back from that row's last real token), else None (the position applies to every row)."""
        if not isinstance(position, int) or position >= 0 or self.attention_mask is None:
            return None
        indices = self.attention_mask.long().sum(-1).cpu() + position
        if bool((indices < 0).any()):
            row = int((indices < 0).nonzero()[0])
            raise OutOfRangeError(f"position {position} is before the start of prompt {row}")
        return indices

    def take(self, tensor: torch.Tensor, position: PosSelector, axis: int = 1) -> torch.Tensor:
        """``tensor`` at ``position`` along ``axis`` (the batch axis is ``axis - 1``); in a padded
        run a negative int position is each row's own (see :meth:`rows_positions`)."""
        rows = self.rows_positions(position)
        if rows is None:
            return take_positions(tensor, position, axis)
        moved = tensor.movedim((axis - 1, axis), (0, 1))  # [batch, pos, ...]
        picked = moved[torch.arange(len(rows)), rows.to(tensor.device)]  # [batch, ...]
        return picked.movedim(0, axis - 1)

    # ------------------------------------------------------------ mapping
    @staticmethod
    def _full_name(key) -> str:
        if isinstance(key, tuple):
            kind, layer = key
            return names.short(kind, layer)
        return key

    def __getitem__(self, key) -> torch.Tensor:
        name = self._full_name(key)
        if name in self._store:
            return self._store[name]
        self.model.catalogue.get(name)  # raises with close matches if the name is invalid
        raise UnknownHookError(f"{name!r} is a valid hook point but was not cached in this run; pass it in "
                               f"names=... (this cache holds {len(self._store)} activations)")

    def __contains__(self, key) -> bool:
        return self._full_name(key) in self._store

    def __iter__(self) -> Iterator[str]:
        return iter(self._store)

    def __len__(self) -> int:
        return len(self._store)

    def __repr__(self) -> str:
        return f"ActivationCache({len(self)} activations)"

    def to(self, device: str | torch.device) -> ActivationCache:
        return ActivationCache({k: v.to(device) for k, v in self._store.items()}, self.model, self.attention_mask)

    # ------------------------------------------------------------ residual stream (delegates)
    def accumulated_resid(
        self, layer: int | None = None, incl_mid: bool = False, apply_ln: bool = False,
        pos_slice: PosSelector = None, return_labels: bool = False,
    ):
        """Residual stream before each block up to ``layer`` (exclusive), plus the final
        residual when ``layer`` is None. Shape [components, batch, pos, d_model]."""
        return self.model.readout.accumulated_resid(self, layer, incl_mid, apply_ln, pos_slice, return_labels)

    def decompose_resid(
        self, layer: int | None = None, mode: str = "all", apply_ln: bool = False,
        incl_embeds: bool = True, pos_slice: PosSelector = None, return_labels: bool = False,
    ):
        """The residual stream at the input of ``layer`` (None: the final residual) as the sum of
        its writers: embeddings, then each earlier block's attn_out and/or mlp_out.
        ``mode``: "all", "attn" or "mlp". Shape [components, batch, pos, d_model]."""
        return self.model.readout.decompose_resid(self, layer, mode, apply_ln, incl_embeds, pos_slice,
                                                  return_labels)

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
        return self.model.readout.stack_head_results(self, layer, pos_slice, apply_ln, return_labels)

    def norm_scale(self, layer: int | None = None, pos_slice: PosSelector = None) -> torch.Tensor:
        """The normalisation denominator of the residual stream [batch, pos, 1] at the final norm
        (layer None) or at ``layer``'s ln1: sqrt(mean(x^2) + eps), x centred first for LayerNorm."""
        return self.model.readout.norm_scale(self, layer, pos_slice)

    def apply_ln_to_stack(
        self, stack: torch.Tensor, layer: int | None = None, pos_slice: PosSelector = None
    ) -> torch.Tensor:
        """Apply the (linearised) norm to every component of a residual stack: centre each
        component for LayerNorm and divide by the scale of the *whole* residual stream, so the
        components still sum to the normalised residual. The norm's weight and bias are not
        applied; :meth:`logit_attrs` folds them into the unembedding."""
        return self.model.readout.apply_ln_to_stack(self, stack, layer, pos_slice)

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
        return self.model.readout.logit_attrs(self, stack, tokens, incorrect_tokens, pos_slice)
