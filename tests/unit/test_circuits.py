"""Circuit discovery on tiny models: the edge intervention against independent implementations
(path patching, activation patching, AtP), the methods' scores, selection, faithfulness, export."""

import json

import pytest
import torch

import mechscope
from mechscope import tasks
from mechscope.circuits import (
    ComponentGraph,
    EdgeSpec,
    acdc,
    discover,
    eap_ig_scores,
    eap_scores,
    edge_setup,
    evaluate_masks,
    exact_scores,
    faithfulness,
    faithfulness_curve,
    prune,
    run_edges,
    select_edges,
)
from mechscope.circuits.gradients import receiver_gradients
from mechscope.models import SUPPORTED_FAMILIES
from mechscope.models.weights import expand_kv_heads
from mechscope.patching import activation_patch, attribution_patch, path_patch
from mechscope.patching.metrics import row_metric


def correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double() - a.double().mean(), b.double() - b.double().mean()
    return float((a * b).sum() / (a.norm() * b.norm()))


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def setup(request):
    model = mechscope.load_tiny(request.param)
    task = tasks.induction(model, n=3, seq_len=5, seed=5)
    graph = ComponentGraph.from_config(model.cfg)
    return model, task, graph, edge_setup(model, task, graph)


def test_graph_counts_and_structure():
    model = mechscope.load_tiny("llama")  # 4 heads, 2 kv heads
    cfg = model.cfg
    graph = ComponentGraph.from_config(cfg)
    assert graph.n_writers == 1 + cfg.n_layers * (cfg.n_heads + 1)
    per_layer_attention = cfg.n_heads + 2 * cfg.n_kv_heads
    assert graph.n_receivers == cfg.n_layers * (per_layer_attention + 1) + 1
    expected = sum(per_layer_attention * (1 + layer * (cfg.n_heads + 1)) + (1 + layer * (cfg.n_heads + 1) + cfg.n_heads)
                   for layer in range(cfg.n_layers)) + graph.n_writers
    assert graph.n_edges == expected == int(graph.adjacency().sum())
    assert graph.receiver_component(graph.receiver_index("L1KV1.k")) == ["L1H2", "L1H3"]
    merged = ComponentGraph.from_config(cfg, qkv=False)
    assert [r.name for r in merged.receivers[:6]] == ["L0H0", "L0H1", "L0H2", "L0H3", "L0KV0", "L0KV1"]
    with pytest.raises(KeyError, match="L1H2.q"):
        graph.receiver_index("L1H2.z")


def test_parallel_blocks_feed_the_mlp_the_block_input():
    graph = ComponentGraph.from_config(mechscope.load_tiny("gpt_neox").cfg)
    mlp = graph.receivers[graph.receiver_index("MLP1")]
    attention = graph.receivers[graph.receiver_index("L1H0.q")]
    assert mlp.n_upstream == attention.n_upstream  # not the same layer's heads


