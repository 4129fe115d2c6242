"""Graph data for the circuit viewer: nodes laid out by forward-pass depth, edges ranked by |score|.

The viewer (``static/graph.js``, drawn with the vendored cytoscape) needs no model: everything
comes from the run's ``circuit.json``. Edges are ranked by |score| so the pruning slider keeps
the ``k`` strongest; the page says how many edges and nodes it hides, never hides them silently."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping

from mechscope.errors import MechscopeError

COLUMN_GAP, ROW_GAP = 90.0, 80.0
CELL_WIDTH, DOT_GAP, ATTRIBUTION_ROW_GAP = 6, 22.0, 120.0


def _finite(value) -> float | None:
    """A score as the page can carry it: NaN and infinities (JSON has none) become None."""
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def _drawn_edges(circuit: Mapping) -> tuple[list[dict], dict[str, float]]:
    """(edges {"from", "to", "input", "score"}, depths {node: depth}) of a circuit.json."""
    drawing = circuit.get("drawing")
    if isinstance(drawing, Mapping):
        return list(drawing["edges"]), dict(drawing["depths"])
    # Written before circuit.json carried its drawing: receivers are drawn as they are named,
    # at the layer their name gives (L3H1<q -> 3), the logits on top.
    edges = [{"from": e["from"], "to": e["to"], "input": "", "score": e["score"]} for e in circuit["edges"]]
    depths = {}
    for name in {e["from"] for e in edges} | {e["to"] for e in edges}:
        digits = "".join(c if c.isascii() and c.isdigit() else " " for c in name).split()
        depths[name] = -1.0 if name == "input" else float(digits[0]) if digits else math.inf
    top = max([d for d in depths.values() if math.isfinite(d)] + [0.0]) + 1
    return edges, {name: (top if math.isinf(d) else d) for name, d in depths.items()}


def _ranked_edges(edges: list[dict]) -> list[dict]:
    """The viewer's edges from {"from", "to", "input", "score"} rows: strongest |score| first,
    each with its rank (what the pruning slider keeps) and a drawn width."""
    edges = sorted(edges, key=lambda e: -abs(e["score"]))
    strongest = max([abs(e["score"]) for e in edges] + [1e-12])
    return [{"id": f"e{rank}", "source": e["from"], "target": e["to"], "input": e.get("input", ""),
             "score": e["score"], "rank": rank, "width": round(1 + 7 * abs(e["score"]) / strongest, 2)}
            for rank, e in enumerate(edges)]


def circuit_graph(circuit: Mapping, labels: Mapping[str, str] | None = None) -> dict:
    """The viewer's data for a ``circuit.json`` (``labels``: {node: text}, e.g. explanations):
    {"nodes": [{"id", "depth", "score", "label", "x", "y"}], "edges": [{"id", "source", "target",
    "input", "score", "rank", "width"}] best |score| first, "total_edges", "graph_edges",
    "method", "level"}."""
    try:
        edges, depths = _drawn_edges(circuit)
    except (KeyError, TypeError) as error:
        raise MechscopeError(f"circuit.json has no edges to draw ({error!r})") from error
    for edge in edges:
        edge["score"] = _finite(edge["score"]) or 0.0
    node_scores = circuit.get("node_scores") or {}
    rows: dict[float, list[str]] = defaultdict(list)
    for name in sorted(depths):
        rows[depths[name]].append(name)
    nodes = []
    for rank, depth in enumerate(sorted(rows)):
        members = rows[depth]
        for index, name in enumerate(members):
            nodes.append({"id": name, "depth": depth, "score": _finite(node_scores.get(name)),
                          "label": (labels or {}).get(name, ""),
                          "x": (index - (len(members) - 1) / 2) * COLUMN_GAP, "y": -rank * ROW_GAP})
    drawn = _ranked_edges(edges)
    return {"nodes": nodes, "edges": drawn, "total_edges": len(drawn),
            "graph_edges": circuit.get("graph_edges"), "method": circuit.get("method"),
            "level": circuit.get("level")}


def _heads_text(heads) -> str:
    """"via L3H2 0.41, L5H0 -0.2": the heads a link's per-head attribution names (``mechscope
    graph --head-targets``), shown beside the edge in the node panel; "" when there are none."""
    if not isinstance(heads, list):
        return ""
    parts = []
    for head in heads[:3]:
        if isinstance(head, Mapping) and all(isinstance(head.get(k), int | float) for k in ("layer", "head", "weight")):
            parts.append(f"L{int(head['layer'])}H{int(head['head'])} {float(head['weight']):.3g}")
    return f"via {', '.join(parts)}" if parts else ""


def attribution_graph(data: Mapping) -> dict:
    """The viewer's data (as :func:`circuit_graph`) for an attribution graph's JSON (the
    circuit-tracer / Neuronpedia format ``mechscope graph`` writes): nodes at (token position,
    layer), embeddings at the bottom and logits on top; each node's label is its ``clerp``."""
    try:
        raw_nodes, links = list(data["nodes"]), list(data["links"])
        tokens = list(data.get("metadata", {}).get("prompt_tokens", []))
    except (KeyError, TypeError, AttributeError) as error:
        raise MechscopeError(f"graph.json has no nodes and links to draw ({error!r})") from error

    def depth(node: Mapping) -> float:
        layer = str(node.get("layer"))
        return -1.0 if layer == "E" else float(layer) if layer.lstrip("-").isdigit() else 0.0

    cells: dict[tuple[float, int], list[Mapping]] = defaultdict(list)
    for node in raw_nodes:
        cells[(depth(node), int(node.get("ctx_idx", 0)))].append(node)
    nodes = []
    for (row, position), members in cells.items():
        for index, node in enumerate(members):
            token = tokens[position] if 0 <= position < len(tokens) else ""
            label = str(node.get("clerp") or "") or f"{node.get('feature_type')} at {token!r}"
            # A cell (position, layer) holds its nodes in rows of six small dots.
            column, line = index % CELL_WIDTH, index // CELL_WIDTH
            nodes.append({"id": str(node["node_id"]), "depth": row, "score": _finite(node.get("influence")),
                          "label": label, "small": True, "kind": str(node.get("feature_type", "")),
                          "x": position * CELL_WIDTH * DOT_GAP * 1.3 + (column - (min(len(members), CELL_WIDTH) - 1) / 2)
                          * DOT_GAP, "y": -(row + 1) * ATTRIBUTION_ROW_GAP + line * DOT_GAP})
    known = {node["id"] for node in nodes}
    edges = [{"from": str(link["source"]), "to": str(link["target"]), "input": _heads_text(link.get("heads")),
              "score": _finite(link.get("weight")) or 0.0} for link in links
             if str(link.get("source")) in known and str(link.get("target")) in known]
    drawn = _ranked_edges(edges)
    return {"nodes": nodes, "edges": drawn, "total_edges": len(drawn), "graph_edges": len(links),
            "method": "attribution", "level": "feature", "tokens": tokens}


__all__ = ["attribution_graph", "circuit_graph"]
