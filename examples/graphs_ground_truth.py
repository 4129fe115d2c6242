"""Attribution graphs against a known answer: the two-step lookup model (mechscope.graphs.ground_truth).

    python examples/graphs_ground_truth.py      # about a minute on 2 CPU cores

Prints the numbers docs/graphs.md quotes:

1. the composition, measured without graphs: held-out accuracy and how often patching layer 0's
   MLP output from another input moves the answer to that input's g(f(a')); and the same for a
   null control, the same model trained without the two constraints (layer 0's attention live,
   every answer trained), which is free to look c up from a directly;
2. the graph of ``<bos> a SEP`` for held-out inputs: whether the most influential layer-0 feature
   sits at a's position and stands for b (precision and recall of its firing over the inputs
   that share a's b; chance precision is 1 / n_middle);
3. per-layer against cross-layer transcoders on ``<bos> a`` (next token b): the share of the b
   logit's direct input from layer-1 features in each.
"""

from __future__ import annotations

import torch

from mechscope.graphs import ReplacementModel, attribute, mlp_input, prune
from mechscope.graphs.crosslayer import CrossLayerConfig
from mechscope.graphs.crosslayer_train import train_crosslayer
from mechscope.graphs.ground_truth import TwoHopTask, check_composition, train_two_hop_model
from mechscope.graphs.transcoders import TranscoderSetConfig, train_transcoders
from mechscope.sae import TrainConfig

TASK = TwoHopTask()
SETTINGS = TrainConfig(steps=400, lr=3e-3, warmup_steps=10)


def layer_share(replacement, tokens, layer: int) -> float:
    graph = attribute(replacement, tokens, max_logits=1, batch_size=64, progress=False)
    row = graph.adjacency[graph.n_features].abs()
    part = sum(float(row[j]) for j, node in enumerate(graph.sources[:graph.n_features]) if node.layer == layer)
    return part / float(row.sum())


def main() -> None:
    model = train_two_hop_model(TASK, steps=400, progress=False)
    print("composition:", check_composition(model, TASK))
    print("null control (no constraints):", check_composition(train_two_hop_model(TASK, steps=400, progress=False,
                                                                                     constrained=False), TASK))
    tokens = TASK.prompts()
    per_layer = train_transcoders(model, tokens, TranscoderSetConfig(d_sae=32, k=4), SETTINGS, batch_contexts=96,
                                  progress=False)
    crosslayer = train_crosslayer(model, tokens, CrossLayerConfig(2, model.cfg.d_model, 32, 4, window=2), SETTINGS,
                                  batch_contexts=96, progress=False)
    f, _ = TASK.maps()
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names=[mlp_input(0)])
        layer0 = per_layer[0].encode(cache[mlp_input(0)][:, 1])
    held_out = (~TASK.trained_c()).nonzero().flatten().tolist()
    at_a, precisions, recalls = 0, [], []
    for index in held_out:
        graph = attribute(ReplacementModel(model, per_layer), tokens[index:index + 1], max_logits=1, batch_size=64,
                          progress=False)
        pruned = prune(graph)
        influence = dict(zip(pruned.nodes, pruned.influence.tolist()))
        best = max((node for node in graph.sources[:graph.n_features] if node.layer == 0),
                   key=lambda node: influence.get(node, 0.0))
        at_a += best.position == 1
        fires, same = layer0[:, best.feature] > 0, f == f[index]
        precisions.append(float((fires & same).sum() / fires.sum()))
        recalls.append(float((fires & same).sum() / same.sum()))
    print(f"held-out prompts: {len(held_out)}; top layer-0 feature at a's position in {at_a}; its firing for "
          f"a's b: precision {sum(precisions) / len(precisions):.2f} (chance {1 / TASK.n_middle:.2f}), recall "
          f"{sum(recalls) / len(recalls):.2f}")
    prompts = tokens[:, :2]
    per = [layer_share(ReplacementModel(model, per_layer), p[None], 1) for p in prompts]
    cross = [layer_share(ReplacementModel(model, crosslayer), p[None], 1) for p in prompts]
    print(f"share of the b logit's direct input from layer-1 features, mean over {len(prompts)} prompts: per-layer "
          f"{sum(per) / len(per):.3f}, cross-layer {sum(cross) / len(cross):.3f}; from layer-0 features: per-layer "
          f"{sum(layer_share(ReplacementModel(model, per_layer), p[None], 0) for p in prompts) / len(prompts):.3f}, "
          f"cross-layer "
          f"{sum(layer_share(ReplacementModel(model, crosslayer), p[None], 0) for p in prompts) / len(prompts):.3f}")


if __name__ == "__main__":
    main()
