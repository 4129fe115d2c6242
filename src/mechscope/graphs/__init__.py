"""Attribution graphs: a prompt's computation traced through transcoder features: transcoders
for every layer (per-layer and cross-layer), the local replacement model, attribution, pruning,
per-head attribution, intervention checks and a ground-truth model (see docs/graphs.md)."""

from mechscope.graphs.attribution import (
    AttributionGraph,
    Node,
    attribute,
    constant_inputs,
    logit_difference,
    replacement_logits,
    top_logits,
)
from mechscope.graphs.crosslayer import (
    CrossLayerConfig,
    CrossLayerTranscoder,
    load_crosslayer,
    save_crosslayer,
)
from mechscope.graphs.crosslayer_train import train_crosslayer
from mechscope.graphs.export import graph_json, load_transcoders, save_transcoders
from mechscope.graphs.ground_truth import Composition, TwoHopTask, check_composition, train_two_hop_model
from mechscope.graphs.heads import HeadAttribution, head_attribution
from mechscope.graphs.interventions import InterventionCheck, check_interventions
from mechscope.graphs.prune import PrunedGraph, influence, node_list, prune
from mechscope.graphs.replacement import Prompt, ReplacementModel, check_transcoders, mlp_input, mlp_output
from mechscope.graphs.transcoders import (
    LayerScore,
    TranscoderSetConfig,
    TranscoderSetEvaluation,
    evaluate_transcoders,
    train_transcoders,
)

__all__ = ["AttributionGraph", "InterventionCheck", "check_interventions", "Node", "Prompt", "PrunedGraph", "ReplacementModel", "influence", "node_list", "prune", "attribute", "constant_inputs", "logit_difference", "check_transcoders", "mlp_input",
           "mlp_output", "replacement_logits", "top_logits", "graph_json", "load_transcoders", "save_transcoders", "LayerScore",
           "TranscoderSetConfig", "TranscoderSetEvaluation", "evaluate_transcoders", "train_transcoders",
           "CrossLayerConfig", "CrossLayerTranscoder", "load_crosslayer", "save_crosslayer", "train_crosslayer",
           "Composition", "TwoHopTask", "check_composition", "train_two_hop_model", "HeadAttribution",
           "head_attribution"]
