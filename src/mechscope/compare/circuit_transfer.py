"""Carrying a circuit from one model to another by the roles of its heads.

A circuit found in model A (its heads) is mapped onto model B role by role: each of A's heads
takes the role it stands out in (:meth:`HeadRoles.role_of`); for every role, B contributes its
own top heads of that role, as many as A's circuit has of it (scaled by the ratio of the models' head
counts when ``scale_by_heads``). Heads of A with no role are reported, not mapped.

:func:`circuit_faithfulness` then runs the mapped heads on B's task (node level: the chosen heads
and every MLP live, every other head's outputs taken from the corrupted run) and compares the
faithfulness with random head sets of the same size, the null: a mapping that carries the
circuit's mechanism beats most random circuits.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mechscope.circuits.circuit import node_edges
from mechscope.circuits.evaluation import Faithfulness, faithfulness
from mechscope.circuits.graph import ComponentGraph
from mechscope.circuits.scoring import edge_setup, evaluate_masks
from mechscope.compare.roles import HeadRoles
from mechscope.errors import ConfigError
from mechscope.models.hooked_model import HookedModel
from mechscope.tasks.base import Task
from mechscope.validate import check_int, check_number


def head_label(layer: int, head: int) -> str:
    return f"L{layer}H{head}"


@dataclass(frozen=True)
class RoleMapping:
    """``source_roles`` {A's head: its role, or None}; ``mapped`` {role: B's heads for it};
    ``unmapped`` A's heads with no role."""

    source_roles: dict[str, str | None]
    mapped: dict[str, list[str]]

    @property
    def target_heads(self) -> list[str]:
        return [head for heads in self.mapped.values() for head in heads]

    @property
    def unmapped(self) -> list[str]:
        return [head for head, role in self.source_roles.items() if role is None]

    def to_json(self) -> dict:
        return {"source_roles": self.source_roles, "mapped": self.mapped, "unmapped": self.unmapped}


def _parse(head: str | tuple[int, int], shape: tuple[int, int]) -> tuple[int, int]:
    if isinstance(head, str):
        try:
            layer, index = (int(part) for part in head.removeprefix("L").split("H"))
        except ValueError:
            raise ConfigError(f"head {head!r} is not of the form L<layer>H<head>") from None
    else:
        layer, index = int(head[0]), int(head[1])
    if not (0 <= layer < shape[0] and 0 <= index < shape[1]):
        raise ConfigError(f"head {head!r} is outside a model of {shape[0]} layers x {shape[1]} heads")
    return layer, index


def map_by_role(source_heads: list[str] | list[tuple[int, int]], roles_a: HeadRoles, roles_b: HeadRoles,
                fraction: float = 0.05, scale_by_heads: bool = True) -> RoleMapping:
    """Map A's circuit heads onto B by role (see the module docstring); a head's role is the one
    among whose top ``fraction`` of heads it is (:meth:`HeadRoles.role_of`)."""
    check_number("fraction", fraction, 0, 1, strict_minimum=True)
    if not source_heads:
        raise ConfigError("give at least one head of the source circuit")
    parsed = [_parse(head, roles_a.shape) for head in source_heads]
    source_roles = {head_label(*head): roles_a.role_of(*head, fraction=fraction) for head in parsed}
    missing = sorted({role for role in source_roles.values() if role is not None and role not in roles_b.scores})
    if missing:
        raise ConfigError(f"{roles_b.model} was not scored for the roles {missing}; score both models on the "
                          "same roles")
    ratio = (roles_b.shape[0] * roles_b.shape[1]) / (roles_a.shape[0] * roles_a.shape[1]) if scale_by_heads else 1.0
    taken: set[tuple[int, int]] = set()
    mapped: dict[str, list[str]] = {}
    for role in dict.fromkeys(role for role in source_roles.values() if role is not None):
        wanted = max(1, round(ratio * sum(1 for value in source_roles.values() if value == role)))
        chosen = [head for head in roles_b.top(role, roles_b.shape[0] * roles_b.shape[1]) if head not in taken]
        taken.update(chosen[:wanted])
        mapped[role] = [head_label(*head) for head in chosen[:wanted]]
    return RoleMapping(source_roles, mapped)


