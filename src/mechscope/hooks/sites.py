"""Sites: where a canonical activation is read from and written back into a HF module call.

A site names one module and whether the activation is that module's first input or first output,
and converts between the module's native tensor and the canonical TransformerLens layout.
Reads are views (no copies); a write rebuilds the native tensor only when a hook changed it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

Phase = Literal["input", "output"]


@dataclass(frozen=True)
class Site:
    """The whole first input or output of ``module``, unchanged in layout.

    ``order`` sorts several sites attached to the same module and phase (lower runs first).
    """

    module: str
    phase: Phase
    order: int = 0

    def read(self, native: torch.Tensor, inputs: tuple) -> torch.Tensor:
        return native

    def write(self, native: torch.Tensor, value: torch.Tensor, inputs: tuple) -> torch.Tensor:
        return value


@dataclass(frozen=True)
class SplitHeadsSite(Site):
    """[batch, pos, heads * d_head] natively, [batch, pos, heads, d_head] canonically."""

    n_heads: int = 0
    d_head: int = 0

    def read(self, native: torch.Tensor, inputs: tuple) -> torch.Tensor:
        return native.unflatten(-1, (self.n_heads, self.d_head))

    def write(self, native: torch.Tensor, value: torch.Tensor, inputs: tuple) -> torch.Tensor:
        return value.flatten(-2)


@dataclass(frozen=True)
class FusedQkvSite(Site):
    """One of q, k, v inside a fused projection output.

    ``layout="concat"`` (GPT-2): [q | k | v] along the last dim, each heads * d_head wide.
    ``layout="per_head"`` (GPT-NeoX): viewed as [heads, 3 * d_head], each head holds [q | k | v].
    """

    part: int = 0  # 0 = q, 1 = k, 2 = v
    layout: str = "concat"
    n_heads: int = 0
    d_head: int = 0

    def _pieces(self, native: torch.Tensor) -> list[torch.Tensor]:
        if self.layout == "concat":
            width = self.n_heads * self.d_head
            return [p.unflatten(-1, (self.n_heads, self.d_head)) for p in native.split(width, dim=-1)]
        per_head = native.unflatten(-1, (self.n_heads, 3 * self.d_head))
        return list(per_head.split(self.d_head, dim=-1))

    def read(self, native: torch.Tensor, inputs: tuple) -> torch.Tensor:
        return self._pieces(native)[self.part]

    def write(self, native: torch.Tensor, value: torch.Tensor, inputs: tuple) -> torch.Tensor:
        pieces = self._pieces(native)
        pieces[self.part] = value
        if self.layout == "concat":
            return torch.cat([p.flatten(-2) for p in pieces], dim=-1)
        return torch.cat(pieces, dim=-1).flatten(-2)


@dataclass(frozen=True)
class HeadResultSite(Site):
    """Each head's write into the residual stream, from the output projection's input z.

    result[b, p, h, :] = z[b, p, h, :] @ W_O[h], computed with one einsum into
    [batch, pos, heads, d_model]; no [b, p, h, d_head, d_model] intermediate exists.
    ``weight_layout`` is "out_in" for nn.Linear ([d_model, heads * d_head]) and "in_out" for
    GPT-2's Conv1D ([heads * d_head, d_model]). A write replaces the projection output with
    sum_h result[..., h, :] + bias.
    """

    weight: torch.nn.Parameter | None = None
    bias: torch.nn.Parameter | None = None
    weight_layout: str = "out_in"
    n_heads: int = 0
    d_head: int = 0

    def read(self, native: torch.Tensor, inputs: tuple) -> torch.Tensor:
        z = inputs[0].unflatten(-1, (self.n_heads, self.d_head))
        if self.weight_layout == "out_in":
            w_o = self.weight.unflatten(1, (self.n_heads, self.d_head))  # [d_model, h, d_head]
            return torch.einsum("bphd,mhd->bphm", z, w_o)
        w_o = self.weight.unflatten(0, (self.n_heads, self.d_head))  # [h, d_head, d_model]
        return torch.einsum("bphd,hdm->bphm", z, w_o)

    def write(self, native: torch.Tensor, value: torch.Tensor, inputs: tuple) -> torch.Tensor:
        total = value.sum(dim=-2)
        return total if self.bias is None else total + self.bias


@dataclass(frozen=True)
class ResidMidSite(Site):
    """resid_mid, read at the input of the norm before the MLP.

    Writing that input alone would only change the MLP branch (that is hook_mlp_in). A write to
    resid_mid must also change the residual that skips the MLP, so the difference is carried to
    the layer's output (``layer_module``) by the hook session.
    """

    layer_module: str = ""


@dataclass(frozen=True)
class AttentionInternalSite(Site):
    """Attention scores or pattern, produced inside mechscope's capture attention function for
    this layer only (``module`` is the attention module); ``kind`` is "scores" or "pattern"."""

    kind: str = "pattern"
    layer: int = 0
