"""A circuit: a set of edges (or nodes) of a component graph, with the scores that chose them.

Selection (:func:`select_edges`): the ``top_n`` edges by |score|, every edge with |score| >=
``threshold``, or ``greedy``: grown from the logits backwards, always adding the best-scoring
edge into a component already in the circuit, so the circuit stays connected to the output.
:func:`prune` drops edges that no longer lie on a path from the input to the logits.
"""

from __future__ import annotations

import heapq
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, get_args

import torch

from mechscope.circuits.graph import ComponentGraph
from mechscope.errors import MechscopeError
from mechscope.files import atomic_text

Selection = Literal["top_n", "threshold", "greedy"]
SELECTIONS: tuple[str, ...] = get_args(Selection)
Level = Literal["edge", "node"]
LEVELS: tuple[str, ...] = get_args(Level)


@dataclass
class Circuit:
    """``scores`` [n_writers, n_receivers] (NaN where the graph has no edge); ``edges`` the same
    shape, True for edges in the circuit. At node level ``node_scores`` [n_writers] holds each
    component's score, and a component in the circuit keeps all its outgoing edges."""

    graph: ComponentGraph
    scores: torch.Tensor
    edges: torch.Tensor
    level: str = "edge"
    method: str = ""
    node_scores: torch.Tensor | None = None
    info: dict = field(default_factory=dict)

    @property
    def n_edges(self) -> int:
        return int(self.edges.sum())

    def nodes(self) -> list[str]:
        """Components with at least one circuit edge in or out (plus the logits if any)."""
        graph = self.graph
        live = set()
        for writer, receiver in self.edges.nonzero().tolist():
            live.add(graph.writers[writer])
            live.update(graph.receiver_component(receiver) or ["logits"])
        order = {name: i for i, name in enumerate(graph.writers + ("logits",))}
        return sorted(live, key=order.__getitem__)

    def edge_list(self) -> list[dict]:
        """Circuit edges, best |score| first: [{"from", "to", "score"}]."""
        rows = [{"from": self.graph.writers[w], "to": self.graph.receivers[r].name, "score": float(self.scores[w, r])}
                for w, r in self.edges.nonzero().tolist()]
        return sorted(rows, key=lambda row: -abs(row["score"]) if row["score"] == row["score"] else 0.0)

    def to_json(self) -> dict:
        from mechscope.circuits.export import circuit_drawing

        data = {"method": self.method, "level": self.level, "n_edges": self.n_edges,
                "graph_edges": self.graph.n_edges, "nodes": self.nodes(), "edges": self.edge_list(), "info": self.info,
                "graph": {"n_layers": self.graph.n_layers, "n_heads": self.graph.n_heads,
                          "n_kv_heads": self.graph.n_kv_heads, "qkv": self.graph.qkv,
                          "parallel_residual": self.graph.parallel_residual},
                "drawing": circuit_drawing(self)}
        if self.node_scores is not None:
            data["node_scores"] = dict(zip(self.graph.writers, self.node_scores.tolist()))
        return data

    def save(self, path: str | Path) -> Path:
        """Write the circuit as JSON (atomically: a crash never leaves a half-written file)."""
        return atomic_text(path, json.dumps(self.to_json(), indent=1))

    def to_dot(self, labels: Mapping[str, str] | None = None) -> str:
        """Graphviz DOT: one node per component, ranked by layer, edges labelled by score;
        ``labels`` {node: text} (e.g. explanations) are shown under the nodes' names."""
        from mechscope.circuits.export import circuit_dot

        return circuit_dot(self, labels)

    def to_html(self, path: str | Path | None = None, labels: Mapping[str, str] | None = None) -> str:
        """A standalone interactive HTML view (no network needed); written to ``path`` if given;
        ``labels`` {node: text} are shown when a node is hovered or clicked."""
        from mechscope.circuits.export import circuit_html

        html = circuit_html(self, labels)
        if path is not None:
            atomic_text(path, html)
        return html


def node_scores_from_edges(graph: ComponentGraph, scores: torch.Tensor) -> torch.Tensor:
    """[n_writers] a component's score: the sum of its outgoing edges' scores (to first order,
    ablating a component ablates all its outgoing edges)."""
    return torch.nan_to_num(scores).sum(1)


def node_edges(graph: ComponentGraph, nodes: torch.Tensor) -> torch.Tensor:
    """Edge mask [W, R] of a node-level circuit ``nodes`` [W] bool: every edge out of a kept
    component (the input is always kept, as in node-level patching)."""
    keep = nodes.clone().bool()
    keep[0] = True
    return keep[:, None] & graph.adjacency()