def circuit_heads(model: HookedModel, task: Task, n: int, steps: int = 5, progress: bool = False) -> list[str]:
    """The ``n`` heads of ``model`` with the largest node scores (EAP-IG, each component's
    outgoing edge scores summed) on ``task``: a head-level circuit to carry to another model."""
    from mechscope.circuits.discover import discover

    check_int("n", n, 1, model.cfg.n_layers * model.cfg.n_heads)
    circuit = discover(model, task, method="eap-ig", level="node", steps=steps, progress=progress)
    heads = [(abs(float(score)), name) for name, score in zip(circuit.graph.writers, circuit.node_scores)
             if name != "input" and not name.startswith("MLP")]
    return [name for _, name in sorted(heads, reverse=True)[:n]]


def head_circuit(graph: ComponentGraph, heads: list[str]) -> torch.Tensor:
    """Edge mask [W, R] of the node-level circuit: ``heads``, every MLP and the input live."""
    keep = torch.zeros(graph.n_writers, dtype=torch.bool)
    for index, name in enumerate(graph.writers):
        keep[index] = name.startswith("MLP") or name in heads
    unknown = sorted(set(heads) - set(graph.writers))
    if unknown:
        raise ConfigError(f"heads {unknown} are not in this model's graph")
    return node_edges(graph, keep)


@dataclass(frozen=True)
class CircuitTransfer:
    """The mapped circuit's faithfulness on the target model against ``random`` head sets of the
    same size (``p_value``: share of random circuits at least as faithful, one-sided)."""

    heads: list[str]
    scores: Faithfulness
    random: list[float]

    @property
    def faithfulness(self) -> float:
        return self.scores.faithfulness

    @property
    def p_value(self) -> float:
        better = sum(value >= self.faithfulness for value in self.random)
        return (better + 1) / (len(self.random) + 1)

    def to_json(self) -> dict:
        random = torch.tensor(self.random, dtype=torch.float64)
        return {"heads": self.heads, "faithfulness": self.faithfulness,
                "complement_faithfulness": self.scores.complement_faithfulness,
                "random_mean": float(random.mean()), "random_95th": float(random.quantile(0.95)),
                "random_circuits": len(self.random), "p_value": self.p_value}


def circuit_faithfulness(model: HookedModel, task: Task, heads: list[str], random_circuits: int = 50,
                         seed: int = 0, metric: str = "logit_diff") -> CircuitTransfer:
    """Faithfulness of the node-level circuit of ``heads`` (with every MLP) on ``task``, and of
    ``random_circuits`` random sets of as many heads (one batched evaluation)."""
    check_int("random_circuits", random_circuits, 1)
    graph = ComponentGraph.from_config(model.cfg)
    if not heads:
        raise ConfigError("the circuit has no heads to evaluate")
    edges = head_circuit(graph, heads)
    setup = edge_setup(model, task, graph)
    scores = faithfulness(model, task, setup, edges, metric)
    all_heads = [name for name in graph.writers if name not in ("input",) and not name.startswith("MLP")]
    generator = torch.Generator().manual_seed(seed)
    masks = torch.stack([head_circuit(graph, [all_heads[i] for i in torch.randperm(len(all_heads),
                                                                                  generator=generator)[:len(heads)]])
                         for _ in range(random_circuits)]).float()
    values = evaluate_masks(model, task, setup, masks, metric)
    random = [(float(value) - scores.empty) / (scores.full - scores.empty) if scores.full != scores.empty
              else float("nan") for value in values]
    return CircuitTransfer(list(heads), scores, random)


__all__ = ["CircuitTransfer", "RoleMapping", "circuit_faithfulness", "circuit_heads", "head_circuit", "head_label", "map_by_role"]