@pytest.mark.parametrize("family", SUPPORTED_FAMILIES)
def test_all_edges_live_is_the_clean_run_and_none_is_the_corrupted_run(family):
    model = mechscope.load_tiny(family)
    task = tasks.induction(model, n=2, seq_len=4, seed=1)
    graph = ComponentGraph.from_config(model.cfg)
    setup = edge_setup(model, task, graph)
    masks = torch.stack([graph.adjacency(), torch.zeros_like(graph.adjacency())]).float()
    with torch.no_grad():
        logits, _ = run_edges(model, graph, task.clean_tokens.repeat(2, 1),
                              EdgeSpec(masks=masks, reference=setup.reference), n_prompts=2)
        torch.testing.assert_close(logits[:2], model(task.clean_tokens), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(logits[2:], model(task.corrupted_tokens), atol=1e-5, rtol=1e-5)
    # Writers add up to the residual stream (Gemma's post-norm linearised at each run's own sum).
    last = f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"
    _, cache = model.run_with_cache(task.clean_tokens, names=[last])
    bias = sum((model.b_O(layer) for layer in range(model.cfg.n_layers) if model.b_O(layer) is not None
                and not model.adapter.attn_out_is_norm), torch.zeros(()))
    torch.testing.assert_close(setup.clean_writers.sum(0) + bias, cache[last], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("family", SUPPORTED_FAMILIES)
def test_receiver_gradients_equal_per_receiver_probes(family):
    """The fast pull-back of hook_q/k/v gradients equals differentiating a forward in which
    every receiver has its own input (per-head q/k/v rebuilt) and its own probe."""
    model = mechscope.load_tiny(family)
    task = tasks.induction(model, n=2, seq_len=4, seed=3)
    graph = ComponentGraph.from_config(model.cfg)
    edge = edge_setup(model, task, graph)
    n, positions = task.clean_tokens.shape
    for weights in (None, torch.full((graph.n_writers,), 0.3)):
        fast, _ = receiver_gradients(model, task, edge, "logit_diff", weights)
        probes = [torch.zeros(n, positions, model.cfg.d_model, requires_grad=True) for _ in range(graph.n_receivers)]
        with torch.enable_grad():
            logits, _ = run_edges(model, graph, task.clean_tokens, EdgeSpec(
                writer_weights=weights, reference=None if weights is None else edge.reference, probes=probes))
            row_metric(task, "logit_diff")(task.end_logits(logits), torch.arange(n)).mean().backward()
        torch.testing.assert_close(fast, torch.stack([p.grad for p in probes]), atol=1e-5, rtol=1e-4)


def _single_edge_removed(graph, writer: str, receiver: str) -> torch.Tensor:
    mask = graph.adjacency().float()
    mask[graph.writer_index(writer), graph.receiver_index(receiver)] = 0
    return mask[None]


def test_edges_to_the_logits_equal_path_patching(setup):
    model, task, graph, edge = setup
    paths = path_patch(model, task, receivers="logits", freeze_mlps=True, progress=False)
    for layer, head in [(0, 0), (0, 3), (1, 2)]:
        value = evaluate_masks(model, task, edge, _single_edge_removed(graph, f"L{layer}H{head}", "logits"))
        assert float(value) == pytest.approx(float(paths.raw[layer, head]), abs=1e-5)


def test_edges_to_a_query_equal_path_patching(setup):
    model, task, graph, edge = setup
    paths = path_patch(model, task, receivers=[(1, 2)], receiver_input="q", freeze_mlps=True, progress=False)
    for head in range(model.cfg.n_heads):
        value = evaluate_masks(model, task, edge, _single_edge_removed(graph, f"L0H{head}", "L1H2.q"))
        assert float(value) == pytest.approx(float(paths.raw[0, head]), abs=1e-5)


def test_ablating_a_node_equals_noising_that_head(setup):
    model, task, graph, edge = setup
    noised = activation_patch(model, task, "heads", mode="noise", progress=False)
    for layer, head in [(0, 1), (1, 3)]:
        mask = graph.adjacency().float()
        mask[graph.writer_index(f"L{layer}H{head}")] = 0
        assert float(evaluate_masks(model, task, edge, mask[None])) == pytest.approx(
            float(noised.raw[layer, head]), abs=1e-5)


def test_eap_node_sums_equal_attribution_patching(setup):
    model, task, graph, edge = setup
    scores = eap_scores(model, task, edge)
    atp = attribution_patch(model, task, "heads", mode="noise")
    clean = float(atp.clean_value)
    for layer in range(model.cfg.n_layers):
        for head in range(model.cfg.n_heads):
            node = torch.nan_to_num(scores[graph.writer_index(f"L{layer}H{head}")]).sum()
            assert float(node) == pytest.approx(float(atp.raw[layer, head]) - clean, abs=1e-4)


def test_eap_ig_on_inputs_is_complete(setup):
    """Integrated gradients' completeness: the input's edges' scores add up to the metric's
    change from the clean to the corrupted input (up to the midpoint rule's error)."""
    model, task, graph, edge = setup
    scores = eap_ig_scores(model, task, edge, steps=64)
    full, corrupted = evaluate_masks(model, task, edge, torch.stack([graph.adjacency(), torch.zeros_like(
        graph.adjacency())]).float()).tolist()
    assert float(torch.nan_to_num(scores[0]).sum()) == pytest.approx(corrupted - full, rel=1e-3, abs=1e-4)
    eap = eap_scores(model, task, edge)
    assert abs(float(torch.nan_to_num(eap[0]).sum()) - (corrupted - full)) > 1e-3  # first order is not exact


def test_writer_weights_interpolate_between_the_reference_and_the_clean_run(setup):
    model, task, graph, edge = setup
    with torch.no_grad():
        for alpha, expected in ((0.0, task.corrupted_tokens), (1.0, task.clean_tokens)):
            logits, _ = run_edges(model, graph, task.clean_tokens, EdgeSpec(
                writer_weights=torch.full((graph.n_writers,), alpha), reference=edge.reference))
            torch.testing.assert_close(logits, model(expected), atol=1e-5, rtol=1e-5)


def test_ig_with_one_step_at_the_midpoint_differs_from_eap_but_many_steps_converge(setup):
    model, task, graph, edge = setup
    coarse = eap_ig_scores(model, task, edge, steps=32)
    fine = eap_ig_scores(model, task, edge, steps=64)
    adjacency = graph.adjacency()
    assert correlation(coarse[adjacency], fine[adjacency]) > 0.999


def test_faithfulness_of_full_and_empty_circuits(setup):
    model, task, graph, edge = setup
    full = faithfulness(model, task, edge, graph.adjacency())
    assert full.faithfulness == pytest.approx(1.0) and full.complement_faithfulness == pytest.approx(0.0, abs=1e-6)
    empty = faithfulness(model, task, edge, torch.zeros_like(graph.adjacency()))
    assert empty.faithfulness == pytest.approx(0.0, abs=1e-6) and empty.complement_faithfulness == pytest.approx(1.0)
    curve = faithfulness_curve(model, task, edge, exact_scores(model, task, edge), fractions=(0.1, 0.5, 1.0))
    assert curve.faithfulness[-1] == pytest.approx(1.0)
    assert curve.n_edges == [round(0.1 * graph.n_edges), round(0.5 * graph.n_edges), graph.n_edges]
    assert 0 <= curve.cmd and curve.cpr == pytest.approx(
        0.1 * curve.faithfulness[0] + 0.4 * (curve.faithfulness[0] + curve.faithfulness[1]) / 2
        + 0.5 * (curve.faithfulness[1] + 1) / 2)


def test_acdc_extremes_and_batching_do_not_change_the_result(setup):
    model, task, graph, edge = setup
    keep_all, _, _ = acdc(model, task, edge, threshold=-float("inf"), progress=False)
    assert torch.equal(keep_all, graph.adjacency())
    drop_all, _, _ = acdc(model, task, edge, threshold=float("inf"), progress=False)
    assert not drop_all.any()
    sequential, scores, info = acdc(model, task, edge, threshold=0.02, max_batch=1, progress=False)
    batched, _, batched_info = acdc(model, task, edge, threshold=0.02, max_batch=8, progress=False)
    assert torch.equal(sequential, batched) and info["final_metric"] == pytest.approx(batched_info["final_metric"])
    assert batched_info["forwards"] <= info["forwards"] == info["trials"]
    kept_scores = scores[sequential]
    assert (kept_scores >= 0.02).all()  # every kept edge did at least the threshold's damage


def test_selection_and_pruning():
    graph = ComponentGraph.from_config(mechscope.load_tiny("llama").cfg)
    scores = torch.randn(graph.n_writers, graph.n_receivers, generator=torch.Generator().manual_seed(0))
    scores[~graph.adjacency()] = float("nan")
    top = select_edges(graph, scores, "top_n", n=10)
    assert int(top.sum()) == 10 and (scores[top].abs().min() >= scores[graph.adjacency() & ~top].abs().max())
    assert int(select_edges(graph, scores, "threshold", threshold=1.0).sum()) == int((scores.abs() >= 1.0).sum())
    greedy = select_edges(graph, scores, "greedy", n=12)
    assert int(greedy.sum()) == 12 and greedy[:, -1].any()
    # Greedy grows from the logits: every edge feeds a component that itself writes in the circuit.
    for writer, receiver in greedy.nonzero().tolist():
        feeds = graph.receiver_component(receiver)
        assert not feeds or any(greedy[graph.writer_index(name)].any() for name in feeds)
    # An edge into a head that writes nowhere, and an edge out of a head nothing feeds, are pruned.
    edges = torch.zeros_like(graph.adjacency())
    edges[0, graph.receiver_index("L1H0.q")] = True
    edges[graph.writer_index("L1H0"), graph.n_receivers - 1] = True
    edges[0, graph.receiver_index("L0H3.q")] = True  # L0H3 writes nowhere
    edges[graph.writer_index("L0H1"), graph.n_receivers - 1] = True  # nothing feeds L0H1
    pruned = prune(graph, edges)
    assert pruned.nonzero().tolist() == [[0, graph.receiver_index("L1H0.q")],
                                         [graph.writer_index("L1H0"), graph.n_receivers - 1]]


def test_discover_and_export(setup, tmp_path):
    model, task, graph, _ = setup
    circuit = discover(model, task, method="eap-ig", steps=3, n_edges=15, progress=False)
    assert 0 < circuit.n_edges <= 15 and circuit.nodes()[0] == "input" and circuit.nodes()[-1] == "logits"
    data = json.loads(circuit.save(tmp_path / "c.json").read_text())
    assert data["n_edges"] == circuit.n_edges and len(data["edges"]) == circuit.n_edges
    assert data["edges"][0]["score"] == max((e["score"] for e in data["edges"]), key=abs)
    dot = circuit.to_dot()
    assert dot.startswith("digraph") and dot.count("->") == circuit.n_edges
    page = circuit.to_html(tmp_path / "c.html")
    assert "<svg" in page and json.dumps(data["edges"][0]["from"]) in page
    # Explanations as node labels: under the node's name in DOT, in the page's data for its tooltip.
    node = data["edges"][0]["from"]
    labelled = circuit.to_dot({node: 'fires after "the"', "L99H9": "not in the circuit"})
    assert f'"{node}" [label="{node}\\nfires after \'the\'"];' in labelled and "L99H9" not in labelled
    page = circuit.to_html(labels={node: "copies names"})
    assert json.dumps({node: "copies names"}) in page
    nodes = discover(model, task, method="eap", level="node", n_edges=3, progress=False)
    kept = {graph.writers[w] for w in nodes.edges.any(1).nonzero().flatten().tolist()}
    assert len(kept) == 4 and "input" in kept


def test_bad_input_names_the_choices(setup):
    model, task, _, edge = setup
    with pytest.raises(ValueError, match="eap-ig"):
        discover(model, task, method="eapig")
    with pytest.raises(ValueError, match="threshold"):
        discover(model, task, method="acdc")
    with pytest.raises(ValueError, match="patch"):
        discover(model, task, ablation="resample")
    with pytest.raises(ValueError, match="logit_diff"):
        eap_scores(model, task, edge, metric="kl")
    with pytest.raises(ValueError, match="valid options: .*n_edges"):
        discover(model, task, n_edge=5)
    with pytest.raises(ValueError, match="threshold"):
        discover(model, task, method="eap", selection="threshold")
    with pytest.raises(ValueError, match="masks must be"):
        evaluate_masks(model, task, edge, torch.ones(3, 3))


@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_per_query_head_kv_receivers_on_an_equivalent_expanded_model(family):
    model = mechscope.load_tiny(family)  # 4 query heads share 2 kv heads
    expanded = expand_kv_heads(model)
    tokens = torch.randint(0, 250, (2, 7), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(expanded(tokens), model(tokens), atol=1e-5, rtol=1e-5)
    task = tasks.induction(model, n=2, seq_len=4, seed=2)
    circuit = discover(model, task, method="eap", kv_per_query_head=True, n_edges=20, progress=False)
    names = {r.name for r in circuit.graph.receivers}
    assert {"L1H3.k", "L1H3.v"} <= names and not any("KV" in name for name in names)
    # Each query head's k edge scores its own use of the shared key; a kv head's score is their sum.
    shared = edge_setup(model, task, ComponentGraph.from_config(model.cfg))
    grouped = eap_scores(model, task, shared)
    per_head = circuit.scores
    writer = circuit.graph.writer_index("L0H1")
    for part in ("k", "v"):
        split = sum(per_head[writer, circuit.graph.receiver_index(f"L1H{h}.{part}")] for h in (2, 3))
        assert float(split) == pytest.approx(float(grouped[writer, shared.graph.receiver_index(f"L1KV1.{part}")]),
                                             abs=1e-5)
