"""Per-row metrics of patched runs, from logits at END."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, get_args

import torch

from mechscope.errors import MechscopeError
from mechscope.tasks.base import Task

PatchMetric = Literal["logit_diff", "prob", "prob_diff", "kl"]
METRICS: tuple[str, ...] = get_args(PatchMetric)
# fn(end_logits [rows, vocab], prompt_index [rows]) -> [rows]
RowMetric = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def row_metric(task: Task, metric: str, clean_end_logits: torch.Tensor | None = None) -> RowMetric:
    """A per-row metric for batches whose row r runs prompt ``prompt_index[r]`` of ``task``.
    "kl" is KL(clean || run) and needs the clean run's END logits [n, vocab]."""
    if metric not in METRICS:
        raise MechscopeError(f"unknown metric {metric!r}; choose one of: {', '.join(METRICS)}")

    def compute(end_logits: torch.Tensor, prompt_index: torch.Tensor) -> torch.Tensor:
        rows = task.select(prompt_index)
        if metric == "logit_diff":
            return rows.logit_diff(end_logits)
        if metric == "prob":
            return rows.answer_prob(end_logits)
        if metric == "prob_diff":
            return rows.prob_diff(end_logits)
        clean = clean_end_logits[prompt_index.to(clean_end_logits.device)]
        return rows.kl_to_clean(end_logits, clean)

    return compute
