"""Induction: a random token sequence repeated; the second copy is predictable from the first."""

from __future__ import annotations

import torch

from mechscope.analysis.head_scores import repeated_random_tokens
from mechscope.models.hooked_model import HookedModel
from mechscope.tasks.base import Task
from mechscope.validate import check_int


def induction(model: HookedModel, n: int = 32, seq_len: int = 12, seed: int = 0) -> Task:
    """Clean: [BOS] r_0..r_{L-1} r_0..r_{L-2}; the answer is r_{L-1}. Corrupted: the first copy
    is replaced by other random tokens, so nothing earlier predicts the answer. The wrong token
    is the corrupted first copy's r'_{L-1} (what a copy of the corrupted prefix would predict).
    Positions: END, and "PREV" = the answer's position in the first copy (the induction target).
    """
    check_int("n", n, minimum=1)
    check_int("seq_len", seq_len, minimum=2)
    clean = repeated_random_tokens(model, seq_len, n, seed)[:, :-1]  # drop the final answer token
    other = repeated_random_tokens(model, seq_len, n, seed + 1)
    corrupted = clean.clone()
    corrupted[:, 1 : 1 + seq_len] = other[:, 1 : 1 + seq_len]
    answers = clean[:, seq_len].unsqueeze(1)
    wrong = corrupted[:, seq_len].unsqueeze(1)
    same = answers == wrong
    if same.any():  # vanishingly rare; keep the metric defined
        wrong[same] = (wrong[same] + 1) % model.cfg.d_vocab
    positions = {"PREV": torch.full((n,), seq_len), "END": torch.full((n,), clean.shape[1] - 1)}
    return Task("induction", clean, corrupted, answers, wrong, positions,
                model.to_string(clean), model.to_string(corrupted))