def select_nodes(graph: ComponentGraph, node_scores: torch.Tensor, n: int | None = None,
                 threshold: float | None = None) -> torch.Tensor:
    """Edge mask [W, R] of the node-level circuit of the ``n`` components with the largest
    |score| (``node_scores`` [W]), or of every component with |score| >= ``threshold``; the input
    is always kept on top."""
    magnitude = node_scores.abs().clone()
    magnitude[0] = float("inf")
    if threshold is not None and n is None:
        keep = magnitude >= threshold
    else:
        if n is None:
            raise MechscopeError("select_nodes needs n=... (components) or threshold=...")
        keep = torch.zeros(graph.n_writers, dtype=torch.bool)
        keep[magnitude.topk(min(graph.n_writers, n + 1)).indices] = True
    return node_edges(graph, keep)


def select_edges(graph: ComponentGraph, scores: torch.Tensor, selection: str = "top_n", n: int | None = None,
                 threshold: float | None = None) -> torch.Tensor:
    """Edge mask [W, R] chosen from ``scores`` [W, R] by |score| (see the module docstring)."""
    if selection not in SELECTIONS:
        raise MechscopeError(f"selection must be one of {SELECTIONS}, got {selection!r}")
    magnitude = torch.nan_to_num(scores.abs(), nan=-1.0)
    magnitude[~graph.adjacency()] = -1.0
    if selection == "threshold":
        if threshold is None:
            raise MechscopeError("selection='threshold' needs threshold=...")
        return magnitude >= threshold
    if n is None:
        raise MechscopeError(f"selection={selection!r} needs n=... (the number of edges)")
    n = max(0, min(int(n), graph.n_edges))
    if selection == "top_n":
        mask = torch.zeros(magnitude.numel(), dtype=torch.bool)
        mask[magnitude.flatten().topk(n).indices] = True
        return mask.view_as(magnitude) & graph.adjacency()
    return _greedy(graph, magnitude, n)


def _components(graph: ComponentGraph) -> list[list[int]]:
    """receiver index -> writer indices of the component(s) it feeds (empty for the logits)."""
    return [[graph.writer_index(name) for name in graph.receiver_component(r)] for r in range(graph.n_receivers)]


def _readers_of(graph: ComponentGraph) -> dict[int, list[int]]:
    """writer index -> receiver indices that feed that writer's component."""
    readers: dict[int, list[int]] = {}
    for receiver, writers in enumerate(_components(graph)):
        for writer in writers:
            readers.setdefault(writer, []).append(receiver)
    return readers


def _greedy(graph: ComponentGraph, magnitude: torch.Tensor, n: int) -> torch.Tensor:
    readers = _readers_of(graph)
    mask = torch.zeros_like(magnitude, dtype=torch.bool)
    heap: list[tuple[float, int, int]] = []
    active_receivers: set[int] = set()
    active_writers: set[int] = set()

    def activate(receiver: int) -> None:
        if receiver in active_receivers:
            return
        active_receivers.add(receiver)
        column = magnitude[:, receiver]
        for writer in range(graph.receivers[receiver].n_upstream):
            heapq.heappush(heap, (-float(column[writer]), writer, receiver))

    activate(graph.n_receivers - 1)
    while heap and int(mask.sum()) < n:
        _, writer, receiver = heapq.heappop(heap)
        if mask[writer, receiver]:
            continue
        mask[writer, receiver] = True
        if writer not in active_writers:
            active_writers.add(writer)
            for reader in readers.get(writer, []):
                activate(reader)
    return mask


def prune(graph: ComponentGraph, edges: torch.Tensor) -> torch.Tensor:
    """Drop edges not on an input -> logits path: a writer counts only if the input reaches it
    through circuit edges, a receiver only if its component reaches the logits."""
    edges = edges.clone().bool()
    readers, components = _readers_of(graph), _components(graph)
    logits = graph.n_receivers - 1
    while True:
        reached = torch.zeros(graph.n_writers, dtype=torch.bool)
        reached[0] = True
        for writer in range(1, graph.n_writers):  # writers are in forward order
            reached[writer] = any(edges[:, r][reached].any() for r in readers.get(writer, []))
        useful = torch.zeros(graph.n_writers, dtype=torch.bool)
        for writer in reversed(range(graph.n_writers)):
            targets = edges[writer].nonzero().flatten().tolist()
            useful[writer] = any(r == logits or any(useful[c] for c in components[r]) for r in targets)
        kept = edges & reached[:, None] & useful[:, None]
        # A receiver whose component is not useful feeds nothing that reaches the logits.
        for receiver in range(logits):
            if not any(useful[c] for c in components[receiver]):
                kept[:, receiver] = False
        if torch.equal(kept, edges):
            return kept
        edges = kept
