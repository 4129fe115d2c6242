"""Influence, pruning and the two scores of an attribution graph.

Every node (features, error nodes, embeddings, logits) in one square matrix ``M`` [n, n], row =
target, column = source. Normalising each row by its total |weight| gives the share of a node's
direct input that each source provides; following those shares back from the logits (each
weighted by its probability) gives every node's *influence* on the output: its share summed over
all paths. Influence is conserved on the way down, so the influence reaching the graph's inputs
(errors and embeddings) adds up to the logits' total weight.

- **Pruning** keeps the most influential features until they hold ``node_share`` of the
  features' influence, then the most influential edges among the kept nodes until they hold
  ``edge_share`` of the edges' influence (errors, embeddings and logits are always kept).
- **Replacement score**: the share of the logits' influence that reaches the embeddings rather
  than the error nodes (1: the transcoders explain everything; 0: only errors).
- **Completeness score**: per node, the share of its direct input that comes from non-error
  nodes, averaged over nodes weighted by their influence (logits by their probability).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from mechscope.graphs.attribution import AttributionGraph, Node
from mechscope.validate import check_choice, check_number

PruneRule = Literal["shares", "circuit-tracer"]


def node_list(graph: AttributionGraph) -> list[Node]:
    """Every node once: features, error nodes, embeddings, then logits."""
    return graph.sources + graph.targets[graph.n_features:]


def square(graph: AttributionGraph) -> torch.Tensor:
    """[n, n] every edge, row = target, column = source, in :func:`node_list`'s order."""
    n_sources, n_features = len(graph.sources), graph.n_features
    n = n_sources + len(graph.targets) - n_features
    matrix = torch.zeros(n, n)
    matrix[:n_features, :n_sources] = graph.adjacency[:n_features]
    matrix[n_sources:, :n_sources] = graph.adjacency[n_features:]
    return matrix


def normalised(matrix: torch.Tensor) -> torch.Tensor:
    """|matrix| with each row divided by its total (rows without inputs stay zero)."""
    magnitude = matrix.abs()
    totals = magnitude.sum(1, keepdim=True)
    return torch.where(totals > 0, magnitude / totals.clamp_min(1e-30), torch.zeros_like(magnitude))


def logit_weights(graph: AttributionGraph) -> torch.Tensor:
    """[n] the logits' probabilities at their places in :func:`node_list`, zero elsewhere."""
    weights = torch.zeros(len(graph.sources) + len(graph.targets) - graph.n_features)
    weights[len(graph.sources):] = graph.logit_probabilities.float()
    return weights


def influence(graph: AttributionGraph, shares: torch.Tensor | None = None) -> torch.Tensor:
    """[n] each node's influence on the logits: the logit weights followed back along the
    normalised edges (``shares``, default all of them), summed over path lengths."""
    shares = normalised(square(graph)) if shares is None else shares
    return _influence_with(logit_weights(graph), shares)


def _influence_with(weights: torch.Tensor, shares: torch.Tensor) -> torch.Tensor:
    flow, total = weights.clone(), torch.zeros_like(weights)
    for _ in range(shares.shape[0] + 1):  # no path is longer than the number of nodes (no cycles)
        flow = flow @ shares
        if not bool(flow.any()):
            break
        total = total + flow
    return total


@dataclass
class PrunedGraph:
    """``keep_nodes`` [n] and ``keep_edges`` [n, n] masks over :func:`node_list` / :func:`square`,
    with the scores of the whole graph and of what was kept."""

    nodes: list[Node]
    matrix: torch.Tensor
    influence: torch.Tensor
    keep_nodes: torch.Tensor
    keep_edges: torch.Tensor
    replacement_score: float
    completeness_score: float
    pruned_replacement_score: float
    pruned_completeness_score: float


def _kinds(nodes: list[Node], *kinds: str) -> torch.Tensor:
    return torch.tensor([node.kind in kinds for node in nodes])


def scores(nodes: list[Node], shares: torch.Tensor, node_influence: torch.Tensor,
           weights: torch.Tensor) -> tuple[float, float]:
    """(replacement score, completeness score) of a graph given its normalised edges."""
    errors, embeddings = _kinds(nodes, "error"), _kinds(nodes, "embedding")
    reached = float(node_influence[errors].sum() + node_influence[embeddings].sum())
    replacement = float(node_influence[embeddings].sum()) / reached if reached > 0 else 0.0
    has_input = shares.sum(1) > 0
    clean_share = shares[:, ~errors].sum(1)  # per node: the share of its input from non-error nodes
    weight = (node_influence + weights) * has_input
    completeness = float((clean_share * weight).sum() / weight.sum()) if float(weight.sum()) > 0 else 0.0
    return replacement, completeness


def _count(cumulative: torch.Tensor, share: float, total: float) -> int:
    """How many of the largest values (``cumulative``: their running sum, largest first) it takes
    to hold ``share`` of ``total``; a share of 1 takes every value above zero (rounding in the
    running sum must not drop the smallest ones)."""
    positive = int((torch.diff(cumulative, prepend=cumulative.new_zeros(1)) > 0).sum())
    if share >= 1.0:
        return positive
    if share <= 0.0:
        return 0
    return min(int((cumulative < share * total).sum()) + 1, positive)


