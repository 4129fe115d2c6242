"""Models whose circuit is known: the hand-set model does what it was built to do, the shipped
trained model's stored circuit is what exact patching finds, and methods recover both."""

import pytest
import torch

from mechscope.circuits import ComponentGraph, edge_setup, exact_scores
from mechscope.circuits.known.benchmark import benchmark, roc_auc
from mechscope.circuits.known.registry import load_known
from mechscope.circuits.known.trained_induction import InductionTraining, train_induction_model


@pytest.fixture(scope="module")
def hand():
    return load_known("hand-induction")


@pytest.fixture(scope="module")
def trained():
    return load_known("trained-induction")


def test_hand_set_heads_attend_where_designed(hand):
    model, task = hand.model, hand.task
    names = ["blocks.0.attn.hook_pattern", "blocks.1.attn.hook_pattern"]
    logits, cache = model.run_with_cache(task.clean_tokens, names=names)
    layer0, layer1 = cache[names[0]], cache[names[1]]
    queries = torch.arange(1, task.clean_tokens.shape[1])
    assert layer0[:, 0, queries, queries - 1].min() > 0.99  # L0H0: previous token
    assert layer0[:, 1, queries, queries].min() > 0.99  # L0H1: its own position
    end, prev = int(task.positions["END"][0]), int(task.positions["PREV"][0])
    unique = [i for i, row in enumerate(task.clean_tokens) if (row[1:] == row[end]).sum() == 2]
    assert layer1[unique, 0, end, prev].min() > 0.99  # L1H0: the token after END's earlier copy
    accuracy = (task.end_logits(logits).argmax(-1) == task.answer_tokens[:, 0]).float()
    assert accuracy[unique].min() == 1.0


def test_only_the_designed_edges_have_effects(hand):
    graph = ComponentGraph.from_config(hand.model.cfg)
    scores = exact_scores(hand.model, hand.task, edge_setup(hand.model, hand.task, graph))
    labels = hand.edge_labels(graph)
    assert scores[labels].abs().min() > 1.0
    assert torch.nan_to_num(scores[~labels]).abs().max() < 1e-4


def test_stored_trained_circuit_is_what_exact_patching_finds(trained):
    graph = ComponentGraph.from_config(trained.model.cfg)
    scores = exact_scores(trained.model, trained.task, edge_setup(trained.model, trained.task, graph))
    found = torch.nan_to_num(scores.abs()) >= trained.data["relative_threshold"] * abs(trained.data["gap"])
    assert torch.equal(found, trained.edge_labels(graph))
    # The hand-set motif: induction heads read tokens through v, write the logits, and at least
    # one takes its keys from a previous-token head.
    motif = trained.data["motif"]
    assert trained.data["previous_token_heads"] and len(motif) >= 1
    assert all(check["reads tokens through v"] and check["writes the logits"] for check in motif.values())
    assert any(check["keys from previous-token heads"] for check in motif.values())


@pytest.mark.parametrize("method", ["eap-ig", "acdc"])
def test_methods_recover_the_known_circuits(method):
    for row in benchmark(method):
        assert row["edge_auc"] >= 0.95 and row["node_auc"] >= 0.95, row


def test_roc_auc_with_ties():
    assert roc_auc(torch.tensor([0.9, 0.8, 0.1, 0.0]), torch.tensor([1, 1, 0, 0])) == 1.0
    assert roc_auc(torch.tensor([0.5, 0.5, 0.5]), torch.tensor([1, 0, 0])) == 0.5
    assert roc_auc(torch.tensor([0.1, 0.9, 0.5]), torch.tensor([1, 0, 0])) == 0.0
    with pytest.raises(ValueError, match="positive"):
        roc_auc(torch.tensor([0.1]), torch.tensor([0]))


def test_training_is_deterministic():
    settings = InductionTraining(steps=5, batch=8)
    first, second = (train_induction_model(settings, progress=False) for _ in range(2))
    for a, b in zip(first.hf_model.parameters(), second.hf_model.parameters()):
        assert torch.equal(a, b)


def test_unknown_model_lists_the_choices():
    with pytest.raises(ValueError, match="hand-induction"):
        load_known("hand")
