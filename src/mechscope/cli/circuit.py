"""``mechscope circuit``: discover a circuit on a task, score its faithfulness, export it."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table


def circuit(
    task: str = typer.Option("ioi", help="ioi, greater-than, induction or factual-recall"),
    method: str = typer.Option("eap-ig", help="eap, eap-ig, acdc or exact"),
    level: str = typer.Option("edge", help="edge or node"),
    ablation: str = typer.Option("patch", help="patch (corrupted run), mean or zero"),
    metric: str = typer.Option("logit_diff", help="logit_diff, prob or prob_diff (the score's metric)"),
    steps: int = typer.Option(5, min=1, help="EAP-IG interpolation steps"),
    edges: int = typer.Option(None, min=1, help="circuit size (edges; components at node level); default 1% / 10%"),
    selection: str = typer.Option("top_n", help="top_n, greedy or threshold"),
    threshold: float = typer.Option(None, help="ACDC's threshold (required for acdc), or the |score| cut-off"),
    n: int = typer.Option(8, min=1, help="number of prompts"),
    seed: int = typer.Option(0),
    kv_per_query_head: bool = typer.Option(False, help="GQA: a k and v receiver per query head, not per kv head"),
    curve: bool = typer.Option(True, help="also compute the faithfulness curve (0.1% .. 100% of edges)"),
    model: str = typer.Option(None, "--model", "-m", help="bundled name, .gguf path, local folder or hub id"),
    out: Path = typer.Option(Path("mechscope-circuit"), "--out", "-o",
                             help="folder for circuit.json / .dot / .html and the curve"),
) -> None:
    """Find the circuit behind a task (EAP, EAP-IG, ACDC or exact edge patching) and write it as
    JSON, Graphviz DOT and an interactive HTML view, with its faithfulness."""
    from mechscope import tasks
    from mechscope.circuits import discover, edge_setup, faithfulness, faithfulness_curve
    from mechscope.cli.main import _load, console

    if task not in tasks.TASKS:
        raise typer.BadParameter(f"unknown task {task!r}; choose one of: {', '.join(tasks.TASKS)}", param_hint="--task")
    hooked = _load(model)
    built = tasks.TASKS[task](hooked) if task == "factual-recall" else tasks.TASKS[task](hooked, n=n, seed=seed)
    options = {"metric": metric, "steps": steps, "n_edges": edges, "selection": selection, "threshold": threshold,
               "kv_per_query_head": kv_per_query_head}
    if kv_per_query_head:
        from mechscope.models.weights import expand_kv_heads

        # Expanded once here: the circuit's edges live on the expanded graph, which the
        # faithfulness runs below need too (discover leaves an already expanded model as it is).
        hooked = expand_kv_heads(hooked)
    try:
        found = discover(hooked, built, method=method, level=level, ablation=ablation, **options)
    except ValueError as error:
        raise typer.BadParameter(str(error)) from error
    out.mkdir(parents=True, exist_ok=True)
    found.save(out / "circuit.json")
    (out / "circuit.dot").write_text(found.to_dot())
    found.to_html(out / "circuit.html")
    graph = found.graph
    with console.status("evaluating faithfulness ..."):
        setup = edge_setup(hooked, built, graph, ablation)
        scored = faithfulness(hooked, built, setup, found.edges, metric)
        summary = {"faithfulness": scored.faithfulness, "complement_faithfulness": scored.complement_faithfulness,
                   "circuit_metric": scored.circuit, "full_metric": scored.full, "ablated_metric": scored.empty,
                   "edges": found.n_edges, "graph_edges": graph.n_edges, **found.info}
        if curve:
            measured = faithfulness_curve(hooked, built, setup, found.scores, metric=metric, level=level,
                                          node_scores=found.node_scores)
            (out / "curve.json").write_text(json.dumps(measured.to_json(), indent=1))
            measured.plot(f"{method} on {task}").write_html(out / "curve.html", include_plotlyjs=True)
            summary.update(cpr=measured.cpr, cmd=measured.cmd)
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    table = Table(title=f"{method} circuit on {task} ({len(built)} prompts): {found.n_edges} of {graph.n_edges} edges")
    for column in ("from", "to", "score"):
        table.add_column(column, justify="right" if column == "score" else "left")
    for edge in found.edge_list()[:12]:
        table.add_row(edge["from"], edge["to"], f"{edge['score']:+.4f}")
    console.print(table)
    console.print(f"faithfulness {scored.faithfulness:.3f} (complement {scored.complement_faithfulness:.3f})"
                  + (f"; curve CPR {summary['cpr']:.3f}, CMD {summary['cmd']:.3f}" if curve else ""))
    console.print(f"wrote {out}/circuit.json, circuit.dot, circuit.html, summary.json"
                  + (", curve.json, curve.html" if curve else ""))
