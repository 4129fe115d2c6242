"""Edge scores: attribution (EAP, EAP-IG) and exact edge patching, plus the shared pieces
(reference values for ablated edges, per-circuit metric evaluation).

Convention: an edge's score estimates metric(circuit without the edge) - metric(full model),
i.e. what ablating the edge alone does; circuits keep the edges with the largest |score|.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from mechscope.circuits.graph import ComponentGraph
from mechscope.circuits.intervention import EdgeSpec, run_edges, writer_outputs
from mechscope.models.hooked_model import HookedModel
from mechscope.patching.activation import mean_over_prompts
from mechscope.patching.metrics import row_metric
from mechscope.tasks.base import Task

ABLATIONS = ("patch", "mean", "zero")
GRADIENT_METRICS = ("logit_diff", "prob", "prob_diff")
IG_VARIANTS = ("inputs", "activations")


@dataclass(frozen=True)
class EdgeSetup:
    """Everything scoring and evaluation share: clean writer outputs [W, n, pos, d], the
    reference values of ablated edges [W, n or 1, pos, d], and the clean END logits [n, vocab]."""

    graph: ComponentGraph
    clean_writers: torch.Tensor
    reference: torch.Tensor
    clean_end_logits: torch.Tensor
    ablation: str


def edge_setup(model: HookedModel, task: Task, graph: ComponentGraph, ablation: str = "patch",
               reference_tokens: torch.Tensor | None = None) -> EdgeSetup:
    """Clean writer outputs and the reference values: the corrupted run's ("patch"), the mean
    over ``reference_tokens`` (default: the clean prompts) per position ("mean"), or zeros."""
    if ablation not in ABLATIONS:
        raise ValueError(f"ablation must be one of {ABLATIONS}, got {ablation!r}")
    clean_logits, clean = writer_outputs(model, graph, task.clean_tokens)
    if ablation == "patch":
        _, reference = writer_outputs(model, graph, task.corrupted_tokens)
    elif ablation == "mean":
        tokens = task.clean_tokens if reference_tokens is None else reference_tokens
        if tokens.shape[1] != task.clean_tokens.shape[1]:
            raise ValueError(f"reference_tokens have {tokens.shape[1]} positions; the task has "
                             f"{task.clean_tokens.shape[1]} (mean ablation is per position)")
        reference = writer_outputs(model, graph, tokens)[1].mean(1, keepdim=True)
    else:
        reference = torch.zeros_like(clean[:, :1])
    return EdgeSetup(graph, clean, reference, task.end_logits(clean_logits), ablation)


def evaluate_masks(model: HookedModel, task: Task, setup: EdgeSetup, masks: torch.Tensor, metric: str = "logit_diff",
                   memory_budget_gb: float = 2.0, progress: bool = False) -> torch.Tensor:
    """[circuits] mean task ``metric`` with each circuit's edges live and all others ablated.
    ``masks`` [circuits, n_writers, n_receivers] (bool or float); batched by the memory budget."""
    n, positions = task.clean_tokens.shape
    graph = setup.graph
    if masks.dim() != 3 or masks.shape[1:] != (graph.n_writers, graph.n_receivers):
        raise ValueError(f"masks must be [circuits, {graph.n_writers}, {graph.n_receivers}], got {tuple(masks.shape)}")
    slot_bytes = graph.n_writers * n * positions * model.cfg.d_model * 4 * 2
    per_forward = max(1, int(memory_budget_gb * 2**30 // slot_bytes))
    metric_fn = row_metric(task, metric, setup.clean_end_logits)
    keep = 1 if task.end_is_last else 0
    values = []
    chunks = range(0, masks.shape[0], per_forward)
    with torch.no_grad():
        for start in tqdm(chunks, desc="circuits", disable=not progress, leave=False):
            chunk = masks[start:start + per_forward].to(model.device, torch.float32)
            tokens = task.clean_tokens.repeat(chunk.shape[0], 1)
            logits, _ = run_edges(model, graph, tokens, EdgeSpec(masks=chunk, reference=setup.reference), n,
                                  logits_to_keep=keep)
            values.append(mean_over_prompts(metric_fn, logits, bool(keep), n))
    return torch.cat(values)


def _check_gradient_metric(metric: str) -> None:
    if metric not in GRADIENT_METRICS:
        raise ValueError(f"gradient scores need one of {GRADIENT_METRICS} (KL to the clean run has zero "
                         f"gradient at the clean run), got {metric!r}")


def _receiver_gradients(model: HookedModel, task: Task, setup: EdgeSetup, metric: str,
                        writer_weights: torch.Tensor | None) -> torch.Tensor:
    """d mean-metric / d receiver input [n_receivers, n, pos, d_model] at one interpolation point."""
    graph = setup.graph
    n, positions = task.clean_tokens.shape
    probes = torch.zeros(graph.n_receivers, n, positions, model.cfg.d_model, device=model.device,
                         dtype=model.dtype, requires_grad=True)
    spec = EdgeSpec(writer_weights=writer_weights, reference=setup.reference if writer_weights is not None else None,
                    probes=probes)
    metric_fn = row_metric(task, metric, setup.clean_end_logits)
    params = [p for p in model.hf_model.parameters() if p.requires_grad]
    for param in params:  # gradients of activations only: half the backward's cost
        param.requires_grad_(False)
    try:
        with torch.enable_grad():
            logits, _ = run_edges(model, graph, task.clean_tokens, spec)
            metric_fn(task.end_logits(logits), torch.arange(n)).mean().backward()
    finally:
        for param in params:
            param.requires_grad_(True)
    return probes.grad


def _attribution(setup: EdgeSetup, gradients: torch.Tensor) -> torch.Tensor:
    """scores [W, R] = (reference_w - clean_w) . gradient_r summed over prompts, positions,
    d_model; NaN where no edge exists."""
    delta = (setup.reference - setup.clean_writers).float()
    scores = torch.einsum("wnpd,rnpd->wr", delta.expand_as(setup.clean_writers), gradients.float())
    return scores.cpu().masked_fill(~setup.graph.adjacency(), float("nan"))


def eap_scores(model: HookedModel, task: Task, setup: EdgeSetup, metric: str = "logit_diff") -> torch.Tensor:
    """Edge attribution patching: the first-order estimate of each edge's ablation effect,
    from gradients at the clean run. [n_writers, n_receivers], NaN where no edge."""
    _check_gradient_metric(metric)
    return _attribution(setup, _receiver_gradients(model, task, setup, metric, None))


def eap_ig_scores(model: HookedModel, task: Task, setup: EdgeSetup, metric: str = "logit_diff", steps: int = 5,
                  variant: str = "inputs", progress: bool = False) -> torch.Tensor:
    """EAP with integrated gradients: receiver gradients averaged over ``steps`` points
    (midpoints alpha = (k + 1/2) / steps) between the reference (alpha 0) and the clean run
    (alpha 1). ``variant="inputs"`` interpolates the input embedding only; "activations"
    interpolates every writer's output as every receiver reads it."""
    _check_gradient_metric(metric)
    if variant not in IG_VARIANTS:
        raise ValueError(f"variant must be one of {IG_VARIANTS}, got {variant!r}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    total = None
    for step in tqdm(range(steps), desc="EAP-IG", disable=not progress, leave=False):
        alpha = (step + 0.5) / steps
        weights = torch.ones(setup.graph.n_writers, device=model.device)
        if variant == "inputs":
            weights[0] = alpha
        else:
            weights[:] = alpha
        gradients = _receiver_gradients(model, task, setup, metric, weights)
        total = gradients if total is None else total + gradients
    return _attribution(setup, total / steps)


def exact_scores(model: HookedModel, task: Task, setup: EdgeSetup, metric: str = "logit_diff",
                 memory_budget_gb: float = 2.0, progress: bool = False) -> torch.Tensor:
    """Exact edge patching: metric(every edge but one) - metric(full model) for every edge, one
    circuit per batch slot. [n_writers, n_receivers], NaN where no edge. Costs one forward per
    edge (batched), so it is the reference on small graphs."""
    graph = setup.graph
    adjacency = graph.adjacency()
    edges = adjacency.nonzero().tolist()
    full = evaluate_masks(model, task, setup, adjacency[None].float(), metric)[0]
    scores = torch.full(adjacency.shape, float("nan"))
    batch = 64
    for start in tqdm(range(0, len(edges), batch), desc="exact edges", disable=not progress, leave=False):
        chunk = edges[start:start + batch]
        masks = adjacency[None].repeat(len(chunk), 1, 1).float()
        for slot, (writer, receiver) in enumerate(chunk):
            masks[slot, writer, receiver] = 0
        values = evaluate_masks(model, task, setup, masks, metric, memory_budget_gb)
        for (writer, receiver), value in zip(chunk, values):
            scores[writer, receiver] = value - full
    return scores
