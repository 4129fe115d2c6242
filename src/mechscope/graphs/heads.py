"""Which attention heads carry an edge of an attribution graph.

In the replacement model attention is frozen, so a source reaches a target at another position
only through heads' OV circuits (and at its own position also straight along the residual
stream). The part of an edge that head (layer, h) carries is the edge minus the edge with that
head's output held constant (``blocks.L.attn.hook_z`` detached for that head): everything that
flows through the head, on any path. One batched backward pass per chunk of heads gives every
incoming edge of a target at once, each batch row cutting a different head.

When source and target are one attention layer apart (a feature at layer l into a feature at
layer l + 1), every path goes through exactly one head of layer l + 1, so the heads' parts of an
edge between two positions add up to the edge (tested); on longer paths a signal that passes
two heads counts for both.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mechscope.errors import ConfigError, OutOfRangeError
from mechscope.graphs.attribution import AttributionGraph, Node, SourceLeaves
from mechscope.graphs.replacement import ReplacementModel
from mechscope.hooks import names
from mechscope.validate import check_int


@dataclass(frozen=True)
class HeadAttribution:
    """``carried`` [n_layers, n_heads, n_sources]: the part of each incoming edge of the graph's
    target ``target`` (an index into ``graph.targets``) that passes through each head; ``edges``
    [n_sources] the edges themselves (the graph's row)."""

    target: int
    carried: torch.Tensor
    edges: torch.Tensor

    def top_heads(self, source: int, count: int = 5) -> list[tuple[int, int, float]]:
        """(layer, head, carried) of the heads carrying most of the edge from ``source`` (an
        index into ``graph.sources``), largest |carried| first; heads carrying nothing left out."""
        check_int("source", source, 0, self.carried.shape[2] - 1)
        check_int("count", count, 1)
        column = self.carried[:, :, source]
        order = column.flatten().abs().argsort(descending=True)[:count]
        found = []
        for flat in order.tolist():
            layer, head = divmod(flat, column.shape[1])
            if float(column[layer, head]) != 0:
                found.append((layer, head, float(column[layer, head])))
        return found


def _cut_heads(rows: list[tuple[int, int]]) -> list[tuple[str, object]]:
    """Hooks holding head (layer, h) of batch row i constant (``rows[i]``); row i of hook_z is
    [pos, head, d_head]."""
    by_layer: dict[int, list[tuple[int, int]]] = {}
    for row, (layer, head) in enumerate(rows):
        by_layer.setdefault(layer, []).append((row, head))

    def cut(activation: torch.Tensor, hook, cuts: list[tuple[int, int]]) -> torch.Tensor:
        mask = torch.ones(activation.shape[0], 1, activation.shape[2], 1, dtype=activation.dtype,
                          device=activation.device)
        for row, head in cuts:
            mask[row, 0, head, 0] = 0
        # Same value, but no gradient flows through the cut heads' rows.
        return activation * mask + activation.detach() * (1 - mask)

    return [(names.attn(layer, "z"), lambda a, h, cuts=cuts: cut(a, h, cuts)) for layer, cuts in by_layer.items()]


def head_attribution(replacement: ReplacementModel, graph: AttributionGraph, target: int | Node,
                     batch_size: int = 32) -> HeadAttribution:
    """How much of each edge into ``target`` (an index into ``graph.targets`` or the node) each
    attention head carries (see the module docstring). Costs n_layers x n_heads / batch_size
    batched backward passes of the prompt."""
    check_int("batch_size", batch_size, 1)
    if isinstance(target, Node):
        if target not in graph.targets:
            raise ConfigError(f"{target.label} is not a target of this graph")
        target = graph.targets.index(target)
    if isinstance(target, bool) or not isinstance(target, int) or not 0 <= target < len(graph.targets):
        raise OutOfRangeError(f"target must be an index into the graph's {len(graph.targets)} targets or one of its "
                              f"nodes; got {target!r}")
    cfg = replacement.model.cfg
    prompt = replacement.freeze(graph.tokens)
    features = [(node.layer, node.position, node.feature) for node in graph.sources[:graph.n_features]]
    sources = SourceLeaves.of(replacement, prompt, features)
    node = graph.targets[target]
    full, _ = sources.edges(replacement, prompt, [node], graph.directions)
    heads = [(layer, head) for layer in range(cfg.n_layers) for head in range(cfg.n_heads)]
    carried = torch.zeros(len(heads), len(graph.sources))
    for start in range(0, len(heads), batch_size):
        rows = heads[start:start + batch_size]
        without, _ = sources.edges(replacement, prompt, [node] * len(rows), graph.directions, _cut_heads(rows))
        carried[start:start + len(rows)] = full - without
    return HeadAttribution(target, carried.reshape(cfg.n_layers, cfg.n_heads, -1), full[0])


__all__ = ["HeadAttribution", "head_attribution"]
