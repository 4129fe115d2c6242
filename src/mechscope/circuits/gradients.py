"""Gradients of the metric with respect to every receiver's input, from one ordinary backward.

A head's q input x_h feeds only q_h = ln1(x_h) W_q[h] (+ b), so d metric / d x_h is the
gradient at ``hook_q`` (head h) pulled back through that head's projection and ln1 at x. That
needs no per-head copy of the forward: the pass runs the model as is (with every receiver of a
layer reading the same input, which holds for the clean run and for EAP-IG's interpolations),
captures gradients at ``hook_q/k/v``, ``hook_mlp_in`` and the final residual, and does the
per-head pull-back afterwards on [batch, pos, heads, d_model] tensors.
"""

from __future__ import annotations

import torch

from mechscope.circuits.intervention import EdgeRun, EdgeSpec
from mechscope.hooks.points import HookPoint
from mechscope.models.hooked_model import HookedModel
from mechscope.models.weights import PARTS, input_projection
from mechscope.patching.metrics import row_metric
from mechscope.tasks.base import Task


def receiver_gradients(model: HookedModel, task: Task, setup, metric: str,
                       writer_weights: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(d metric / d receiver input [n_receivers, n, pos, d_model], summed over interpolation
    points; the writers' outputs [n_writers, n, pos, d_model] at the first point).

    ``writer_weights`` [points, n_writers] runs one interpolation point per batch slot (see
    :class:`~mechscope.circuits.intervention.EdgeSpec`); None runs the clean prompts. The metric
    is the task metric's mean over prompts, summed over points."""
    graph, cfg = setup.graph, model.cfg
    n, positions = task.clean_tokens.shape
    if writer_weights is not None and writer_weights.dim() == 1:
        writer_weights = writer_weights[None]
    points = 1 if writer_weights is None else writer_weights.shape[0]
    spec = EdgeSpec(writer_weights=writer_weights, reference=None if writer_weights is None else setup.reference,
                    record=True)
    run = EdgeRun(model, graph, spec, n)
    captured: dict[str, torch.Tensor] = {}

    def keep_grad(grad: torch.Tensor, hook: HookPoint) -> None:
        captured[hook.name] = grad

    last = f"blocks.{cfg.n_layers - 1}.hook_resid_post"
    names = [f"blocks.{layer}.attn.hook_{part}" for layer in range(cfg.n_layers) for part in PARTS]
    names += [f"blocks.{layer}.hook_mlp_in" for layer in range(cfg.n_layers)] + [last]
    metric_fn = row_metric(task, metric, setup.clean_end_logits)
    keep = 1 if task.end_is_last else 0  # unembedding only END saves ~10% of the pass
    params = [p for p in model.hf_model.parameters() if p.requires_grad]
    for param in params:  # gradients of activations only: half the backward's cost
        param.requires_grad_(False)
    try:
        with torch.enable_grad(), model.hooks(run.hooks(), [(name, keep_grad) for name in names]):
            logits = model.forward(task.clean_tokens.repeat(points, 1), logits_to_keep=keep)
            rows = torch.arange(points * n)
            end = logits[:, -1].float() if keep else logits[rows, task.positions["END"].repeat(points)].float()
            (metric_fn(end, torch.arange(n).repeat(points)).sum() / n).backward()
        gradients = torch.zeros(graph.n_receivers, n, positions, cfg.d_model, device=model.device)

        def add(receiver: int, grad: torch.Tensor) -> None:
            gradients[receiver] += grad.float().view(points, n, positions, -1).sum(0)

        for layer in range(cfg.n_layers):
            resid = run.attention_inputs[layer].detach()
            ln1 = run._ln1(layer)
            for part in PARTS:
                grad = captured[f"blocks.{layer}.attn.hook_{part}"]  # [rows, pos, heads, d_head]
                weight, _ = input_projection(model, layer, part)
                upstream = torch.einsum("bphe,hed->bphd", grad, weight)
                expanded = resid.unsqueeze(2).expand(-1, -1, grad.shape[2], -1).detach().requires_grad_(True)
                (pulled,) = torch.autograd.grad(ln1(expanded), expanded, upstream)
                for head, receiver in enumerate(graph.feed_map(layer, part, grad.shape[2])):
                    add(receiver, pulled[:, :, head])
            add(graph.receiver_index(f"MLP{layer}"), captured[f"blocks.{layer}.hook_mlp_in"])
        add(graph.n_receivers - 1, captured[last])
    finally:
        for param in params:
            param.requires_grad_(True)
    return gradients, torch.stack([w[:n].detach() for w in run.writers])
