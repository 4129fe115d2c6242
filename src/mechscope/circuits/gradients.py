"""Gradients of the metric with respect to every receiver's input, from one ordinary backward.

A head's q input x_h feeds only q_h = ln1(x_h) W_q[h] (+ b), so d metric / d x_h is the
gradient at ``hook_q`` (head h) pulled back through that head's projection and ln1 at x. That
needs no per-head copy of the forward: the pass runs the model as is (with every receiver of a
layer reading the same input, which holds for the clean run and for EAP-IG's interpolations),
captures gradients at ``hook_q/k/v``, ``hook_mlp_in`` and the final residual, and does the
per-head pull-back afterwards: one ln1 forward per layer, all heads' cotangents as one batch.
"""

from __future__ import annotations

import torch

from mechscope.circuits.intervention import EdgeRun, EdgeSpec
from mechscope.hooks.names import attn, mlp_in, resid_post
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

    last = resid_post(cfg.n_layers - 1)
    names = [attn(layer, part) for layer in range(cfg.n_layers) for part in PARTS]
    names += [mlp_in(layer) for layer in range(cfg.n_layers)] + [last]
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
        gradients: list[torch.Tensor | None] = [None] * graph.n_receivers

        def add(receiver: int, grad: torch.Tensor) -> None:
            summed = grad.float().view(points, n, positions, -1).sum(0)
            gradients[receiver] = summed if gradients[receiver] is None else gradients[receiver] + summed

        for layer in range(cfg.n_layers):
            pull_back = _Ln1PullBack(model, layer, run.attention_inputs[layer].detach())
            for part in PARTS:
                grad = captured[attn(layer, part)]  # [rows, pos, heads, d_head]
                weight, _ = input_projection(model, layer, part)
                pulled = pull_back(grad, weight)
                for head, receiver in enumerate(graph.feed_map(layer, part, grad.shape[2])):
                    add(receiver, pulled[head])
            add(graph.receiver_index(f"MLP{layer}"), captured[mlp_in(layer)])
        add(graph.n_receivers - 1, captured[last])
    finally:
        for param in params:
            param.requires_grad_(True)
    return torch.stack(gradients), torch.stack([w[:n].detach() for w in run.writers])


class _Ln1PullBack:
    """Vector-Jacobian products of ln1 at one input x [rows, pos, d_model], for many heads'
    cotangents at once, in closed form (RMSNorm and LayerNorm alike):

        dx = r * (u - mean(u) - x_hat * mean(u * x_hat)),   u = cotangent * norm weight,

    with x_hat = normalised x, r = 1 / sqrt(var + eps) and mean(u) only for LayerNorm (whose
    centring it undoes). Autograd through an expanded copy of the norm would take about twice
    as many passes over [heads, rows, pos, d_model] tensors, which dominate this step."""

    def __init__(self, model: HookedModel, layer: int, x: torch.Tensor):
        adapter = model.adapter
        norm = model.hf_model.get_submodule(adapter.path(layer, "ln1"))
        self.weight, _, eps = model.norm_parameters(norm)
        self.centred = model.cfg.norm_type == "layer"
        x = x.float()
        if self.centred:
            x = x - x.mean(-1, keepdim=True)
        self.inverse_rms = torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)  # [rows, pos, 1]
        self.x_hat = x * self.inverse_rms

    def __call__(self, grad: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """grad [rows, pos, heads, d_head] at the projection's output, weight [heads, d_head,
        d_model]: d metric / d x through each head's path, [heads, rows, pos, d_model]."""
        # The norm's weight folds into the projection: u = (grad @ W_h) * weight in one einsum.
        u = torch.einsum("bphe,hed->hbpd", grad.float(), weight.float() * self.weight)
        projection = torch.einsum("hbpd,bpd->hbp", u, self.x_hat).unsqueeze(-1) / u.shape[-1]
        if self.centred:
            u = u - u.mean(-1, keepdim=True)
        return torch.addcmul(u, self.x_hat, projection, value=-1).mul_(self.inverse_rms)
