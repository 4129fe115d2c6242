"""The run behind ``mechscope circuit``: discover a circuit on a task, score its faithfulness
(and optionally its faithfulness curve), and write JSON, DOT and HTML exports atomically."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from mechscope import checks
from mechscope.circuits.circuit import Circuit
from mechscope.circuits.discover import DiscoveryConfig, discover
from mechscope.circuits.evaluation import faithfulness, faithfulness_curve
from mechscope.circuits.scoring import edge_setup
from mechscope.errors import ConfigError
from mechscope.files import OutputFolder, atomic_figure, atomic_text, prepare_output_folder
from mechscope.models.hooked_model import HookedModel
from mechscope.patching.runs import build_task, check_task_options
from mechscope.tasks.base import Task
from mechscope.validate import check_int

CIRCUIT_OUTPUTS = ("circuit.json", "circuit.dot", "circuit.html", "summary.json")
CURVE_OUTPUTS = ("curve.json", "curve.html")


@dataclass(frozen=True)
class CircuitOptions:
    """``mechscope circuit``'s options; checked on creation, before any model loads."""

    task: str = "ioi"
    method: str = "eap-ig"
    level: str = "edge"
    ablation: str = "patch"
    metric: str = "logit_diff"
    steps: int = 5
    edges: int | None = None
    selection: str = "top_n"
    threshold: float | None = None
    n: int = 8
    seed: int = 0
    kv_per_query_head: bool = False
    curve: bool = True

    def __post_init__(self) -> None:
        check_task_options(self.task, self.n, self.seed)
        check_int("steps", self.steps, 1, checks.MAX_STEPS)
        self.discovery()  # the discovery options are DiscoveryConfig's, checked there
        if self.selection == "threshold" and self.threshold is None:
            raise ConfigError("selection 'threshold' needs --threshold (the |score| cut-off)")

    def discovery(self) -> DiscoveryConfig:
        """The options of :func:`discover` these stand for."""
        return DiscoveryConfig(method=self.method, level=self.level, ablation=self.ablation, metric=self.metric,
                               steps=self.steps, n_edges=self.edges, selection=self.selection,
                               threshold=self.threshold, kv_per_query_head=self.kv_per_query_head)

    @property
    def outputs(self) -> list[str]:
        return list(CIRCUIT_OUTPUTS) + (list(CURVE_OUTPUTS) if self.curve else [])


@dataclass
class CircuitRun:
    """What :func:`run_circuit` found and wrote."""

    circuit: Circuit
    task: Task
    summary: dict
    folder: OutputFolder
    written: list[str] = field(default_factory=list)


def prepare_circuit_folder(out: str | Path, options: CircuitOptions, overwrite: bool = False,
                           model: str | None = None) -> OutputFolder:
    return prepare_output_folder(out, "circuit", options.outputs, overwrite=overwrite,
                                 options={**asdict(options), "model": model})


def run_circuit(model: HookedModel, options: CircuitOptions, out: OutputFolder | str | Path,
                overwrite: bool = False, labels: dict[str, str] | None = None) -> CircuitRun:
    """Discover the circuit, write circuit.json / .dot / .html (nodes labelled with ``labels``
    {node: text} when given, e.g. explanations), evaluate its faithfulness (and curve:
    curve.json, curve.html) and write summary.json."""
    from mechscope.models.weights import expand_kv_heads

    folder = out if isinstance(out, OutputFolder) else prepare_circuit_folder(out, options, overwrite)
    built = build_task(model, options.task, options.n, options.seed)
    if options.kv_per_query_head:
        # Expanded once here: the circuit's edges live on the expanded graph, which the
        # faithfulness runs below need too (discover leaves an already expanded model as it is).
        model = expand_kv_heads(model)
    found = discover(model, built, config=options.discovery())
    found.save(folder / "circuit.json")
    atomic_text(folder / "circuit.dot", found.to_dot(labels))
    atomic_text(folder / "circuit.html", found.to_html(labels=labels))
    graph = found.graph
    setup = edge_setup(model, built, graph, options.ablation)
    scored = faithfulness(model, built, setup, found.edges, options.metric)
    summary = {"faithfulness": scored.faithfulness, "complement_faithfulness": scored.complement_faithfulness,
               "circuit_metric": scored.circuit, "full_metric": scored.full, "ablated_metric": scored.empty,
               "edges": found.n_edges, "graph_edges": graph.n_edges, **found.info}
    if options.curve:
        measured = faithfulness_curve(model, built, setup, found.scores, metric=options.metric, level=options.level,
                                      node_scores=found.node_scores)
        atomic_text(folder / "curve.json", json.dumps(measured.to_json(), indent=1))
        atomic_figure(folder / "curve.html", measured.plot(f"{options.method} on {options.task}"))
        summary.update(cpr=measured.cpr, cmd=measured.cmd)
    atomic_text(folder / "summary.json", json.dumps(summary, indent=1))
    folder.record()
    return CircuitRun(found, built, summary, folder, options.outputs)
