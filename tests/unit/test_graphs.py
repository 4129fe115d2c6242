"""The replacement model and attribution on tiny models of four families, with random per-layer
transcoders: the replacement's logits equal the real model's on the prompt; every target's input
is its incoming edges plus the bias constant (completeness of the linear decomposition); an edge
is the direct effect (doubling a source moves its target by the edge); no edge runs backwards
(in layer or position); transcoders that do not fit the model are refused with the reason."""

import pytest
import torch

import mechscope
from mechscope.errors import ConfigError
from mechscope.graphs import (
    ReplacementModel,
    attribute,
    constant_inputs,
    mlp_input,
    mlp_output,
    replacement_logits,
)
from mechscope.sae import SAE, SAEConfig

FAMILIES = ("llama", "gpt2", "qwen2", "gpt_neox")


def transcoders(model, d_sae=40, k=5, seed=0):
    torch.manual_seed(seed)
    return {layer: SAE(SAEConfig(model.cfg.d_model, d_sae, "topk", k=k, d_out=model.cfg.d_model,
                                 hook_name=mlp_input(layer), hook_name_out=mlp_output(layer)))
            for layer in range(model.cfg.n_layers)}


def assert_logit_targets_are_the_real_models(model, tokens, graph):
    """The graph's logit targets are the real model's last logits minus their mean."""
    with torch.no_grad():
        real = model.hf_model(input_ids=tokens).logits[0, -1].float()
    rows = [i for i, node in enumerate(graph.targets) if node.kind == "logit"]
    expected = torch.stack([real[graph.targets[i].feature] - real.mean() for i in rows])
    assert torch.allclose(graph.target_inputs[rows], expected, atol=1e-4, rtol=0)


def assert_complete(replacement, graph):
    """Every target's input is the sum of its incoming edges plus its bias constant."""
    explained = graph.adjacency.sum(1) + constant_inputs(replacement, graph)
    scale = float(graph.target_inputs.abs().max())
    assert torch.allclose(explained, graph.target_inputs, atol=1e-4 * scale, rtol=0)


@pytest.fixture(scope="module", params=FAMILIES)
def traced(request):
    model = mechscope.load_tiny(request.param)
    replacement = ReplacementModel(model, transcoders(model))
    tokens = model.to_tokens("the cat sat on the mat")
    return model, replacement, tokens, attribute(replacement, tokens, batch_size=64, progress=False)


def test_the_replacement_gives_the_real_logits(traced):
    model, replacement, tokens, graph = traced
    with torch.no_grad():
        real = model.hf_model(input_ids=tokens).logits[0].float()
    assert torch.allclose(replacement_logits(replacement, tokens), real, atol=1e-4, rtol=0)
    # The graph's own run too (BOS features folded into its error nodes): its logit targets are
    # the real model's demeaned logits.
    assert_logit_targets_are_the_real_models(model, tokens, graph)
    assert graph.info["folded_into_errors"] > 0  # the BOS features


def test_each_target_is_its_incoming_edges_plus_the_bias_constant(traced):
    _, replacement, _, graph = traced
    assert graph.n_features > 20 and len(graph.targets) > graph.n_features  # features and logits
    assert_complete(replacement, graph)


def test_an_edge_is_the_direct_effect_of_its_source(traced):
    _, replacement, tokens, graph = traced
    prompt = replacement.freeze(tokens)
    features = graph.adjacency[:graph.n_features, :graph.n_features]
    target, source = divmod(int(features.abs().argmax()), graph.n_features)
    node = graph.sources[source]
    assert abs(float(features[target, source])) > 0
    doubled = {layer: values.unsqueeze(0).clone() for layer, values in prompt.activations.items()}
    doubled[node.layer][0, node.position, node.feature] *= 2
    from mechscope.graphs.attribution import _run, _seeds

    with torch.no_grad():
        reads, logits = _run(replacement, prompt, 1, doubled, {layer: e.unsqueeze(0) for layer, e in prompt.errors.items()},
                             prompt.embeddings.unsqueeze(0))
        moved = _seeds(replacement, reads, logits, [graph.targets[target]], [])
    change = float(moved[0] - graph.target_inputs[target])
    assert change == pytest.approx(float(features[target, source]), rel=1e-3, abs=1e-5)


