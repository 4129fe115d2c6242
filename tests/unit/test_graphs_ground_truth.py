"""Ground truth for attribution graphs: a 2-layer llama trained on a two-step lookup (a -> b = f(a)
-> c = g(b)). That it composes is measured without any graph (held-out inputs answered right,
and patching layer 0's MLP output from another input a' turns the answer into g(f(a'))). The
graph of ``<bos> a SEP`` must then put, as the most influential layer-0 feature, one at a's
position that stands for b: it fires on the inputs that share a's b (chance: 1 in 8). A
cross-layer transcoder disagrees with the per-layer one where the model refines b across both
layers: the CLT credits layer-0 features for what the per-layer graph gives to layer 1."""

import pytest
import torch

from mechscope.graphs import ReplacementModel, attribute, mlp_input, prune
from mechscope.graphs.crosslayer import CrossLayerConfig
from mechscope.graphs.crosslayer_train import train_crosslayer
from mechscope.graphs.ground_truth import TwoHopTask, check_composition, train_two_hop_model
from mechscope.graphs.transcoders import TranscoderSetConfig, evaluate_transcoders, train_transcoders
from mechscope.sae import TrainConfig

TASK = TwoHopTask()
SETTINGS = TrainConfig(steps=400, lr=3e-3, warmup_steps=10)


@pytest.fixture(scope="module")
def trained():
    model = train_two_hop_model(TASK, steps=400, progress=False)
    tokens = TASK.prompts()
    per_layer = train_transcoders(model, tokens, TranscoderSetConfig(d_sae=32, k=4), SETTINGS, batch_contexts=96,
                                  progress=False)
    crosslayer = train_crosslayer(model, tokens, CrossLayerConfig(2, model.cfg.d_model, 32, 4, window=2), SETTINGS,
                                  batch_contexts=96, progress=False)
    return model, per_layer, crosslayer


def test_the_model_composes_the_two_steps(trained):
    model, per_layer, crosslayer = trained
    found = check_composition(model, TASK)
    assert found.middle_accuracy == 1 and found.held_out_accuracy >= 0.95
    assert found.patched_to_other >= 0.9  # the answer follows b as layer 0's MLP computed it
    for transcoders in (per_layer, crosslayer):
        assert all(score.fvu < 0.05 for score in evaluate_transcoders(model, transcoders, TASK.prompts()).layers)


def test_the_graph_recovers_the_intermediate_feature(trained):
    model, per_layer, _ = trained
    tokens = TASK.prompts()
    f, _ = TASK.maps()
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names=[mlp_input(0)])
        layer0 = per_layer[0].encode(cache[mlp_input(0)][:, 1])  # [n_inputs, d_sae] at a's position
    precisions, recalls = [], []
    held_out = (~TASK.trained_c()).nonzero().flatten()[:8].tolist()
    for index in held_out:
        graph = attribute(ReplacementModel(model, per_layer), tokens[index:index + 1], max_logits=1, batch_size=64,
                          progress=False)
        assert graph.targets[graph.n_features].feature == int(TASK.answers()[1][index])  # the answer is c
        pruned = prune(graph)
        influence = dict(zip(pruned.nodes, pruned.influence.tolist()))
        best = max((node for node in graph.sources[:graph.n_features] if node.layer == 0),
                   key=lambda node: influence.get(node, 0.0))
        assert best.position == 1  # at a, not at SEP
        fires, same = layer0[:, best.feature] > 0, f == f[index]
        precisions.append(float((fires & same).sum() / fires.sum()))
        recalls.append(float((fires & same).sum() / same.sum()))
    assert sum(recalls) / len(recalls) >= 0.9 and sum(precisions) / len(precisions) >= 0.6, (precisions, recalls)


def _share_from_layer(replacement, tokens, layer):
    """The share of the top logit's |direct input| that comes from features of ``layer``."""
    graph = attribute(replacement, tokens, max_logits=1, batch_size=64, progress=False)
    row = graph.adjacency[graph.n_features].abs()
    from_layer = sum(float(row[j]) for j, node in enumerate(graph.sources[:graph.n_features]) if node.layer == layer)
    return from_layer / float(row.sum())


def test_per_layer_and_cross_layer_transcoders_disagree_where_b_is_refined(trained):
    model, per_layer, crosslayer = trained
    prompts = TASK.prompts()[:6, :2]  # "<bos> a": the next token is b
    layer1 = [(_share_from_layer(ReplacementModel(model, per_layer), p[None], 1),
               _share_from_layer(ReplacementModel(model, crosslayer), p[None], 1)) for p in prompts]
    per_layer_share = sum(a for a, _ in layer1) / len(layer1)
    crosslayer_share = sum(b for _, b in layer1) / len(layer1)
    # Layer 1's MLP sharpens b at a's position; the CLT writes that from layer-0 features directly.
    assert per_layer_share > crosslayer_share + 0.1, (per_layer_share, crosslayer_share)
