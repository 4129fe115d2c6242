"""Circuit discovery on SmolLM2's IOI, end to end (run in CI)."""

import pytest
import torch

from mechscope import tasks
from mechscope.circuits import (
    ComponentGraph,
    discover,
    eap_scores,
    edge_setup,
    faithfulness,
    faithfulness_curve,
)
from mechscope.patching import attribution_patch

pytestmark = pytest.mark.smollm2


def test_ioi_eap_matches_attribution_patching_and_curve_ends_at_one(smollm2):
    task = tasks.ioi(smollm2, n=4, seed=0)
    graph = ComponentGraph.from_config(smollm2.cfg)
    assert (graph.n_writers, graph.n_receivers, graph.n_edges) == (301, 481, 70651)
    setup = edge_setup(smollm2, task, graph)
    scores = eap_scores(smollm2, task, setup)
    # A head's outgoing edges sum to its first-order node effect: attribution patching (noising).
    atp = attribution_patch(smollm2, task, "heads", mode="noise")
    nodes = torch.stack([torch.nan_to_num(scores[graph.writer_index(f"L{layer}H{head}")]).sum()
                         for layer in range(30) for head in range(9)]).view(30, 9)
    torch.testing.assert_close(nodes, atp.raw - atp.clean_value, atol=2e-3, rtol=2e-3)
    curve = faithfulness_curve(smollm2, task, setup, scores, fractions=(0.01, 0.1, 1.0))
    assert curve.faithfulness[-1] == pytest.approx(1.0)
    assert curve.full > curve.empty + 2  # the clean model vs the fully ablated (corrupted) one


def test_ioi_eap_ig_circuit_contains_the_patching_movers(smollm2):
    task = tasks.ioi(smollm2, n=4, seed=0)
    circuit = discover(smollm2, task, method="eap-ig", steps=3, selection="greedy", n_edges=700, progress=False)
    assert 0 < circuit.n_edges <= 700
    to_logits = {edge["from"] for edge in circuit.edge_list() if edge["to"] == "logits"}
    # examples/ioi_smollm2.py's path patching names L23H3 and L29H1 as the strongest movers
    assert {"L23H3", "L29H1"} <= to_logits
    scored = faithfulness(smollm2, task, edge_setup(smollm2, task, circuit.graph), circuit.edges)
    assert scored.complement_faithfulness < 0.5  # ablating the circuit alone destroys most of IOI