def test_no_edge_runs_backwards(traced):
    _, _, tokens, graph = traced
    n_pos = tokens.shape[1]
    for i, target in enumerate(graph.targets[:graph.n_features]):
        for j, source in enumerate(graph.sources):
            weight = float(graph.adjacency[i, j])
            if source.kind == "feature" and (source.layer >= target.layer or source.position > target.position):
                assert weight == 0, (source, target)
            if source.kind == "error" and (source.layer >= target.layer or source.position > target.position):
                assert weight == 0, (source, target)
            if source.kind == "embedding" and source.position > target.position:
                assert weight == 0, (source, target)
    assert graph.adjacency.shape == (len(graph.targets), len(graph.sources))
    assert len(graph.sources) == graph.n_features + (len({n.layer for n in graph.sources if n.kind == "error"}) + 1) * n_pos


def test_transcoders_that_do_not_fit_are_refused():
    model = mechscope.load_tiny("llama")
    good = transcoders(model)
    with pytest.raises(ConfigError, match="missing layers"):
        ReplacementModel(model, {0: good[0]})
    wide = dict(good)
    wide[1] = SAE(SAEConfig(model.cfg.d_model + 8, 40, "topk", k=5, d_out=model.cfg.d_model + 8,
                            hook_name=mlp_input(1), hook_name_out=mlp_output(1)))
    with pytest.raises(ConfigError, match="layer 1: .*another model"):
        ReplacementModel(model, wide)
    elsewhere = dict(good)
    elsewhere[0] = SAE(SAEConfig(model.cfg.d_model, 40, "topk", k=5, d_out=model.cfg.d_model,
                                 hook_name="blocks.0.hook_resid_pre", hook_name_out=mlp_output(0)))
    with pytest.raises(ConfigError, match="layer 0: the transcoder reads"):
        ReplacementModel(model, elsewhere)
    plain = dict(good)
    plain[2] = SAE(SAEConfig(model.cfg.d_model, 40, "topk", k=5, hook_name=mlp_input(2)))
    with pytest.raises(ConfigError, match="not a transcoder"):
        ReplacementModel(model, plain)
    gemma = mechscope.load_tiny("gemma3")
    with pytest.raises(ConfigError, match="gemma3"):
        ReplacementModel(gemma, transcoders(gemma))


def test_capped_features_are_chosen_by_influence_and_the_rest_join_the_error_nodes():
    model = mechscope.load_tiny("llama")
    replacement = ReplacementModel(model, transcoders(model))
    tokens = model.to_tokens("the cat sat on the mat")
    full = attribute(replacement, tokens, batch_size=64, progress=False)
    # One ranking (12 features fit one round): by influence through the logits' rows alone.
    graph = attribute(replacement, tokens, max_features=12, batch_size=12, update_every=1, progress=False)
    assert graph.n_features == 12 and graph.info["folded_into_errors"] == graph.info["active_features"] - 12
    n = full.n_features
    logit_rows = full.adjacency[n:, :n].abs()
    shares = logit_rows / full.adjacency[n:].abs().sum(1, keepdim=True)
    expected = (full.logit_probabilities[:, None] * shares).sum(0).argsort(descending=True)[:12]
    chosen = [full.sources.index(node) for node in graph.sources[:12]]
    assert sorted(chosen) == sorted(expected.tolist())
    # The kept edges are the full graph's; a left-out feature's edges joined its error node.
    rows = chosen + list(range(n, len(full.targets)))
    assert torch.allclose(graph.adjacency[:, :12], full.adjacency[rows][:, chosen], atol=1e-6)
    left_out = [j for j in range(n) if j not in chosen]
    errors = full.adjacency[rows][:, n:n + model.cfg.n_layers * tokens.shape[1]].clone()
    for j in left_out:
        node = full.sources[j]
        errors[:, node.layer * tokens.shape[1] + node.position] += full.adjacency[rows, j]
    assert torch.allclose(graph.adjacency[:, 12:12 + errors.shape[1]], errors, atol=1e-5)
    assert_logit_targets_are_the_real_models(model, tokens, graph)
    assert_complete(replacement, graph)
    # Several rounds of re-ranking: still 12 distinct features, still exact.
    rounds = attribute(replacement, tokens, max_features=12, batch_size=2, update_every=1, progress=False)
    assert len(set(rounds.sources[:12])) == 12
    assert_complete(replacement, rounds)


