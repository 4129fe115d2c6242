"""Validation against ground truth: ROC AUC of a method's edge and node scores against each
known circuit (:mod:`mechscope.circuits.known.registry`)."""

from __future__ import annotations

import time

import torch

from mechscope.circuits.discover import make_config, score_edges
from mechscope.circuits.graph import ComponentGraph
from mechscope.circuits.known.registry import BUILDERS, load_known
from mechscope.circuits.scoring import edge_setup
from mechscope.errors import MechscopeError


def roc_auc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Probability that a random positive outscores a random negative (ties count half):
    the Mann-Whitney statistic with average ranks. ``scores``, ``labels`` are 1-D."""
    scores, labels = scores.double().flatten(), labels.bool().flatten()
    positives, negatives = int(labels.sum()), int((~labels).sum())
    if positives == 0 or negatives == 0:
        raise MechscopeError("ROC AUC needs at least one positive and one negative label")
    order = scores.argsort()
    ranks = torch.empty_like(scores)
    ranks[order] = torch.arange(1, len(scores) + 1, dtype=torch.double)
    for value in scores.unique():  # average ranks over ties
        tied = scores == value
        ranks[tied] = ranks[tied].mean()
    return float((ranks[labels].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def node_scores(scores: torch.Tensor) -> torch.Tensor:
    """[n_writers] a component's importance: the sum of |score| over its outgoing edges."""
    return torch.nan_to_num(scores).abs().sum(1)


def benchmark(method: str = "eap-ig", models: list[str] | None = None, progress: bool = False,
              **options) -> list[dict]:
    """Score every known-circuit model with ``method`` (options as for
    :func:`mechscope.circuits.discover`; ACDC defaults to ``threshold=1e-3`` on KL) and report
    edge and node ROC AUC against the stored circuits, with wall time."""
    if method == "acdc":
        options.setdefault("threshold", 1e-3)
    config = make_config(method=method, **options)
    rows = []
    for name in models or list(BUILDERS):
        known = load_known(name)
        graph = ComponentGraph.from_config(known.model.cfg, qkv=config.qkv)
        start = time.perf_counter()
        setup = edge_setup(known.model, known.task, graph, config.ablation)
        scores, _, _ = score_edges(known.model, known.task, setup, config, progress)
        seconds = time.perf_counter() - start
        adjacency = graph.adjacency()
        edge_labels, node_labels = known.edge_labels(graph), known.node_labels(graph)
        magnitude = torch.nan_to_num(scores.abs())
        rows.append({"model": name, "method": method, "edges": graph.n_edges, "circuit_edges": len(known.edges),
                     "edge_auc": roc_auc(magnitude[adjacency], edge_labels[adjacency]),
                     "node_auc": roc_auc(node_scores(scores)[1:], node_labels[1:]), "seconds": seconds})
    return rows
