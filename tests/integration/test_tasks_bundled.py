"""Tasks: structure, alignment, determinism and metrics; accuracies on SmolLM2."""

import pytest
import torch

from mechscope import tasks


@pytest.mark.smollm2
def test_ioi_positions_alignment_and_corruption(smollm2):
    task = tasks.ioi(smollm2, n=24, seed=3)
    again = tasks.ioi(smollm2, n=24, seed=3)
    assert torch.equal(task.clean_tokens, again.clean_tokens)
    rows = torch.arange(len(task))
    clean = task.clean_tokens
    assert torch.equal(clean[rows, task.positions["IO"]], task.answer_tokens[:, 0])
    assert torch.equal(clean[rows, task.positions["S1"]], task.wrong_tokens[:, 0])
    assert torch.equal(clean[rows, task.positions["S2"]], task.wrong_tokens[:, 0])
    assert (task.positions["S1"] < task.positions["S2"]).all()
    differs = clean != task.corrupted_tokens
    assert differs.sum(1).eq(3).all()  # ABC corruption: exactly the three name tokens change
    for name in ("IO", "S1", "S2"):
        assert differs[rows, task.positions[name]].all()
    orders = tasks.ioi(smollm2, n=8, order="ABBA")
    assert (orders.positions["IO"] < orders.positions["S1"]).all()


@pytest.mark.smollm2
def test_task_accuracies_on_smollm2(smollm2):
    """SmolLM2 solves each task on clean prompts and loses it on corrupted ones (numbers in docs/tasks.md)."""
    results = {}
    for name, build in tasks.TASKS.items():
        task = build(smollm2, n=16) if name != "factual-recall" else build(smollm2)
        with torch.no_grad():
            clean, corrupted = smollm2(task.clean_tokens), smollm2(task.corrupted_tokens)
        results[name] = (task.accuracy(clean).mean().item(), task.logit_diff(clean).mean().item(),
                         task.logit_diff(corrupted).mean().item())
    assert results["ioi"][0] >= 0.9 and results["ioi"][1] > 3.0 and results["ioi"][2] < 1.0
    assert results["greater-than"][0] >= 0.9 and results["greater-than"][1] > results["greater-than"][2] + 3
    assert results["factual-recall"][0] == 1.0 and results["factual-recall"][2] < 0
    assert results["induction"][1] > 5.0 and results["induction"][2] < 1.0