def test_influence_is_conserved_and_pruning_keeps_what_it_says(traced):
    from mechscope.graphs.prune import influence, logit_weights, node_list, prune

    _, _, _, graph = traced
    nodes = node_list(graph)
    spread = influence(graph)
    inputs = torch.tensor([node.kind in ("error", "embedding") for node in nodes])
    # Every unit of the logits' weight ends at an error node or an embedding.
    assert float(spread[inputs].sum()) == pytest.approx(float(logit_weights(graph).sum()), rel=1e-4)
    everything = prune(graph, node_share=1.0, edge_share=1.0)
    # Everything with any influence stays (a feature no path leads from to a logit has none).
    assert torch.equal(everything.keep_nodes, (spread > 0) | ~torch.tensor([n.kind == "feature" for n in nodes]))
    assert everything.pruned_replacement_score == pytest.approx(everything.replacement_score, rel=1e-4)
    assert everything.pruned_completeness_score == pytest.approx(everything.completeness_score, rel=1e-4)
    assert 0 < everything.replacement_score < 1 and 0 < everything.completeness_score < 1
    pruned = prune(graph, node_share=0.5, edge_share=0.9)
    features = torch.tensor([node.kind == "feature" for node in nodes])
    kept = pruned.keep_nodes & features
    assert 0 < int(kept.sum()) < int(features.sum())
    # The kept features are the most influential ones and hold at least half of the influence.
    assert float(spread[kept].min()) >= float(spread[features & ~pruned.keep_nodes].max())
    assert float(spread[kept].sum()) >= 0.5 * float(spread[features].sum())
    assert not bool((pruned.keep_edges & ~(pruned.keep_nodes[:, None] & pruned.keep_nodes[None, :])).any())
    assert pruned.pruned_completeness_score <= everything.completeness_score + 1e-6


def test_sparse_decoding_equals_the_transcoders_own_and_skip_transcoders_stay_exact():
    from mechscope.graphs.replacement import SparseFeatures, decode_sparse

    model = mechscope.load_tiny("llama")
    torch.manual_seed(1)
    skip = {layer: SAE(SAEConfig(model.cfg.d_model, 40, "topk", k=5, d_out=model.cfg.d_model, skip_connection=True,
                                 hook_name=mlp_input(layer), hook_name_out=mlp_output(layer)))
            for layer in range(model.cfg.n_layers)}
    for transcoder in skip.values():
        with torch.no_grad():
            transcoder.W_skip.normal_(0, 0.05)
    x = torch.randn(3, 7, model.cfg.d_model)
    dense = torch.zeros(3, 7, 40)
    positions, features = torch.tensor([1, 4, 4, 6]), torch.tensor([3, 0, 39, 3])
    values = torch.rand(3, 4)
    dense[:, positions, features] = values
    assert torch.allclose(decode_sparse(skip[0], SparseFeatures(positions, features, values), x),
                          skip[0].decode(dense, x), atol=1e-5)
    replacement = ReplacementModel(model, skip)
    tokens = model.to_tokens("the cat sat on the mat")
    graph = attribute(replacement, tokens, batch_size=64, progress=False)
    assert_logit_targets_are_the_real_models(model, tokens, graph)
    assert_complete(replacement, graph)


