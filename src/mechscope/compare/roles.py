"""Head roles in two models and where each role sits by relative depth.

:func:`head_roles` scores every head of a model for each role:

- ``previous_token``, ``induction``, ``duplicate_token``: where the head attends on repeated
  random tokens (:func:`mechscope.analysis.head_scores.head_scores`);
- ``name_mover``: the head's direct logit attribution to logit(IO) - logit(S) at the end of IOI
  prompts (mean over prompts; Wang et al.'s name movers write the indirect object's name);
- ``s_inhibition``: how much the logit difference falls when the head's path to the top name
  movers' queries is patched from the corrupted run (path patching; 1 - normalised score).

Roles are compared between models of different depths by relative depth (layer / (n_layers - 1)).
:func:`compare_depths` takes each role's top heads in both models and measures the gap between
their mean relative depths, against a null that shuffles the layers of each model's score matrix
(the same heads, put at random depths): a role that sits at the same depth in both models gives
a gap below most shuffles.

Shapes: every score matrix is [n_layers, n_heads].
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import torch

from mechscope.analysis.head_scores import head_scores
from mechscope.errors import ConfigError
from mechscope.models.hooked_model import HookedModel
from mechscope.patching.path import path_patch
from mechscope.tasks.base import Task
from mechscope.validate import check_int, check_number

RoleName = Literal["previous_token", "induction", "duplicate_token", "name_mover", "s_inhibition"]
ROLES: tuple[str, ...] = get_args(RoleName)
ATTENTION_ROLES: tuple[str, ...] = ("previous_token", "induction", "duplicate_token")
IOI_ROLES: tuple[str, ...] = ("name_mover", "s_inhibition")


@dataclass(frozen=True)
class HeadRoles:
    """Each role's score for every head of one model: ``scores`` {role: [n_layers, n_heads]}."""

    model: str
    scores: dict[str, torch.Tensor]

    def __post_init__(self) -> None:
        if not self.scores:
            raise ConfigError("HeadRoles needs at least one role's scores")
        unknown = [role for role in self.scores if role not in ROLES]
        if unknown:
            raise ConfigError(f"unknown roles {unknown}; choose from {', '.join(ROLES)}")
        shapes = {tuple(values.shape) for values in self.scores.values()}
        if len(shapes) != 1 or len(next(iter(shapes))) != 2:
            raise ConfigError(f"every role's scores must be one [n_layers, n_heads] shape; got {sorted(shapes)}")

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(next(iter(self.scores.values())).shape)

    def get(self, role: str) -> torch.Tensor:
        if role not in self.scores:
            raise ConfigError(f"{self.model} has no {role!r} scores; it has: {', '.join(self.scores)}")
        return self.scores[role]

    def standardised(self, role: str) -> torch.Tensor:
        """[n_layers, n_heads] the role's score in standard deviations from the mean head."""
        values = self.get(role).double()
        return (values - values.mean()) / values.std().clamp_min(1e-12)

    def top(self, role: str, k: int) -> list[tuple[int, int]]:
        """The ``k`` heads (layer, head) with the highest score for ``role``."""
        n_heads = self.shape[1]
        order = self.get(role).flatten().argsort(descending=True)[:k]
        return [(int(i) // n_heads, int(i) % n_heads) for i in order]

    def role_of(self, layer: int, head: int, fraction: float = 0.05) -> str | None:
        """The role whose top ``fraction`` of heads (at least one, as :func:`compare_depths`
        takes them) includes this head; where several do, the one it stands out in most (the
        largest standardised score); None when it is among no role's top heads."""
        k = top_count(self.shape[0] * self.shape[1], fraction)
        candidates = [role for role in self.scores if (layer, head) in self.top(role, k)]
        if not candidates:
            return None
        return max(candidates, key=lambda role: float(self.standardised(role)[layer, head]))

    def to_json(self, k: int = 5) -> dict:
        return {"model": self.model, "n_layers": self.shape[0], "n_heads": self.shape[1],
                "top": {role: [f"L{layer}H{head}" for layer, head in self.top(role, k)] for role in self.scores},
                "scores": {role: values.tolist() for role, values in self.scores.items()}}


def name_mover_scores(model: HookedModel, task: Task) -> torch.Tensor:
    """[n_layers, n_heads] each head's direct logit attribution to the answer minus the wrong
    token at END (first answer and wrong token of each prompt), averaged over prompts."""
    if not task.end_is_last:
        raise ConfigError(f"task {task.name!r} must end every prompt at its last position")
    with torch.no_grad():
        _, cache = model.run_with_cache(task.clean_tokens.to(model.device))
        heads = cache.stack_head_results(pos_slice=-1)  # [layers * heads, n, d_model]
        attribution = cache.logit_attrs(heads, task.answer_tokens[:, 0].to(model.device),
                                        task.wrong_tokens[:, 0].to(model.device), pos_slice=-1)
    return attribution.float().mean(1).view(model.cfg.n_layers, model.cfg.n_heads).cpu()


def s_inhibition_scores(model: HookedModel, task: Task, name_movers: list[tuple[int, int]],
                        progress: bool = False) -> torch.Tensor:
    """[n_layers, n_heads] the share of the clean-corrupted logit difference lost when the
    head's path to the ``name_movers``' queries is patched (0 for heads at or after them)."""
    if not name_movers:
        raise ConfigError("s_inhibition_scores needs at least one name-mover head to read the queries of")
    result = path_patch(model, task, receivers=name_movers, receiver_input="q", progress=progress)
    return (1 - result.scores).float().cpu()


def head_roles(model: HookedModel, roles: tuple[str, ...] | list[str] = ATTENTION_ROLES, task: Task | None = None,
               name_movers: int = 3, seq_len: int = 20, n_sequences: int = 8, seed: int = 0,
               progress: bool = False) -> HeadRoles:
    """Score every head of ``model`` for each of ``roles``. The IOI roles need ``task`` (e.g.
    ``mechscope.tasks.ioi(model)``); S-inhibition reads the queries of the ``name_movers``
    heads with the largest name-mover score."""
    roles = tuple(roles)
    unknown = [role for role in roles if role not in ROLES]
    if unknown or not roles:
        raise ConfigError(f"unknown roles {unknown or roles}; choose from {', '.join(ROLES)}")
    if any(role in IOI_ROLES for role in roles) and task is None:
        raise ConfigError(f"the roles {[r for r in roles if r in IOI_ROLES]} are measured on IOI: give "
                          "task=mechscope.tasks.ioi(model)")
    check_int("name_movers", name_movers, 1)
    scores: dict[str, torch.Tensor] = {}
    if any(role in ATTENTION_ROLES for role in roles):
        attention = head_scores(model, seq_len=seq_len, n_sequences=n_sequences, seed=seed)
        scores.update({role: attention.get(role).float() for role in roles if role in ATTENTION_ROLES})
    if "name_mover" in roles or "s_inhibition" in roles:
        movers = name_mover_scores(model, task)
        if "name_mover" in roles:
            scores["name_mover"] = movers
        if "s_inhibition" in roles:
            top = HeadRoles(model.cfg.name or model.cfg.family, {"name_mover": movers}).top("name_mover", name_movers)
            scores["s_inhibition"] = s_inhibition_scores(model, task, top, progress)
    return HeadRoles(model.cfg.name or model.cfg.family, {role: scores[role] for role in roles})


def relative_depths(heads: list[tuple[int, int]], n_layers: int) -> torch.Tensor:
    """[len(heads)] layer / (n_layers - 1) of each head (0 for a one-layer model)."""
    return torch.tensor([layer / max(1, n_layers - 1) for layer, _ in heads], dtype=torch.float64)


def top_count(n_heads_total: int, fraction: float) -> int:
    return max(1, round(fraction * n_heads_total))


@dataclass(frozen=True)
class DepthComparison:
    """Where one role's top heads sit in two models: their mean relative depths, the gap between
    them, and the gap under shuffled layers (mean, 5th percentile, one-sided p-value: the share of
    shuffles with a gap at most the observed one)."""

    role: str
    depth_a: float
    depth_b: float
    gap: float
    null_mean: float
    null_low: float
    p_value: float
    heads_a: list[str]
    heads_b: list[str]

    def to_json(self) -> dict:
        return dict(self.__dict__)


def _mean_depth(scores: torch.Tensor, k: int) -> float:
    n_heads = scores.shape[1]
    heads = [(int(i) // n_heads, 0) for i in scores.flatten().argsort(descending=True)[:k]]
    return float(relative_depths(heads, scores.shape[0]).mean())


@dataclass(frozen=True)
class RoleDepths:
    """Every shared role's :class:`DepthComparison` and the same test over all roles at once:
    the mean gap, its mean under the shuffles and its p-value (each shuffle permutes a model's
    layers once for all its roles, so roles that sit together move together)."""

    roles: list[DepthComparison]
    mean_gap: float
    null_mean_gap: float
    p_value: float

    def to_json(self) -> dict:
        return {"roles": [role.to_json() for role in self.roles], "mean_gap": self.mean_gap,
                "null_mean_gap": self.null_mean_gap, "p_value": self.p_value}


def _p_value(null: torch.Tensor, observed: float) -> float:
    """One-sided: the share of the null at most ``observed`` (the +1s keep it above 0)."""
    return float(((null <= observed + 1e-12).sum() + 1) / (len(null) + 1))


def compare_depths(roles_a: HeadRoles, roles_b: HeadRoles, fraction: float = 0.05, shuffles: int = 1000,
                   seed: int = 0) -> RoleDepths:
    """For every role both models were scored on: the top ``fraction`` of each model's heads
    (at least one), their mean relative depth in each model and the gap, against ``shuffles``
    layer shuffles of both models' score matrices."""
    check_number("fraction", fraction, 0, 1, strict_minimum=True)
    check_int("shuffles", shuffles, 1)
    shared = [role for role in roles_a.scores if role in roles_b.scores]
    if not shared:
        raise ConfigError(f"{roles_a.model} has roles {list(roles_a.scores)} and {roles_b.model} "
                          f"{list(roles_b.scores)}: none in common to compare")
    k_a = top_count(roles_a.shape[0] * roles_a.shape[1], fraction)
    k_b = top_count(roles_b.shape[0] * roles_b.shape[1], fraction)
    generator = torch.Generator().manual_seed(seed)
    orders = [(torch.randperm(roles_a.shape[0], generator=generator), torch.randperm(roles_b.shape[0],
                                                                                     generator=generator))
              for _ in range(shuffles)]
    results, nulls = [], []
    for role in shared:
        a, b = roles_a.get(role), roles_b.get(role)
        depth_a, depth_b = _mean_depth(a, k_a), _mean_depth(b, k_b)
        gap = abs(depth_a - depth_b)
        null = torch.tensor([abs(_mean_depth(a[order_a], k_a) - _mean_depth(b[order_b], k_b))
                             for order_a, order_b in orders], dtype=torch.float64)
        nulls.append(null)
        results.append(DepthComparison(
            role, depth_a, depth_b, gap, float(null.mean()), float(null.quantile(0.05)), _p_value(null, gap),
            [f"L{layer}H{head}" for layer, head in roles_a.top(role, k_a)],
            [f"L{layer}H{head}" for layer, head in roles_b.top(role, k_b)]))
    mean_gap = sum(result.gap for result in results) / len(results)
    null_mean = torch.stack(nulls).mean(0)
    return RoleDepths(results, mean_gap, float(null_mean.mean()), _p_value(null_mean, mean_gap))


__all__ = ["ATTENTION_ROLES", "DepthComparison", "HeadRoles", "IOI_ROLES", "ROLES", "RoleDepths", "RoleName", "compare_depths",
           "head_roles", "name_mover_scores", "relative_depths", "s_inhibition_scores", "top_count"]
