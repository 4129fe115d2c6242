"""Circuit drawings: Graphviz DOT and a standalone interactive HTML (SVG + a little script).

Both take optional ``labels`` {node name: text} (e.g. explanations written by ``mechscope
explain``): DOT shows a node's text under its name, the HTML page in its tooltip and when the
node is clicked."""

from __future__ import annotations

import html
import json
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mechscope.circuits.circuit import Circuit


def _target(circuit: Circuit, receiver: int) -> tuple[str, str]:
    """(drawn node, edge label) for a receiver: heads and MLPs by name, shared kv heads as
    ``L{l}KV{g}``, the logits as ``logits``; the label names the input (q, k, v, kv, qkv)."""
    spec = circuit.graph.receivers[receiver]
    if spec.kind != "attention":
        return spec.node, ""
    components = circuit.graph.receiver_component(receiver)
    node = components[0] if len(components) == 1 else spec.node
    return node, spec.part or "".join(p for p, _ in spec.feeds)


def _node_depths(circuit: Circuit) -> dict[str, float]:
    """Forward-pass depth of every node a drawing can show, from the graph's typed ids."""
    graph = circuit.graph
    depths = {writer.label: writer.depth for writer in graph.writer_ids}
    for receiver in graph.receivers:
        depths.setdefault(receiver.node, receiver.depth)
    return depths


def _edges(circuit: Circuit) -> list[tuple[str, str, str, float]]:
    rows = []
    for writer, receiver in circuit.edges.nonzero().tolist():
        node, label = _target(circuit, receiver)
        score = float(circuit.scores[writer, receiver])
        rows.append((circuit.graph.writers[writer], node, label, 0.0 if math.isnan(score) else score))
    return rows


def circuit_drawing(circuit: Circuit) -> dict:
    """The circuit as drawn: {"edges": [{"from", "to", "input", "score"}] between drawn nodes
    (receivers mapped to their component; ``input`` names q/k/v), "depths": {node: forward-pass
    depth, the logits one layer past the last}}; what ``mechscope serve`` draws."""
    depths = _node_depths(circuit)
    past_last = circuit.graph.n_layers + 1.0
    edges = [{"from": a, "to": b, "input": c, "score": s} for a, b, c, s in _edges(circuit)]
    drawn = {e["from"] for e in edges} | {e["to"] for e in edges}
    return {"edges": edges,
            "depths": {name: (past_last if math.isinf(depths[name]) else depths[name]) for name in sorted(drawn)}}


def circuit_dot(circuit: Circuit, labels: Mapping[str, str] | None = None) -> str:
    edges = _edges(circuit)
    depth = _node_depths(circuit)
    _layer_of = depth.__getitem__
    nodes = sorted({e[0] for e in edges} | {e[1] for e in edges}, key=_layer_of)
    biggest = max((abs(e[3]) for e in edges), default=1.0) or 1.0
    lines = ["digraph circuit {", "  rankdir=BT;", '  node [shape=box, style="rounded,filled", fillcolor="#eef3fb"];']
    for name in nodes:
        if (labels or {}).get(name):
            text = f"{name}\\n{labels[name]}".replace('"', "'")
            lines.append(f'  "{name}" [label="{text}"];')
    for layer in sorted({_layer_of(n) for n in nodes}):
        same = " ".join(f'"{n}";' for n in nodes if _layer_of(n) == layer)
        lines.append(f"  {{ rank=same; {same} }}")
    for source, target, label, score in edges:
        colour = "#c0392b" if score < 0 else "#2c5fa8"
        width = 0.5 + 3 * abs(score) / biggest
        text = f"{label} {score:.3g}".strip()
        lines.append(f'  "{source}" -> "{target}" [label="{text}", color="{colour}", penwidth={width:.2f}];')
    lines.append("}")
    return "\n".join(lines) + "\n"


_PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font-family:sans-serif;margin:16px}} .n rect{{fill:#eef3fb;stroke:#456}} .n text{{font-size:11px}}
.e{{fill:none;opacity:.55}} .dim{{opacity:.06}} #info{{margin:8px 0;min-height:1.4em}}</style></head><body>
<h3>{title}</h3><div>{summary}. Click a node to highlight its edges; hover an edge for its score.</div>
<div id="info"></div><svg id="g" width="{width}" height="{height}"></svg>
<script>
const data = {data};
const svg = document.getElementById('g'), ns = 'http://www.w3.org/2000/svg';
function el(tag, attrs) {{ const e = document.createElementNS(ns, tag);
  for (const k in attrs) e.setAttribute(k, attrs[k]); svg.appendChild(e); return e; }}
const big = Math.max(1e-12, ...data.edges.map(e => Math.abs(e.score)));
const lines = data.edges.map(e => {{ const a = data.pos[e.from], b = data.pos[e.to];
  const l = el('path', {{d: `M${{a[0]}},${{a[1]}} C${{a[0]}},${{(a[1]+b[1])/2}} ${{b[0]}},${{(a[1]+b[1])/2}} ${{b[0]}},${{b[1]}}`,
    class: 'e', stroke: e.score < 0 ? '#c0392b' : '#2c5fa8', 'stroke-width': 0.5 + 4 * Math.abs(e.score) / big}});
  const t = document.createElementNS(ns, 'title'); t.textContent = `${{e.from}} -> ${{e.to}} ${{e.label}}: ${{e.score.toPrecision(3)}}`;
  l.appendChild(t); l.dataset.from = e.from; l.dataset.to = e.to; return l; }});
for (const name in data.pos) {{ const [x, y] = data.pos[name];
  const g = el('g', {{class: 'n'}}); g.style.cursor = 'pointer';
  const r = document.createElementNS(ns, 'rect'); Object.entries({{x: x-26, y: y-9, width: 52, height: 18, rx: 4}}).forEach(([k, v]) => r.setAttribute(k, v));
  const t = document.createElementNS(ns, 'text'); Object.entries({{x: x, y: y+4, 'text-anchor': 'middle'}}).forEach(([k, v]) => t.setAttribute(k, v));
  t.textContent = name; g.appendChild(r); g.appendChild(t);
  const label = data.labels[name] || '';
  if (label) {{ const tip = document.createElementNS(ns, 'title'); tip.textContent = `${{name}}: ${{label}}`; g.appendChild(tip); }}
  g.onclick = () => {{ let count = 0; lines.forEach(l => {{ const on = l.dataset.from === name || l.dataset.to === name;
    l.classList.toggle('dim', !on); count += on; }});
    document.getElementById('info').textContent = `${{name}}: ${{count}} edges` + (label ? ` (${{label}})` : ''); }}; }}
</script></body></html>
"""


def circuit_html(circuit: Circuit, labels: Mapping[str, str] | None = None) -> str:
    edges = _edges(circuit)
    _layer_of = _node_depths(circuit).__getitem__
    nodes = sorted({e[0] for e in edges} | {e[1] for e in edges}, key=lambda n: (_layer_of(n), n))
    rows: dict[float, list[str]] = {}
    for name in nodes:
        rows.setdefault(_layer_of(name), []).append(name)
    width = max([len(r) for r in rows.values()] + [1]) * 64 + 40
    ordered = sorted(rows)
    height = len(ordered) * 48 + 40
    positions = {}
    for rank, layer in enumerate(ordered):
        for index, name in enumerate(rows[layer]):
            positions[name] = (40 + index * 64, height - 30 - rank * 48)
    data = {"pos": positions, "edges": [{"from": a, "to": b, "label": c, "score": s} for a, b, c, s in edges],
            "labels": {name: text for name, text in (labels or {}).items() if name in positions}}
    title = html.escape(f"Circuit ({circuit.method or 'edges'}, {circuit.level} level)")
    summary = html.escape(f"{circuit.n_edges} of {circuit.graph.n_edges} edges, {len(nodes)} nodes")
    return _PAGE.format(title=title, summary=summary, width=width, height=height, data=json.dumps(data).replace("</", "<\\/"))
