"""ACDC (automatic circuit discovery, Conmy et al. 2023): iterative pruning with a threshold.

Receivers are visited from the logits backwards; for each, its incoming edges are tried from
the latest writer to the earliest: an edge is removed for good when removing it (given every
removal so far) damages the metric by less than ``threshold`` (damage = KL increase for
"kl", decrease of the task metric otherwise). A receiver whose component no longer has any
outgoing edge loses its incoming edges without trials. At node level whole components are
tried instead, latest first.

Trials are exact and sequential; to use batching, a run of upcoming trials is evaluated in one
forward against the current circuit and consumed up to the first removal (the ones after it are
re-tried against the new circuit), so the result equals one-trial-per-forward ACDC.
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from mechscope.circuits.circuit import _components, node_edges
from mechscope.circuits.scoring import EdgeSetup, evaluate_masks
from mechscope.models.hooked_model import HookedModel
from mechscope.tasks.base import Task


def acdc(model: HookedModel, task: Task, setup: EdgeSetup, threshold: float, metric: str = "kl",
         level: str = "edge", max_batch: int = 16, progress: bool = True) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Returns (edge mask [W, R] of the circuit, scores [W, R] = each tried edge's (or node's,
    on its edges) damage when tried, 0 where never tried, NaN off the graph, info)."""
    graph = setup.graph
    adjacency = graph.adjacency()
    higher_is_worse = metric == "kl"
    if level == "node":
        units = [[(w, r) for r in range(graph.n_receivers) if adjacency[w, r]] for w in reversed(range(1, graph.n_writers))]
        mask = node_edges(graph, torch.ones(graph.n_writers, dtype=torch.bool))
    else:
        mask = adjacency.clone()
        units = None
    scores = torch.zeros(adjacency.shape).masked_fill(~adjacency, float("nan"))
    state = {"current": float(evaluate_masks(model, task, setup, mask[None].float(), metric)[0]), "trials": 0,
             "forwards": 0}

    def try_in_order(groups: list[list[tuple[int, int]]]) -> None:
        """Try removing each group in order; runs of trials share a forward (see module doc)."""
        index, batch = 0, 1
        while index < len(groups):
            chunk = groups[index:index + batch]
            trial_masks = mask[None].repeat(len(chunk), 1, 1)
            for slot, group in enumerate(chunk):
                for writer, receiver in group:
                    trial_masks[slot, writer, receiver] = False
            values = evaluate_masks(model, task, setup, trial_masks.float(), metric).tolist()
            state["forwards"] += 1
            consumed, removed = len(chunk), False
            for slot, (group, value) in enumerate(zip(chunk, values)):
                damage = value - state["current"] if higher_is_worse else state["current"] - value
                for writer, receiver in group:
                    scores[writer, receiver] = damage
                state["trials"] += 1
                if damage < threshold:
                    for writer, receiver in group:
                        mask[writer, receiver] = False
                    state["current"], consumed, removed = value, slot + 1, True
                    break
            index += consumed  # trials after a removal were measured against the old circuit
            batch = 1 if removed else min(max_batch, batch * 2)

    if units is not None:
        try_in_order(units)
    else:
        components = _components(graph)
        for receiver in tqdm(reversed(range(graph.n_receivers)), total=graph.n_receivers, desc="ACDC",
                             disable=not progress, leave=False):
            feeds = components[receiver]
            if feeds and not any(mask[w].any() for w in feeds):
                mask[:, receiver] = False  # nothing downstream reads this receiver any more
                continue
            try_in_order([[(w, receiver)] for w in reversed(range(graph.receivers[receiver].n_upstream))
                          if mask[w, receiver]])
    return mask, scores, {"trials": state["trials"], "forwards": state["forwards"], "threshold": threshold,
                          "metric": metric, "final_metric": state["current"]}
