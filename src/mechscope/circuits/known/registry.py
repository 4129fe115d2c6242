"""Models whose circuit is known, with the circuit stored as JSON data next to them.

- ``hand-induction``: weights set by hand (:mod:`~mechscope.circuits.known.hand_induction`);
  the circuit is the designed one, restricted to the edges whose values differ between the
  clean and corrupted prompts (positional edges carry the same values in both runs, so no
  patching-based method can, or should, find them; they are listed as ``mechanism_only``).
- ``trained-induction``: trained on CPU (:mod:`~mechscope.circuits.known.trained_induction`);
  the circuit is every edge whose exact patching effect is at least ``relative_threshold`` of
  the clean-corrupted gap, measured once by ``examples/known_circuits.py`` and stored.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from mechscope import tasks
from mechscope.circuits.graph import ComponentGraph
from mechscope.circuits.known.hand_induction import hand_induction_model
from mechscope.circuits.known.trained_induction import trained_induction_model
from mechscope.errors import MechscopeError
from mechscope.models.hooked_model import HookedModel
from mechscope.tasks.base import Task

DATA = Path(__file__).parent / "data"
BUILDERS: dict[str, Callable[[], HookedModel]] = {
    "hand-induction": hand_induction_model,
    "trained-induction": trained_induction_model,
}


@dataclass(frozen=True)
class KnownCircuit:
    """A model, the task its circuit is defined on, and the circuit's edges (writer, receiver)."""

    name: str
    model: HookedModel
    task: Task
    edges: tuple[tuple[str, str], ...]
    data: dict

    def edge_labels(self, graph: ComponentGraph) -> torch.Tensor:
        """[n_writers, n_receivers] bool: True on the circuit's edges."""
        labels = torch.zeros(graph.n_writers, graph.n_receivers, dtype=torch.bool)
        for writer, receiver in self.edges:
            labels[graph.writer_index(writer), graph.receiver_index(receiver)] = True
        return labels

    def node_labels(self, graph: ComponentGraph) -> torch.Tensor:
        """[n_writers] bool: components (not the input) that write on a circuit edge."""
        labels = self.edge_labels(graph).any(1)
        labels[0] = False
        return labels


def circuit_file(name: str) -> Path:
    return DATA / f"{name.replace('-', '_')}_circuit.json"


def task_for(model: HookedModel, settings: dict) -> Task:
    return tasks.induction(model, n=settings["n"], seq_len=settings["seq_len"], seed=settings["seed"])


def load_known(name: str) -> KnownCircuit:
    """Build the model (hand-set: instant; trained: shipped weights) and read its circuit."""
    if name not in BUILDERS:
        raise MechscopeError(f"unknown known-circuit model {name!r}; choose one of: {', '.join(BUILDERS)}")
    data = json.loads(circuit_file(name).read_text())
    model = BUILDERS[name]()
    edges = tuple((edge["from"], edge["to"]) for edge in data["edges"])
    return KnownCircuit(name, model, task_for(model, data["task"]), edges, data)


def known_circuits() -> list[KnownCircuit]:
    return [load_known(name) for name in BUILDERS]
