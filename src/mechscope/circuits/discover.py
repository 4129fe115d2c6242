"""The front door: ``discover(model, task, method=...) -> Circuit`` and a method comparison."""

from __future__ import annotations

import time
from dataclasses import dataclass, fields
from typing import Literal, get_args

import torch

from mechscope.circuits.acdc import acdc
from mechscope.circuits.circuit import (
    Circuit,
    Level,
    Selection,
    node_scores_from_edges,
    prune,
    select_edges,
    select_nodes,
)
from mechscope.circuits.evaluation import DEFAULT_FRACTIONS, faithfulness_curve
from mechscope.circuits.graph import ComponentGraph
from mechscope.circuits.scoring import (
    GRADIENT_METRICS,
    EdgeAblation,
    EdgeSetup,
    IgVariant,
    eap_ig_scores,
    eap_scores,
    edge_setup,
    exact_scores,
)
from mechscope.errors import ConfigError, MechscopeError
from mechscope.models.hooked_model import HookedModel
from mechscope.models.weights import expand_kv_heads
from mechscope.patching.metrics import PatchMetric
from mechscope.tasks.base import Task
from mechscope.validate import check_choice, check_int, check_number, options_from

DiscoveryMethod = Literal["eap", "eap-ig", "acdc", "exact"]
AcdcMetric = Literal["kl", "logit_diff", "prob", "prob_diff"]
METHODS: tuple[str, ...] = get_args(DiscoveryMethod)


@dataclass(frozen=True)
class DiscoveryConfig:
    """Options of :func:`discover` (all have defaults; see its docstring), checked on construction."""

    method: DiscoveryMethod = "eap-ig"
    level: Level = "edge"
    ablation: EdgeAblation = "patch"
    metric: PatchMetric = "logit_diff"
    steps: int = 5
    ig_variant: IgVariant = "inputs"
    threshold: float | None = None
    n_edges: int | None = None
    selection: Selection = "top_n"
    qkv: bool = True
    kv_per_query_head: bool = False
    prune: bool = True
    acdc_metric: AcdcMetric = "kl"

    def __post_init__(self) -> None:
        check_choice("method", self.method, DiscoveryMethod)
        check_choice("level", self.level, Level)
        check_choice("ablation", self.ablation, EdgeAblation)
        check_choice("metric", self.metric, PatchMetric)
        if self.method in ("eap", "eap-ig") and self.metric not in GRADIENT_METRICS:
            raise ConfigError(f"method {self.method!r} scores edges by gradients, which need one of "
                              f"{', '.join(GRADIENT_METRICS)} (KL to the clean run is flat there); got {self.metric!r}")
        check_choice("ig_variant", self.ig_variant, IgVariant)
        check_choice("selection", self.selection, Selection)
        check_choice("acdc_metric", self.acdc_metric, AcdcMetric)
        check_int("steps", self.steps, minimum=1)
        if self.n_edges is not None:
            check_int("n_edges", self.n_edges, minimum=1)
        if self.threshold is not None:
            check_number("threshold", self.threshold, minimum=0.0)
        if self.method == "acdc" and self.threshold is None:
            raise ConfigError("method='acdc' needs threshold=... (the largest damage an edge may do and be pruned)")

    def check(self) -> None:
        """Kept for callers of the earlier API: a constructed config is already checked."""
        self.__post_init__()


def make_config(**options) -> DiscoveryConfig:
    """A checked :class:`DiscoveryConfig`; unknown option names are an error that lists the valid ones."""
    valid = [f.name for f in fields(DiscoveryConfig)]
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise MechscopeError(f"unknown option(s) {unknown}; valid options: {', '.join(valid)}")
    return DiscoveryConfig(**options)


def score_edges(model: HookedModel, task: Task, setup: EdgeSetup, config: DiscoveryConfig,
                progress: bool = True) -> tuple[torch.Tensor, torch.Tensor | None, dict]:
    """(scores [W, R], ACDC's kept edges or None, info) for the configured method."""
    if config.method == "eap":
        return eap_scores(model, task, setup, config.metric), None, {}
    if config.method == "eap-ig":
        return eap_ig_scores(model, task, setup, config.metric, config.steps, config.ig_variant, progress), None, {}
    if config.method == "exact":
        return exact_scores(model, task, setup, config.metric, progress=progress), None, {}
    kept, scores, info = acdc(model, task, setup, config.threshold, config.acdc_metric, config.level,
                              progress=progress)
    return scores, kept, info


