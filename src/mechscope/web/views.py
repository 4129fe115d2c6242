"""What a run's page shows beyond its record, by the run's kind: a circuit's graph, patching and
tracing heatmaps, model-diff and audit reports (each audit claim linked to its evidence). Each view returns (HTML body, scripts, page data) for :func:`pages.page`."""

from __future__ import annotations

import html
import json
from collections.abc import Callable
from dataclasses import dataclass, field

from mechscope.errors import MechscopeError
from mechscope.files import read_json
from mechscope.store import RunRecord
from mechscope.web.artifacts import run_file
from mechscope.web.graph_view import attribution_graph, circuit_graph


@dataclass
class View:
    """A kind's part of a run page: ``body`` HTML, ``scripts`` by name, ``data`` for them."""

    body: str = ""
    scripts: list[str] = field(default_factory=list)
    data: dict = field(default_factory=dict)


def _summary_table(summary: dict) -> str:
    rows = "".join(f"<tr><th>{html.escape(str(key))}</th><td>{html.escape(_short(value))}</td></tr>"
                   for key, value in summary.items() if not isinstance(value, (dict, list)))
    return f"<table class=facts>{rows}</table>"


def _short(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


GRAPH_CONTROLS = (
    "<div class=graph-controls><label>edges kept <input type=range id=prune min=0 max={total} value={total}></label>"
    "<span id=edge-count></span><input id=node-search placeholder=\"search nodes\"><span id=search-count></span>"
    "<button id=fit type=button>fit</button></div>"
    "<div class=graph-area><div id=graph></div><aside id=node-panel hidden></aside></div>")


def circuit_view(record: RunRecord) -> View:
    """The circuit drawn with cytoscape: zoom, node search, a pruning slider, a node panel."""
    path = run_file(record, "circuit.json")
    if path is None:
        return View("<p class=error>this circuit run has no circuit.json</p>")
    graph = circuit_graph(read_json(path, "circuit"))
    summary_path = run_file(record, "summary.json")
    summary = _summary_table(read_json(summary_path, "circuit summary")) if summary_path else ""
    heading = (f"<h2>Circuit</h2><p>{graph['total_edges']} edges of {html.escape(str(graph['graph_edges']))} in the "
               f"model's graph ({html.escape(str(graph['method']))}, {html.escape(str(graph['level']))} level). "
               "Drag to pan, "
               "scroll to zoom, click a node for its edges.</p>")
    return View(heading + GRAPH_CONTROLS.format(total=graph["total_edges"]) + summary,
                ["cytoscape", "graph"], graph)


def graph_view(record: RunRecord) -> View:
    """An attribution graph (``mechscope graph``): the same viewer, nodes at (position, layer)."""
    path = run_file(record, "graph.json")
    if path is None:
        return View("<p class=error>this graph run has no graph.json</p>")
    data = read_json(path, "attribution graph")
    graph = attribution_graph(data)
    meta = data.get("metadata", {}) if isinstance(data, dict) else {}
    scores = "".join(f"<tr><th>{html.escape(name.replace('_', ' '))}</th><td>{html.escape(_short(meta[name]))}</td>"
                     "</tr>" for name in ("replacement_score", "completeness_score", "pruned_replacement_score",
                                          "pruned_completeness_score") if isinstance(meta.get(name), float))
    prompt = html.escape(str(meta.get("prompt", "")))
    heading = (f"<h2>Attribution graph</h2><p>Prompt <q>{prompt}</q>: {len(graph['nodes'])} nodes and "
               f"{graph['total_edges']} edges kept by pruning. Columns are token positions, rows layers "
               "(embeddings at the bottom, the output logits on top). Scroll to zoom, click a node for its "
               f"edges and label.</p><table class=facts>{scores}</table>")
    return View(heading + GRAPH_CONTROLS.format(total=graph["total_edges"]), ["cytoscape", "graph"], graph)


def _figures(record: RunRecord, names: list[str]) -> View:
    from mechscope.patching.result import PatchingResult

    figures = []
    for name in names:
        path = run_file(record, name)
        if path is not None:
            result = PatchingResult.load(path)
            figure = result.plot(f"{record.name}: {result.kind} {result.mode} patching, {result.metric}"
                                 if name == "result.json" else f"{record.name}: {name.removesuffix('.json')}")
            figures.append(json.loads(figure.to_json()))
    divs = "".join(f"<div class=figure data-figure={index}></div>" for index in range(len(figures)))
    return View(f"<h2>Heatmaps</h2>{divs}", ["plotly", "figures"], {"figures": figures})


def patch_view(record: RunRecord) -> View:
    return _figures(record, ["result.json"])


def trace_view(record: RunRecord) -> View:
    return _figures(record, sorted(p for p in record.artifacts.values() if p.startswith("trace-")
                                   and p.endswith(".json")))


def _report(record: RunRecord, summary_name: str, figures_of, body_of) -> View:
    """A diff or audit report drawn in the page: its sections from the summary JSON, its figures
    from plotly JSON (the report file embeds scripts, which the policy refuses)."""
    path = run_file(record, summary_name)
    if path is None:
        return View(f"<p class=error>this run has no {summary_name}</p>")
    summary = read_json(path, summary_name)
    figures = figures_of(summary)
    parts = {name: f"<div class=figure data-figure={index}></div>" for index, name in enumerate(figures)}
    by_path = {relpath: key for key, relpath in record.artifacts.items()}
    summary_link = f"/artifacts/{record.id}/{by_path[summary_name]}"

    def link(relpath: str) -> str:  # a run file named in the report, as its artifact URL
        key = by_path.get(relpath)
        return f"/artifacts/{record.id}/{key}" if key is not None else "#"

    body = (f"<div class=report>{body_of(summary, parts, link)}</div><p class=note>Every number: "
            f"<a href={summary_link}>{html.escape(summary_name)}</a>.</p>")
    return View(body, ["plotly", "figures"], {"figures": [json.loads(f.to_json()) for f in figures.values()]})


def diff_view(record: RunRecord) -> View:
    from mechscope.report.diff_report import diff_figures, diff_report_body

    return _report(record, "diff.json", diff_figures, diff_report_body)


def audit_view(record: RunRecord) -> View:
    from mechscope.report.audit_report import audit_figures, audit_report_body

    return _report(record, "audit.json", audit_figures, lambda summary, parts, link: audit_report_body(summary, parts))


VIEWS: dict[str, Callable[[RunRecord], View]] = {"circuit": circuit_view, "patch": patch_view,
                                                  "trace": trace_view, "diff": diff_view, "audit": audit_view,
                                                  "graph": graph_view}


def run_view(record: RunRecord) -> View:
    """The view of ``record``'s kind (empty for kinds that have none); a file the view cannot read
    is said on the page."""
    make = VIEWS.get(record.kind)
    if make is None:
        return View()
    try:
        return make(record)
    except MechscopeError as error:
        return View(f"<p class=error>{html.escape(str(error))}</p>")


__all__ = ["VIEWS", "View", "run_view"]
