"""Edge scores: attribution (EAP, EAP-IG) and exact edge patching, plus the shared pieces
(reference values for ablated edges, per-circuit metric evaluation).

Convention: an edge's score estimates metric(circuit without the edge) - metric(full model),
i.e. what ablating the edge alone does; circuits keep the edges with the largest |score|.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import torch
from tqdm.auto import tqdm

from mechscope.circuits.gradients import receiver_gradients
from mechscope.circuits.graph import ComponentGraph
from mechscope.circuits.intervention import EdgeSpec, run_edges, writer_outputs
from mechscope.errors import MechscopeError
from mechscope.models.hooked_model import HookedModel
from mechscope.patching.activation import mean_over_prompts
from mechscope.patching.metrics import row_metric
from mechscope.tasks.base import Task

EdgeAblation = Literal["patch", "mean", "zero"]
ABLATIONS: tuple[str, ...] = get_args(EdgeAblation)
GradientMetric = Literal["logit_diff", "prob", "prob_diff"]
GRADIENT_METRICS: tuple[str, ...] = get_args(GradientMetric)
IgVariant = Literal["inputs", "activations"]
IG_VARIANTS: tuple[str, ...] = get_args(IgVariant)


@dataclass(frozen=True)
class EdgeSetup:
    """Everything scoring and evaluation share: clean writer outputs [W, n, pos, d], the
    reference values of ablated edges [W, n or 1, pos, d], and the clean END logits [n, vocab]
    (the clean parts are None when built with ``clean=False``: EAP records them itself)."""

    graph: ComponentGraph
    clean_writers: torch.Tensor | None
    reference: torch.Tensor
    clean_end_logits: torch.Tensor | None
    ablation: str


def edge_setup(model: HookedModel, task: Task, graph: ComponentGraph, ablation: str = "patch",
               reference_tokens: torch.Tensor | None = None, clean: bool = True) -> EdgeSetup:
    """Clean writer outputs and the reference values: the corrupted run's ("patch"), the mean
    over ``reference_tokens`` (default: the clean prompts) per position ("mean"), or zeros.
    ``clean=False`` skips the clean forward (EAP gets the clean run from its gradient pass)."""
    if ablation not in ABLATIONS:
        raise MechscopeError(f"ablation must be one of {ABLATIONS}, got {ablation!r}")
    clean_logits = clean_writers = None
    keep = 1 if task.end_is_last else 0  # only END's logits are used
    if clean or ablation != "patch":
        clean_logits, clean_writers = writer_outputs(model, graph, task.clean_tokens, keep)
    if ablation == "patch":
        _, reference = writer_outputs(model, graph, task.corrupted_tokens, keep)
    elif ablation == "mean":
        tokens = task.clean_tokens if reference_tokens is None else reference_tokens
        if tokens.shape[1] != task.clean_tokens.shape[1]:
            raise MechscopeError(f"reference_tokens have {tokens.shape[1]} positions; the task has "
                             f"{task.clean_tokens.shape[1]} (mean ablation is per position)")
        reference = (clean_writers if reference_tokens is None else writer_outputs(model, graph, tokens)[1]).mean(
            1, keepdim=True)
    else:
        reference = torch.zeros_like(clean_writers[:, :1])
    if not clean:
        clean_logits = clean_writers = None
    clean_end = None if clean_logits is None else (clean_logits[:, -1].float() if keep else task.end_logits(clean_logits))
    return EdgeSetup(graph, clean_writers, reference, clean_end, ablation)


def evaluate_masks(model: HookedModel, task: Task, setup: EdgeSetup, masks: torch.Tensor, metric: str = "logit_diff",
                   memory_budget_gb: float = 2.0, progress: bool = False) -> torch.Tensor:
    """[circuits] mean task ``metric`` with each circuit's edges live and all others ablated.
    ``masks`` [circuits, n_writers, n_receivers] (bool or float); batched by the memory budget."""
    n, positions = task.clean_tokens.shape
    graph = setup.graph
    if masks.dim() != 3 or masks.shape[1:] != (graph.n_writers, graph.n_receivers):
        raise MechscopeError(f"masks must be [circuits, {graph.n_writers}, {graph.n_receivers}], got {tuple(masks.shape)}")
    if metric == "kl" and setup.clean_end_logits is None:
        raise MechscopeError("metric='kl' needs the clean run: build the setup with edge_setup(..., clean=True)")
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
        raise MechscopeError(f"gradient scores need one of {GRADIENT_METRICS} (KL to the clean run has zero "
                         f"gradient at the clean run), got {metric!r}")


def _attribution(setup: EdgeSetup, gradients: torch.Tensor, clean_writers: torch.Tensor) -> torch.Tensor:
    """scores [W, R] = (reference_w - clean_w) . gradient_r summed over prompts, positions,
    d_model; NaN where no edge exists."""
    delta = (setup.reference - clean_writers).float().expand_as(clean_writers)
    scores = delta.reshape(delta.shape[0], -1) @ gradients.float().reshape(gradients.shape[0], -1).T
    return scores.cpu().masked_fill(~setup.graph.adjacency(), float("nan"))


def eap_scores(model: HookedModel, task: Task, setup: EdgeSetup, metric: str = "logit_diff") -> torch.Tensor:
    """Edge attribution patching: the first-order estimate of each edge's ablation effect,
    from gradients at the clean run. [n_writers, n_receivers], NaN where no edge."""
    _check_gradient_metric(metric)
    gradients, clean_writers = receiver_gradients(model, task, setup, metric)
    return _attribution(setup, gradients, clean_writers)


def eap_ig_scores(model: HookedModel, task: Task, setup: EdgeSetup, metric: str = "logit_diff", steps: int = 5,
                  variant: str = "inputs", progress: bool = False, steps_per_pass: int = 8) -> torch.Tensor:
    """EAP with integrated gradients: receiver gradients averaged over ``steps`` points
    (midpoints alpha = (k + 1/2) / steps) between the reference (alpha 0) and the clean run
    (alpha 1). ``variant="inputs"`` interpolates the input embedding only; "activations"
    interpolates every writer's output as every receiver reads it. Up to ``steps_per_pass``
    points share one batched forward and backward."""
    _check_gradient_metric(metric)
    if variant not in IG_VARIANTS:
        raise MechscopeError(f"variant must be one of {IG_VARIANTS}, got {variant!r}")
    if steps < 1:
        raise MechscopeError(f"steps must be >= 1, got {steps}")
    total = None
    per_pass = max(1, min(steps, steps_per_pass))
    for start in tqdm(range(0, steps, per_pass), desc="EAP-IG", disable=not progress, leave=False):
        alphas = (torch.arange(start, min(steps, start + per_pass), dtype=torch.float32) + 0.5) / steps
        weights = torch.ones(len(alphas), setup.graph.n_writers, device=model.device)
        if variant == "inputs":
            weights[:, 0] = alphas
        else:
            weights[:] = alphas[:, None]
        gradients, _ = receiver_gradients(model, task, setup, metric, weights)
        total = gradients if total is None else total + gradients
    clean_writers = setup.clean_writers
    if clean_writers is None:
        clean_writers = writer_outputs(model, setup.graph, task.clean_tokens)[1]
    return _attribution(setup, total / steps, clean_writers)


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