def test_a_logit_difference_target_is_the_difference_of_the_two_logits_rows():
    from mechscope.graphs import logit_difference

    model = mechscope.load_tiny("llama")
    replacement = ReplacementModel(model, transcoders(model))
    tokens = model.to_tokens("the cat sat on the mat")
    with torch.no_grad():
        real = model.hf_model(input_ids=tokens).logits[0, -1].float()
    first, second = (int(i) for i in real.topk(2).indices)
    graph = attribute(replacement, tokens, batch_size=64, progress=False, target_tokens=[first, second],
                      directions=[logit_difference(model, first, second)])
    rows = {node.kind + str(node.feature): index for index, node in enumerate(graph.targets)
            if node.kind in ("logit", "direction")}
    difference, a, b = rows["direction0"], rows[f"logit{first}"], rows[f"logit{second}"]
    assert float(graph.target_inputs[difference]) == pytest.approx(float(real[first] - real[second]), abs=1e-4)
    assert torch.allclose(graph.adjacency[difference], graph.adjacency[a] - graph.adjacency[b], atol=1e-4)
    with pytest.raises(ConfigError, match="weigh the"):
        attribute(replacement, tokens, progress=False, directions=[("bad", torch.ones(3))])


def test_intervention_checks_measure_the_real_model_and_predict_along_the_graph():
    from mechscope.graphs.interventions import check_interventions, measured_changes, predicted_changes
    from mechscope.sae.splice import splice_hooks

    model = mechscope.load_tiny("llama")
    found = transcoders(model)
    for transcoder in found.values():  # small writes: the real model's norms stay near their frozen scales
        transcoder.W_dec.data.mul_(0.02)
    replacement = ReplacementModel(model, found)
    tokens = model.to_tokens("the cat sat on the mat")
    graph = attribute(replacement, tokens, batch_size=64, progress=False)
    target = graph.n_features  # the top logit
    last = model.cfg.n_layers - 1
    final = [i for i, node in enumerate(graph.sources[:graph.n_features]) if node.layer == last]
    # Nothing lies downstream of the last layer's features: the prediction is minus the direct edge.
    assert torch.allclose(predicted_changes(graph, target, final), -graph.adjacency[target, final], atol=1e-6)
    # Removing a feature's write in the real model is the transcoder spliced in with its error kept
    # and that feature clamped to zero, at its position.
    index = final[0]
    node = graph.sources[index]
    measured = measured_changes(replacement, graph, target, [index])
    with torch.no_grad():
        base = model.hf_model(input_ids=tokens).logits[0, -1].float()
        hooks = splice_hooks(found[node.layer], keep_error=True, clamp={node.feature: 0.0})

        def only_there(activation, hook, inner=hooks[1][1]):  # the clamp acts at the node's position only
            out = inner(activation, hook)
            kept = activation.clone()
            kept[:, node.position] = out[:, node.position]
            return kept

        with model.hooks([hooks[0], (hooks[1][0], only_there)]):
            spliced = model.hf_model(input_ids=tokens).logits[0, -1].float()
    token = graph.targets[target].feature
    expected = (spliced[token] - spliced.mean()) - (base[token] - base.mean())
    assert float(measured[0]) == pytest.approx(float(expected), abs=1e-5)
    check = check_interventions(replacement, graph, top=20)
    assert len(check.removed) == 20 and check.spearman > 0.5 and check.sign_agreement >= 0.75
    assert check.to_json()["removed"][0]["node"] == check.removed[0]
    # A supernode of two last-layer features (no edge between them): its predicted change is the
    # sum of theirs, and the real model's is close to the sum too (small writes: nearly linear).
    pair = final[:2]
    grouped = check_interventions(replacement, graph, supernodes={"pair": pair, "first": pair[:1]})
    assert grouped.removed == ["pair", "first"]
    alone = predicted_changes(graph, target, pair)
    assert float(grouped.predicted[0]) == pytest.approx(float(alone.sum()), abs=1e-6)
    assert float(grouped.measured[0]) == pytest.approx(float(measured_changes(replacement, graph, target, pair).sum()),
                                                       rel=0.05, abs=1e-4)
    with pytest.raises(ConfigError, match="empty supernodes"):
        check_interventions(replacement, graph, supernodes={"none": []})
    # Steering: doubling a feature is predicted (linear graph) as minus its removal; the real
    # model's changes agree with the graph about as well as for removal.
    doubled = check_interventions(replacement, graph, top=20, multiplier=2.0)
    assert torch.allclose(doubled.predicted, -check.predicted, atol=1e-6)
    assert doubled.spearman > 0.5 and doubled.sign_agreement >= 0.75 and doubled.to_json()["multiplier"] == 2.0
    assert float(measured_changes(replacement, graph, target, [index], 1.5)) == pytest.approx(
        -0.5 * float(measured[0]), rel=0.05, abs=1e-5)  # small writes: the real model is nearly linear too
    with pytest.raises(ConfigError, match="multiplier=1 changes nothing"):
        check_interventions(replacement, graph, multiplier=1.0)


