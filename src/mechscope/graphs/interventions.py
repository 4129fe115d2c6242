"""Checking a graph against the real model: remove or steer a feature, compare what the graph
predicts with what the real model does.

A feature's activation ``a_s`` is set to ``multiplier x a_s``: 0 removes it (the default), 2
doubles it, -1 flips it; the change is ``(multiplier - 1) x a_s``.

- **Prediction** (the graph's): changing feature ``s`` (removal, say: its activation to 0) changes every
  later feature's input along the graph's edges (per unit of activation: ``edge / a_source``),
  each feature's activation by the same amount (the linearisation the graph makes: attention and
  norms frozen, features on the linear side of their threshold), and the target's input by the
  sum over all those paths.
- **Measurement** (the real model's): the model runs with ``a_s x W_dec[s]`` taken out of its
  layer's MLP output at its position (what the transcoder says the feature wrote); everything
  downstream, real MLPs, attention and norms included, reacts as it does.

A supernode (a user's grouping of features) is removed as one: all its features at once.
Reported per feature or supernode, and over all of them as Spearman's rank correlation and the
share of signs that agree.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mechscope.errors import ConfigError
from mechscope.graphs.attribution import AttributionGraph, Node
from mechscope.graphs.replacement import ReplacementModel, mlp_output
from mechscope.validate import check_int, check_number


@dataclass
class InterventionCheck:
    """``removed`` (feature or supernode labels) checked against ``target``; ``predicted`` and
    ``measured`` [n] the change of the target's input when each is removed."""

    target: Node
    removed: list[str]
    predicted: torch.Tensor
    measured: torch.Tensor
    spearman: float
    sign_agreement: float
    multiplier: float = 0.0  # each feature's activation was scaled by this (0: removed)

    def to_json(self) -> dict:
        return {"target": self.target.label, "spearman": self.spearman, "sign_agreement": self.sign_agreement,
                "multiplier": self.multiplier,
                "removed": [{"node": label, "predicted": float(p), "measured": float(m)}
                            for label, p, m in zip(self.removed, self.predicted, self.measured)]}


def predicted_changes(graph: AttributionGraph, target_index: int, removed: list[int | list[int]],
                      multiplier: float = 0.0) -> torch.Tensor:
    """[len(removed)] the graph's prediction of the target's input change when each feature, or
    each group of features (a supernode: indices into the graph's features, changed together),
    is scaled by ``multiplier`` (0: removed): propagated along feature -> feature edges."""
    n = graph.n_features
    activations = graph.activations.float()
    safe = torch.where(activations.abs() > 0, activations, torch.ones_like(activations))
    per_unit = graph.adjacency[:, :n] / safe  # [targets, features]: input change per unit of activation
    order = sorted(range(n), key=lambda i: (graph.sources[i].layer, graph.sources[i].position))
    results = []
    for item in removed:
        group = [item] if isinstance(item, int) else list(item)
        change = torch.zeros(n)
        change[group] = (multiplier - 1) * activations[group]
        first = min(graph.sources[i].layer for i in group)
        for index in order:  # a feature's change reaches later features through the edges into them
            if index not in group and graph.sources[index].layer > first:
                change[index] = per_unit[index] @ change
        results.append(float(per_unit[target_index] @ change))
    return torch.tensor(results)


@torch.no_grad()
def measured_changes(replacement: ReplacementModel, graph: AttributionGraph, target_index: int,
                     removed: list[int | list[int]], multiplier: float = 0.0) -> torch.Tensor:
    """[len(removed)] the real model's change of the target's input (a logit minus the mean
    logit, or a direction's weighted logits) when each feature's write, or each group's writes
    together, are scaled by ``multiplier`` in their MLP outputs (0: taken out)."""
    model, tokens = replacement.model, graph.tokens.to(replacement.model.device)
    target = graph.targets[target_index]

    def read(logits: torch.Tensor) -> float:
        final = logits[0, -1].float()
        if target.kind == "direction":
            return float(final @ graph.directions[target.feature][1].to(final.device).float())
        return float(final[target.feature] - final.mean())

    base = read(model.hf_model(input_ids=tokens).logits)
    changes = []
    for item in removed:
        writes: dict[int, list[tuple[int, torch.Tensor]]] = {}
        for index in [item] if isinstance(item, int) else item:
            node = graph.sources[index]
            for layer, decoder in replacement.written(node.layer):  # a cross-layer feature writes to several
                write = (1 - multiplier) * float(graph.activations[index]) * decoder[node.feature].float()
                writes.setdefault(layer, []).append((node.position, write))

        def remove(activation: torch.Tensor, hook, layer: int) -> torch.Tensor:
            changed = activation.clone()
            for position, write in writes[layer]:
                changed[:, position] -= write.to(activation.device, activation.dtype)
            return changed

        hooks = [(mlp_output(layer), lambda a, h, layer=layer: remove(a, h, layer)) for layer in writes]
        with model.hooks(hooks):
            changes.append(read(model.hf_model(input_ids=tokens).logits) - base)
    return torch.tensor(changes)


def check_interventions(replacement: ReplacementModel, graph: AttributionGraph, target: int | None = None,
                        features: list[int] | None = None, top: int = 20,
                        supernodes: dict[str, list[int]] | None = None, multiplier: float = 0.0) -> InterventionCheck:
    """Scale each of ``features`` (indices into the graph's features; default the ``top`` with
    the largest |direct edge| into the target) by ``multiplier`` (0 removes, 2 doubles), or each
    supernode of ``supernodes`` {label: feature indices} (its features changed together), and
    compare the graph's prediction of the change of target ``target`` (index into
    ``graph.targets``; default the first logit) with the real model's."""
    from scipy.stats import spearmanr

    check_int("top", top, 1)
    check_number("multiplier", multiplier)
    if multiplier == 1:
        raise ConfigError("multiplier=1 changes nothing: use 0 to remove features, 2 to double them, -1 to flip them")
    if target is None:
        target = graph.n_features
    if not graph.n_features <= target < len(graph.targets):
        raise ConfigError(f"target must index a logit or direction target ({graph.n_features} to "
                          f"{len(graph.targets) - 1}); got {target}")
    if supernodes is not None:
        removed: list[int | list[int]] = [list(members) for members in supernodes.values()]
        labels = list(supernodes)
    else:
        if features is None:
            strength = graph.adjacency[target, :graph.n_features].abs()
            features = [int(i) for i in strength.argsort(descending=True)[:top] if strength[i] > 0]
        removed, labels = list(features), [graph.sources[i].label for i in features]
    flat = [i for item in removed for i in ([item] if isinstance(item, int) else item)]
    bad = [i for i in flat if not (isinstance(i, int) and 0 <= i < graph.n_features)]
    empty = [label for label, item in zip(labels, removed) if isinstance(item, list) and not item]
    if bad or empty or not removed:
        raise ConfigError(f"features and supernodes must hold indices below {graph.n_features}; bad indices "
                          f"{bad[:8]}, empty supernodes {empty}")
    predicted = predicted_changes(graph, target, removed, multiplier)
    measured = measured_changes(replacement, graph, target, removed, multiplier)
    agree = float((torch.sign(predicted) == torch.sign(measured)).float().mean())
    rho = float(spearmanr(predicted.numpy(), measured.numpy()).statistic) if len(removed) > 1 else float("nan")
    return InterventionCheck(graph.targets[target], labels, predicted, measured, rho, agree, multiplier)


__all__ = ["InterventionCheck", "check_interventions", "measured_changes", "predicted_changes"]
