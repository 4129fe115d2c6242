"""``mechscope circuit``: discover a circuit on a task, score its faithfulness, export it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from mechscope.checks import MAX_STEPS
from mechscope.circuits.runs import CircuitOptions, prepare_circuit_folder, run_circuit
from mechscope.cli.core import console, load_model, say
from mechscope.cli.options import ModelName, Overwrite, Prompts, Seed, Task, finite, out_option


def circuit(
    task: Task = "ioi",
    method: Annotated[str, typer.Option(help="eap, eap-ig, acdc or exact")] = "eap-ig",
    level: Annotated[str, typer.Option(help="edge or node")] = "edge",
    ablation: Annotated[str, typer.Option(help="patch (corrupted run), mean or zero")] = "patch",
    metric: Annotated[str, typer.Option(help="logit_diff, prob or prob_diff (the score's metric)")] = "logit_diff",
    steps: Annotated[int, typer.Option(min=1, max=MAX_STEPS, help="EAP-IG interpolation steps")] = 5,
    edges: Annotated[int | None, typer.Option(min=1, help="circuit size (edges; components at node level); "
                                                          "default 1% / 10%")] = None,
    selection: Annotated[str, typer.Option(help="top_n, greedy or threshold")] = "top_n",
    threshold: Annotated[float | None, typer.Option(help="ACDC's threshold (required for acdc), or the |score| "
                                                         "cut-off", callback=finite(minimum=0.0))] = None,
    n: Prompts = 8,
    seed: Seed = 0,
    kv_per_query_head: Annotated[bool, typer.Option(help="GQA: a k and v receiver per query head, not per kv "
                                                         "head")] = False,
    curve: Annotated[bool, typer.Option(help="also compute the faithfulness curve (0.1% .. 100% of edges)")] = True,
    model: ModelName = None,
    out: Annotated[Path, out_option("folder for circuit.json / .dot / .html and the curve")] = Path("mechscope-circuit"),
    overwrite: Overwrite = False,
    labels: Annotated[Path | None, typer.Option(help="node labels for the drawings: a `mechscope explain` run "
                                                     "folder (units named as nodes, e.g. L3H2) or a JSON file "
                                                     "{node: text}")] = None,
) -> None:
    """Find the circuit behind a task (EAP, EAP-IG, ACDC or exact edge patching) and write it as
    JSON, Graphviz DOT and an interactive HTML view, with its faithfulness."""
    options = CircuitOptions(task, method, level, ablation, metric, steps, edges, selection, threshold, n, seed,
                             kv_per_query_head, curve)
    from mechscope.autointerp.results import read_labels

    node_labels = read_labels(labels) if labels is not None else None  # a bad file fails before any work
    folder = prepare_circuit_folder(out, options, overwrite, model)
    say(folder.describe())
    hooked = load_model(model)
    with console.status("discovering the circuit and evaluating its faithfulness ..."):
        run = run_circuit(hooked, options, folder, labels=node_labels)
    found, summary = run.circuit, run.summary
    table = Table(title=f"{method} circuit on {task} ({len(run.task)} prompts): {found.n_edges} of "
                        f"{found.graph.n_edges} edges")
    for column in ("from", "to", "score"):
        table.add_column(column, justify="right" if column == "score" else "left")
    for edge in found.edge_list()[:12]:
        table.add_row(edge["from"], edge["to"], f"{edge['score']:+.4f}")
    console.print(table)
    console.print(f"faithfulness {summary['faithfulness']:.3f} (complement {summary['complement_faithfulness']:.3f})"
                  + (f"; curve CPR {summary['cpr']:.3f}, CMD {summary['cmd']:.3f}" if curve else ""))
    console.print(f"wrote {folder.path}/{', '.join(run.written)}")
