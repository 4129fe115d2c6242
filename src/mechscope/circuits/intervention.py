"""Edge interventions on the real HF model: every receiver's input rebuilt from its writers.

In the residual stream a receiver reads the sum of all upstream writers' outputs. To run a
circuit, each receiver r instead reads

    x_r = sum_w  m[w, r] * current_w + (1 - m[w, r]) * reference_w
        = resid_r - sum_w (1 - m[w, r]) * (current_w - reference_w)

where ``current_w`` is what writer w outputs in this (intervened) run, ``reference_w`` what it
outputs in the reference (corrupted run, mean, or zero) and ``resid_r`` the residual stream at
r's read point (which is exactly the sum of the current writers, plus constant biases). Heads'
q / k / v inputs differ per head, so they are recomputed per head through the layer's own ln1
and projection weights and written into ``hook_q`` / ``hook_k`` / ``hook_v``; rotary, q/k norms
and the attention itself stay HF's. The MLP input is written at ``hook_mlp_in`` and the logits'
input at the last ``hook_resid_post``.

Heads' writes are ``attn.hook_result``; where a norm follows o_proj (Gemma), each head's write
is its share of the normalised output in that same run (the norm linearised at the run's own
sum), so the writers of a run add up to the residual stream exactly.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from mechscope.circuits.graph import ComponentGraph
from mechscope.errors import MechscopeError
from mechscope.hooks.names import attn, mlp_in, mlp_out, normalized, resid_post, resid_pre
from mechscope.hooks.points import HookPoint
from mechscope.models.hooked_model import HookedModel
from mechscope.models.weights import input_projection


@dataclass
class EdgeSpec:
    """What one forward does; rows = slots x prompts (slot s runs rows [s*n, (s+1)*n)).

    ``masks`` [slots, n_writers, n_receivers]: 1 = the edge carries the current run's value,
    0 = the reference's (fractions interpolate). ``writer_weights`` [slots, n_writers] (or [n_writers]
    for every slot) is the same with one weight per writer for every receiver (cheaper, and
    differentiable: used by EAP-IG, one interpolation step per slot).
    ``reference`` [n_writers, n or 1, pos, d_model] is required with either. ``probes``: one
    [rows, pos, d_model] tensor per receiver, added to its input (the probe's gradient is
    d metric / d receiver input; separate leaves, because indexing one big tensor would make
    autograd allocate its full size for every index). ``record``: keep every writer's output (see :attr:`EdgeRun.writers`).
    """

    masks: torch.Tensor | None = None
    writer_weights: torch.Tensor | None = None
    reference: torch.Tensor | None = None
    probes: Sequence[torch.Tensor] | None = None
    record: bool = False


class EdgeRun:
    """Hooks for one forward pass under an :class:`EdgeSpec` (build one per forward)."""

    def __init__(self, model: HookedModel, graph: ComponentGraph, spec: EdgeSpec, n_prompts: int):
        if spec.masks is not None and spec.writer_weights is not None:
            raise MechscopeError("give masks or writer_weights, not both")
        if (spec.masks is not None or spec.writer_weights is not None) and spec.reference is None:
            raise MechscopeError("edge masks need reference writer outputs (corrupted, mean or zero)")
        self.model, self.graph, self.spec, self.n = model, graph, spec, n_prompts
        # Per-head rebuilding of q / k / v is needed when receivers of one layer read different
        # inputs (masks) or carry their own probes. With writer_weights every receiver of a
        # group reads the same input, so the attention input is written once, after ln1.
        self.rebuild = spec.masks is not None or spec.probes is not None
        self.shared = spec.writer_weights is not None and not self.rebuild
        self.attention_inputs: dict[int, torch.Tensor] = {}  # layer -> ln1's input [rows, pos, d_model]
        self.writers: list[torch.Tensor | None] = [None] * graph.n_writers
        self._diffs: torch.Tensor | None = None  # [n_writers, rows, pos, d_model] (masks mode)
        # writer_weights mode: the weighted diff sum after the first k writers, keyed by k (a
        # receiver reading writers 0..k-1 needs the sum at k; parallel MLPs read an earlier one).
        self._running: dict[int, torch.Tensor | float] = {0: 0.0}
        self._attn_inputs: dict[int, torch.Tensor] = {}

    # ------------------------------------------------------------------ bookkeeping
    def _slots(self, rows: int) -> int:
        return rows // self.n

    def _add_writers(self, first: int, values: torch.Tensor) -> None:
        """values [count, rows, pos, d_model] are writers first, first+1, ..."""
        if self.spec.record:
            for offset, value in enumerate(values):
                self.writers[first + offset] = value if torch.is_grad_enabled() else value.detach()
        if self.spec.masks is None and self.spec.writer_weights is None:
            return
        if self.spec.writer_weights is not None:
            weights = self.spec.writer_weights
            weights = 1 - (weights if weights.dim() == 2 else weights[None]).to(values.dtype)[:, first:first + len(values)]
            running = self._running[first]
            if bool((weights != 0).any()):  # writers at weight 1 change nothing (EAP-IG on inputs: all but one)
                reference = self.spec.reference[first:first + len(values)].unsqueeze(1)  # [w, 1, n or 1, pos, d]
                slots = self._slots(values.shape[1])
                diffs = values.unflatten(1, (slots, self.n)) - reference
                weights = weights.expand(slots, -1)
                running = running + torch.einsum("sw,wsnpd->snpd", weights, diffs).flatten(0, 1)
            self._running[first + len(values)] = running
            return
        rows = values.shape[1]
        reference = self.spec.reference[first:first + len(values)]
        slots = self._slots(rows)
        diffs = (values.unflatten(1, (slots, self.n)) - reference.unsqueeze(1)).flatten(1, 2)
        if self._diffs is None:
            self._diffs = diffs.new_zeros((self.graph.n_writers, *diffs.shape[1:]))
        self._diffs[first:first + len(values)] = diffs

    def _corrections(self, receivers: list[int]) -> torch.Tensor | float:
        """sum_w (1 - m[w, r]) * diff_w for each receiver: [len(receivers), rows, pos, d_model]."""
        upstream = self.graph.receivers[receivers[0]].n_upstream
        if self.spec.writer_weights is not None:
            return self._running[upstream]
        if self.spec.masks is None or self._diffs is None:
            return 0.0
        slots = self._slots(self._diffs.shape[1])
        inverse = (1 - self.spec.masks[:, :upstream, receivers]).to(self._diffs.dtype)  # [S, W, R]
        diffs = self._diffs[:upstream].unflatten(1, (slots, self.n))  # [W, S, n, pos, d]
        return torch.einsum("swr,wsnpd->rsnpd", inverse, diffs).flatten(1, 2)

    def _receiver_inputs(self, resid: torch.Tensor, receivers: list[int]) -> torch.Tensor:
        """[len(receivers), rows, pos, d_model] inputs of ``receivers`` given the residual."""
        inputs = (resid.unsqueeze(0) - self._corrections(receivers)).expand(len(receivers), *resid.shape)
        if self.spec.probes is not None:
            inputs = inputs + torch.stack([self.spec.probes[r] for r in receivers])
        return inputs

    # ------------------------------------------------------------------ hooks
    def hooks(self) -> list[tuple[str, object]]:
        cfg = self.model.cfg
        hooks: list[tuple[str, object]] = [(resid_pre(0), self._read_input)]
        for layer in range(cfg.n_layers):
            hooks.append((resid_pre(layer), self._read_resid))
            if self.rebuild:
                hooks.extend((attn(layer, part), functools.partial(self._write_qkv, part=part))
                             for part in ("q", "k", "v"))
            if self.shared:
                hooks.append((normalized(layer, 1), self._write_attention_in))
            if self.rebuild or self.shared:
                hooks.append((mlp_in(layer), self._write_mlp_in))
            hooks.append((attn(layer, "result"), self._read_heads))
            hooks.append((mlp_out(layer), self._read_mlp))
        if self.rebuild or self.shared:
            hooks.append((resid_post(cfg.n_layers - 1), self._write_logits_in))
        return hooks

    def _read_input(self, activation: torch.Tensor, hook: HookPoint) -> None:
        self._add_writers(0, activation.unsqueeze(0))

    def _read_resid(self, activation: torch.Tensor, hook: HookPoint) -> None:
        layer = hook.layer()
        receivers = [i for i, r in enumerate(self.graph.receivers) if r.layer == layer and r.feeds[0][0] in "qkv"]
        if self.rebuild:
            self._attn_inputs = dict(zip(receivers, self._receiver_inputs(activation, receivers)))
        else:  # one input for the whole layer's attention
            self.attention_inputs[layer] = self._receiver_inputs(activation, receivers[:1])[0]

    def _write_attention_in(self, activation: torch.Tensor, hook: HookPoint) -> torch.Tensor:
        return self._ln1(hook.layer())(self.attention_inputs[hook.layer()]).to(activation.dtype)

    def _ln1(self, layer: int):
        """ln1's forward without its module hooks (which would re-enter the hook on its output)."""
        return self.model.hf_model.get_submodule(self.model.adapter.path(layer, "ln1")).forward

    def _write_qkv(self, activation: torch.Tensor, hook: HookPoint, part: str) -> torch.Tensor:
        layer = hook.layer()
        feeding = self.graph.feed_map(layer, part, activation.shape[2])
        inputs = torch.stack([self._attn_inputs[r] for r in feeding], dim=2)  # [rows, pos, heads, d_model]
        weight, bias = input_projection(self.model, layer, part)
        projected = torch.einsum("bphd,hed->bphe", self._ln1(layer)(inputs), weight)
        return (projected if bias is None else projected + bias).to(activation.dtype)

    def _read_heads(self, activation: torch.Tensor, hook: HookPoint) -> None:
        layer = hook.layer()
        result = activation
        if self.model.adapter.attn_out_is_norm:
            result = self.model.linearise_attn_post_norm(layer, result)
        start, _ = self.graph.writer_range(layer)
        self._add_writers(start, result.movedim(2, 0))

    def _write_mlp_in(self, activation: torch.Tensor, hook: HookPoint) -> torch.Tensor:
        receiver = self.graph.receiver_index(f"MLP{hook.layer()}")
        return self._receiver_inputs(activation, [receiver])[0].to(activation.dtype)

    def _read_mlp(self, activation: torch.Tensor, hook: HookPoint) -> None:
        _, stop = self.graph.writer_range(hook.layer())
        self._add_writers(stop, activation.unsqueeze(0))

    def _write_logits_in(self, activation: torch.Tensor, hook: HookPoint) -> torch.Tensor:
        return self._receiver_inputs(activation, [self.graph.n_receivers - 1])[0].to(activation.dtype)


def run_edges(model: HookedModel, graph: ComponentGraph, tokens: torch.Tensor, spec: EdgeSpec,
              n_prompts: int | None = None, logits_to_keep: int = 0) -> tuple[torch.Tensor, EdgeRun]:
    """One forward of ``tokens`` [rows, pos] under ``spec``; returns (logits, the run, whose
    ``writers`` hold each writer's output [rows, pos, d_model] when ``spec.record``). Autograd
    follows the caller's grad mode."""
    run = EdgeRun(model, graph, spec, n_prompts or tokens.shape[0])
    with model.hooks(run.hooks()):
        logits = model.forward(tokens, logits_to_keep=logits_to_keep)
    return logits, run


def writer_outputs(model: HookedModel, graph: ComponentGraph, tokens: torch.Tensor,
                   logits_to_keep: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, every writer's output [n_writers, n, pos, d_model]) of a plain forward."""
    with torch.no_grad():
        logits, run = run_edges(model, graph, tokens, EdgeSpec(record=True), logits_to_keep=logits_to_keep)
    return logits, torch.stack(run.writers)