def test_heads_carry_the_edges_between_positions_one_attention_layer_apart(traced):
    from mechscope.graphs.heads import head_attribution

    model, replacement, _, graph = traced
    last = model.cfg.n_layers - 1
    # One attention layer between source and target: the target's own (sequential blocks), or the
    # one before (parallel blocks, whose MLP reads the block's input, not the attention's output).
    hop = last - 1 if model.cfg.parallel_residual else last
    target = next(i for i, node in enumerate(graph.targets[:graph.n_features])
                  if node.layer == last and node.position >= 3)
    found = head_attribution(replacement, graph, target, batch_size=5)
    assert torch.allclose(found.edges, graph.adjacency[target], atol=1e-5)
    position = graph.targets[target].position
    earlier = [j for j, node in enumerate(graph.sources[:graph.n_features])
               if node.layer == hop - 1 and node.position < position]
    assert earlier and float(graph.adjacency[target, earlier].abs().max()) > 0
    # Every path from the source's position to the target's crosses exactly one head of that layer.
    carried = found.carried[:, :, earlier]
    assert torch.allclose(carried[hop].sum(0), graph.adjacency[target, earlier], atol=1e-5, rtol=1e-4)
    scale = float(graph.adjacency[target].abs().max())
    assert float(torch.cat([carried[:hop], carried[hop + 1:]]).abs().max()) <= 1e-6 * scale  # rounding only
    strongest = max(earlier, key=lambda j: abs(float(graph.adjacency[target, j])))
    layer, head, value = found.top_heads(strongest, 1)[0]
    assert layer == hop and value == float(found.carried[hop, head, strongest])


def test_circuit_tracers_pruning_rule_keeps_a_connected_graph_above_the_thresholds(traced):
    from mechscope.graphs.prune import _threshold, prune

    _, _, _, graph = traced
    pruned = prune(graph, 0.8, 0.98, rule="circuit-tracer")
    kinds = [node.kind for node in pruned.nodes]
    keep, edges = pruned.keep_nodes, pruned.keep_edges
    assert all(keep[i] for i, kind in enumerate(kinds) if kind in ("embedding", "logit"))
    assert not bool((edges & ~(keep[:, None] & keep[None, :])).any())  # edges only between kept nodes
    for i, kind in enumerate(kinds):
        if keep[i] and kind in ("feature", "error"):
            assert bool(edges[:, i].any())  # it reaches something kept
        if keep[i] and kind == "feature":
            assert bool(edges[i].any())  # and something kept reaches it
    # Nodes below the influence threshold of 80% of all nodes' influence are gone.
    cut = _threshold(pruned.influence, 0.8)
    assert not any(keep[i] for i, kind in enumerate(kinds)
                   if kind in ("feature", "error") and float(pruned.influence[i]) < cut)
    assert 0 < int(keep[:graph.n_features].sum()) < graph.n_features
    with pytest.raises(ConfigError, match="rule"):
        prune(graph, rule="tracer")
