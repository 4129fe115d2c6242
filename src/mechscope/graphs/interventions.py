"""Checking a graph against the real model: remove a feature, compare what the graph predicts
with what the real model does.

- **Prediction** (the graph's): removing feature ``s`` (its activation ``a_s`` to 0) changes every
  later feature's input along the graph's edges (per unit of activation: ``edge / a_source``),
  each feature's activation by the same amount (the linearisation the graph makes: attention and
  norms frozen, features on the linear side of their threshold), and the target's input by the
  sum over all those paths.
- **Measurement** (the real model's): the model runs with ``a_s x W_dec[s]`` taken out of its
  layer's MLP output at its position (what the transcoder says the feature wrote); everything
  downstream, real MLPs, attention and norms included, reacts as it does.

Reported per feature, and over the checked features as Spearman's rank correlation and the share
of signs that agree.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mechscope.errors import ConfigError
from mechscope.graphs.attribution import AttributionGraph, Node
from mechscope.graphs.replacement import ReplacementModel, mlp_output
from mechscope.validate import check_int


@dataclass
class InterventionCheck:
    """``features`` checked against ``target``; ``predicted`` and ``measured`` [n] the change of
    the target's input when each feature is removed."""

    target: Node
    features: list[Node]
    predicted: torch.Tensor
    measured: torch.Tensor
    spearman: float
    sign_agreement: float

    def to_json(self) -> dict:
        return {"target": self.target.label, "spearman": self.spearman, "sign_agreement": self.sign_agreement,
                "features": [{"node": node.label, "predicted": float(p), "measured": float(m)}
                             for node, p, m in zip(self.features, self.predicted, self.measured)]}


def predicted_changes(graph: AttributionGraph, target_index: int, removed: list[int]) -> torch.Tensor:
    """[len(removed)] the graph's prediction of the target's input change when each feature
    (index into the graph's features) is removed: propagated along feature -> feature edges."""
    n = graph.n_features
    activations = graph.activations.float()
    safe = torch.where(activations.abs() > 0, activations, torch.ones_like(activations))
    per_unit = graph.adjacency[:, :n] / safe  # [targets, features]: input change per unit of activation
    order = sorted(range(n), key=lambda i: (graph.sources[i].layer, graph.sources[i].position))
    results = []
    for source in removed:
        change = torch.zeros(n)
        change[source] = -activations[source]
        for index in order:  # a feature's change reaches later features through the edges into them
            if index != source and graph.sources[index].layer > graph.sources[source].layer:
                change[index] = per_unit[index] @ change
        results.append(float(per_unit[target_index] @ change))
    return torch.tensor(results)


@torch.no_grad()
def measured_changes(replacement: ReplacementModel, graph: AttributionGraph, target_index: int,
                     removed: list[int]) -> torch.Tensor:
    """[len(removed)] the real model's change of the target's input (a logit minus the mean
    logit, or a direction's weighted logits) when each feature's write is taken out of its MLP output."""
    model, tokens = replacement.model, graph.tokens.to(replacement.model.device)
    target = graph.targets[target_index]

    def read(logits: torch.Tensor) -> float:
        final = logits[0, -1].float()
        if target.kind == "direction":
            return float(final @ graph.directions[target.feature][1].to(final.device).float())
        return float(final[target.feature] - final.mean())

    base = read(model.hf_model(input_ids=tokens).logits)
    changes = []
    for index in removed:
        node = graph.sources[index]
        write = float(graph.activations[index]) * replacement.transcoders[node.layer].W_dec[node.feature].float()

        def remove(activation: torch.Tensor, hook, position=node.position, write=write) -> torch.Tensor:
            changed = activation.clone()
            changed[:, position] -= write.to(activation.device, activation.dtype)
            return changed

        with model.hooks([(mlp_output(node.layer), remove)]):
            changes.append(read(model.hf_model(input_ids=tokens).logits) - base)
    return torch.tensor(changes)


def check_interventions(replacement: ReplacementModel, graph: AttributionGraph, target: int | None = None,
                        features: list[int] | None = None, top: int = 20) -> InterventionCheck:
    """Remove each of ``features`` (indices into the graph's features; default the ``top`` with
    the largest |direct edge| into the target) and compare the graph's prediction of the change
    of target ``target`` (index into ``graph.targets``; default the first logit) with the real
    model's."""
    from scipy.stats import spearmanr

    check_int("top", top, 1)
    if target is None:
        target = graph.n_features
    if not graph.n_features <= target < len(graph.targets):
        raise ConfigError(f"target must index a logit or direction target ({graph.n_features} to "
                          f"{len(graph.targets) - 1}); got {target}")
    if features is None:
        strength = graph.adjacency[target, :graph.n_features].abs()
        features = [int(i) for i in strength.argsort(descending=True)[:top] if strength[i] > 0]
    bad = [i for i in features if not 0 <= i < graph.n_features]
    if bad or not features:
        raise ConfigError(f"features must be 1 or more indices below {graph.n_features}; bad: {bad[:8]}")
    predicted = predicted_changes(graph, target, features)
    measured = measured_changes(replacement, graph, target, features)
    agree = float((torch.sign(predicted) == torch.sign(measured)).float().mean())
    rho = float(spearmanr(predicted.numpy(), measured.numpy()).statistic) if len(features) > 1 else float("nan")
    return InterventionCheck(graph.targets[target], [graph.sources[i] for i in features], predicted, measured,
                             rho, agree)


__all__ = ["InterventionCheck", "check_interventions", "measured_changes", "predicted_changes"]
