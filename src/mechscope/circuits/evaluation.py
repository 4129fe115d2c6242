"""How faithful a circuit is: run only the circuit clean, ablate everything else.

faithfulness(C) = (m(C) - m(empty)) / (m(full) - m(empty)), where m(empty) ablates every edge
(with patch ablation: the corrupted run) and m(full) is the clean model; the complement runs
every edge *but* C's. A faithfulness curve evaluates the top circuits of a score ranking over
sizes from 0.1% to 100% of edges; as in the MIB benchmark, CPR is the area under it (higher is
better) and CMD the area between it and 1 (lower is better), both over the fraction of edges
in [0, 1] by the trapezoid rule.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import pairwise

import torch

from mechscope.circuits.circuit import select_edges, select_nodes
from mechscope.circuits.scoring import EdgeSetup, evaluate_masks
from mechscope.errors import MechscopeError
from mechscope.models.hooked_model import HookedModel
from mechscope.tasks.base import Task

DEFAULT_FRACTIONS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)


@dataclass(frozen=True)
class Faithfulness:
    """Metric values of the circuit, its complement, the full model and the fully ablated one,
    and the two normalised scores."""

    circuit: float
    complement: float
    full: float
    empty: float

    @property
    def faithfulness(self) -> float:
        return _normalise(self.circuit, self.full, self.empty)

    @property
    def complement_faithfulness(self) -> float:
        return _normalise(self.complement, self.full, self.empty)


def _normalise(value: float, full: float, empty: float) -> float:
    gap = full - empty
    return float("nan") if gap == 0 else (value - empty) / gap


def faithfulness(model: HookedModel, task: Task, setup: EdgeSetup, edges: torch.Tensor,
                 metric: str = "logit_diff") -> Faithfulness:
    """Faithfulness of the circuit ``edges`` [W, R] and of its complement (one batched forward)."""
    adjacency = setup.graph.adjacency()
    edges = edges.bool() & adjacency
    masks = torch.stack([edges, adjacency & ~edges, adjacency, torch.zeros_like(adjacency)]).float()
    circuit, complement, full, empty = evaluate_masks(model, task, setup, masks, metric).tolist()
    return Faithfulness(circuit, complement, full, empty)


@dataclass
class FaithfulnessCurve:
    """Faithfulness of the top-k circuits for each fraction of the graph's edges."""

    fractions: list[float]
    n_edges: list[int]
    faithfulness: list[float]
    full: float
    empty: float
    info: dict = field(default_factory=dict)

    @property
    def cpr(self) -> float:
        """Area under the curve over the edge fraction in [0, 1] (higher is better)."""
        return _area(self.fractions, self.faithfulness)

    @property
    def cmd(self) -> float:
        """Area between the curve and 1 (lower is better)."""
        return _area(self.fractions, [abs(1 - f) for f in self.faithfulness])

    def to_json(self) -> dict:
        return {"fractions": self.fractions, "n_edges": self.n_edges, "faithfulness": self.faithfulness,
                "full": self.full, "empty": self.empty, "cpr": self.cpr, "cmd": self.cmd, **self.info}

    def plot(self, title: str = "Faithfulness curve"):
        import plotly.graph_objects as go

        figure = go.Figure(go.Scatter(x=[100 * f for f in self.fractions], y=self.faithfulness, mode="lines+markers"))
        figure.add_hline(y=1, line_dash="dot")
        figure.update_layout(title=f"{title} (CPR {self.cpr:.3f}, CMD {self.cmd:.3f})", xaxis_type="log",
                             xaxis_title="% of edges in the circuit", yaxis_title="faithfulness")
        return figure


def _area(xs: list[float], ys: list[float]) -> float:
    """Trapezoid area over [0, 1]; the curve is held flat from 0 to the first fraction."""
    points = [(0.0, ys[0])] + list(zip(xs, ys))
    return sum((x1 - x0) * (y0 + y1) / 2 for (x0, y0), (x1, y1) in pairwise(points))


def faithfulness_curve(model: HookedModel, task: Task, setup: EdgeSetup, scores: torch.Tensor,
                       fractions: tuple[float, ...] = DEFAULT_FRACTIONS, metric: str = "logit_diff",
                       level: str = "edge", selection: str = "top_n", node_scores: torch.Tensor | None = None,
                       progress: bool = False) -> FaithfulnessCurve:
    """Faithfulness of the best circuit of each size under ``scores`` [W, R] (edge level) or
    ``node_scores`` [W] (node level: fractions of components), all circuits batched."""
    graph = setup.graph
    if any(not 0 < f <= 1 for f in fractions) or list(fractions) != sorted(fractions):
        raise MechscopeError(f"fractions must be increasing and in (0, 1], got {fractions}")
    masks = []
    for fraction in fractions:
        if level == "node":
            if node_scores is None:
                raise MechscopeError("level='node' needs node_scores")
            masks.append(select_nodes(graph, node_scores, n=max(1, round(fraction * (graph.n_writers - 1)))))
        else:
            masks.append(select_edges(graph, scores, selection, n=max(1, round(fraction * graph.n_edges))))
    masks_tensor = torch.stack(masks)
    adjacency = graph.adjacency()
    anchors = torch.stack([adjacency, torch.zeros_like(adjacency)]).float()
    values = evaluate_masks(model, task, setup, torch.cat([anchors, masks_tensor.float()]), metric,
                            progress=progress).tolist()
    full, empty = values[0], values[1]
    return FaithfulnessCurve(list(fractions), [int(m.sum()) for m in masks_tensor],
                             [_normalise(v, full, empty) for v in values[2:]], full, empty,
                             info={"level": level, "selection": selection, "metric": metric})