def _threshold(values: torch.Tensor, share: float) -> float:
    """The smallest value kept when the largest ``values`` are kept until they hold ``share`` of
    their total (the first value whose running share reaches ``share``)."""
    ordered = values.flatten().sort(descending=True).values
    running = ordered.cumsum(0) / ordered.sum().clamp_min(1e-30)
    index = min(int(torch.searchsorted(running, torch.tensor(share, dtype=running.dtype))), len(ordered) - 1)
    return float(ordered[index])


def _prune_by_thresholds(nodes: list[Node], matrix: torch.Tensor, node_influence: torch.Tensor, weights: torch.Tensor,
                         node_share: float, edge_share: float) -> tuple[torch.Tensor, torch.Tensor]:
    """circuit-tracer's rule: keep every node (errors included) whose influence is at least the
    threshold that holds ``node_share`` of all nodes' influence (embeddings and outputs always
    kept); score the edges of the graph restricted to those nodes by influence and keep those
    above the ``edge_share`` threshold; then drop, until nothing changes, features and errors
    with no kept outgoing edge and features with no kept incoming edge."""
    keep_nodes = node_influence >= _threshold(node_influence, node_share)
    keep_nodes |= _kinds(nodes, "embedding", "logit", "direction")
    restricted = matrix * keep_nodes[:, None] * keep_nodes[None, :]
    restricted_shares = normalised(restricted)
    edge_scores = restricted_shares * (_influence_with(weights, restricted_shares) + weights)[:, None]
    keep_edges = edge_scores >= _threshold(edge_scores, edge_share)
    features, sources = _kinds(nodes, "feature"), _kinds(nodes, "feature", "error")
    while True:
        before = keep_nodes.clone()
        keep_edges &= keep_nodes[:, None] & keep_nodes[None, :]
        keep_nodes &= ~sources | keep_edges.any(0)
        keep_nodes &= ~features | keep_edges.any(1)
        if bool((keep_nodes == before).all()):
            return keep_nodes, keep_edges


def prune(graph: AttributionGraph, node_share: float = 0.8, edge_share: float = 0.98,
          rule: PruneRule = "shares") -> PrunedGraph:
    """Keep the features that hold ``node_share`` of the features' influence and the edges that
    hold ``edge_share`` of the edges' influence (``rule="shares"``, see the module docstring),
    or apply circuit-tracer's thresholds (``rule="circuit-tracer"``: node and edge influence
    thresholds over all nodes, errors included, then nodes left without edges dropped), so
    mechscope's pruned graphs can be compared node for node with circuit-tracer's."""
    check_number("node_share", node_share, minimum=0.0, maximum=1.0)
    check_number("edge_share", edge_share, minimum=0.0, maximum=1.0)
    check_choice("rule", rule, PruneRule)
    nodes = node_list(graph)
    matrix = square(graph)
    shares = normalised(matrix)
    weights = logit_weights(graph)
    node_influence = influence(graph, shares)
    if rule == "circuit-tracer":
        keep_nodes, keep_edges = _prune_by_thresholds(nodes, matrix, node_influence, weights, node_share, edge_share)
        return _scored(nodes, matrix, shares, node_influence, weights, keep_nodes, keep_edges)
    features = _kinds(nodes, "feature")
    keep_nodes = ~features
    feature_influence = node_influence[features]
    order = feature_influence.argsort(descending=True)
    cumulative = feature_influence[order].cumsum(0)
    total = float(feature_influence.sum())
    if total > 0:
        chosen = torch.nonzero(features).flatten()[order[:_count(cumulative, node_share, total)]]
        keep_nodes[chosen] = True
    edge_influence = (node_influence + weights)[:, None] * shares * keep_nodes[:, None] * keep_nodes[None, :]
    flat = edge_influence.flatten()
    order = flat.argsort(descending=True)
    cumulative = flat[order].cumsum(0)
    total = float(flat.sum())
    keep_edges = torch.zeros_like(flat, dtype=torch.bool)
    if total > 0:
        keep_edges[order[:_count(cumulative, edge_share, total)]] = True
    return _scored(nodes, matrix, shares, node_influence, weights, keep_nodes, keep_edges.reshape(matrix.shape))


def _scored(nodes: list[Node], matrix: torch.Tensor, shares: torch.Tensor, node_influence: torch.Tensor,
            weights: torch.Tensor, keep_nodes: torch.Tensor, keep_edges: torch.Tensor) -> PrunedGraph:
    replacement, completeness = scores(nodes, shares, node_influence, weights)
    # The kept edges keep their shares of the full graph: what was pruned is missing, not spread
    # over what is left.
    kept_shares = shares * keep_edges
    kept_influence = _influence_with(weights, kept_shares)
    pruned_replacement, pruned_completeness = scores(nodes, kept_shares, kept_influence, weights)
    return PrunedGraph(nodes, matrix, node_influence, keep_nodes, keep_edges, replacement, completeness,
                       pruned_replacement, pruned_completeness)


__all__ = ["PruneRule", "PrunedGraph", "influence", "logit_weights", "node_list", "normalised", "prune", "scores", "square"]