def discover(model: HookedModel, task: Task, method: DiscoveryMethod = "eap-ig", level: Level = "edge",
             ablation: EdgeAblation = "patch", progress: bool = True, config: DiscoveryConfig | None = None,
             **options) -> Circuit:
    """Find the circuit behind ``task`` (clean prompts run clean, ablated edges take the
    ``ablation`` values: "patch" = corrupted run, "mean", "zero").

    Methods: "eap" (one clean forward+backward and one corrupted forward), "eap-ig"
    (``steps`` gradient points, ``ig_variant`` "inputs" or "activations"), "acdc" (pruning with
    ``threshold`` on ``acdc_metric``, "kl" by default), "exact" (one forward per edge). Options
    (see :class:`DiscoveryConfig`): ``metric``, ``steps``, ``ig_variant``, ``threshold``,
    ``n_edges``, ``selection`` ("top_n", "threshold", "greedy"), ``qkv``, ``prune``, and
    ``kv_per_query_head``: under grouped-query attention, give each query head its own k and v
    receivers (runs on :func:`~mechscope.models.weights.expand_kv_heads`'s equivalent copy).
    At node level, each component's score is the sum of its outgoing edges' scores (ACDC tries
    components directly) and ``n_edges`` counts components. ``config``: a
    :class:`DiscoveryConfig` holding all of these at once (then give no other options).
    """
    if config is None:
        config = make_config(method=method, level=level, ablation=ablation, **options)  # names unknown options
    else:
        config = options_from(DiscoveryConfig, config, method=method, level=level, ablation=ablation, **options)
    method, level, ablation = config.method, config.level, config.ablation
    if config.kv_per_query_head:
        model = expand_kv_heads(model)
    graph = ComponentGraph.from_config(model.cfg, qkv=config.qkv)
    start = time.perf_counter()
    setup = edge_setup(model, task, graph, ablation, clean=method != "eap")  # EAP's gradient pass is the clean run
    scores, kept, info = score_edges(model, task, setup, config, progress)
    node_scores = node_scores_from_edges(graph, scores) if level == "node" else None
    if kept is not None:
        edges = kept
    elif level == "node":
        default = None if config.threshold is not None else max(1, round(0.1 * (graph.n_writers - 1)))
        edges = select_nodes(graph, node_scores, config.n_edges if config.n_edges is not None else default,
                             config.threshold)
    elif config.selection == "threshold" or (config.threshold is not None and config.n_edges is None):
        edges = select_edges(graph, scores, "threshold", threshold=config.threshold)
    else:
        n = config.n_edges if config.n_edges is not None else max(1, round(0.01 * graph.n_edges))
        edges = select_edges(graph, scores, config.selection, n=n)
    if config.prune and level == "edge":
        edges = prune(graph, edges)
    info = {**info, "seconds": time.perf_counter() - start, "task": task.name, "prompts": len(task),
            "metric": config.metric, "ablation": ablation}
    if method == "eap-ig":
        info.update(steps=config.steps, ig_variant=config.ig_variant)
    return Circuit(graph, scores, edges, level, method, node_scores, info)


def compare_methods(model: HookedModel, task: Task, methods: list[dict], ablation: str = "patch",
                    metric: str = "logit_diff", fractions: tuple[float, ...] = DEFAULT_FRACTIONS,
                    progress: bool = True) -> list[dict]:
    """Score each method (a dict of :func:`discover` options with at least ``method``) and
    evaluate its faithfulness curve (circuits chosen by the row's ``selection``: top_n or
    greedy); rows with method, options, seconds (scoring only), CPR, CMD and the curve."""
    rows = []
    graph = ComponentGraph.from_config(model.cfg, qkv=methods[0].get("qkv", True) if methods else True)
    setup = edge_setup(model, task, graph, ablation)
    for options in methods:
        config = make_config(ablation=ablation, metric=metric, **options)
        start = time.perf_counter()
        scores, _, info = score_edges(model, task, setup, config, progress)
        seconds = time.perf_counter() - start
        selection = "top_n" if config.selection == "threshold" else config.selection  # a curve needs sizes
        curve = faithfulness_curve(model, task, setup, scores, fractions, metric, config.level, selection,
                                   node_scores=node_scores_from_edges(graph, scores) if config.level == "node" else None)
        rows.append({"method": config.method, **{k: v for k, v in options.items() if k != "method"},
                     "seconds": seconds, "cpr": curve.cpr, "cmd": curve.cmd, "curve": curve.to_json(), **info})
    return rows
