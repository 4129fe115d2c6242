"""Attribution graphs: a prompt's computation traced through transcoder features (work in
progress, issue 17): the local replacement model and attribution on it."""

from mechscope.graphs.attribution import (
    AttributionGraph,
    Node,
    attribute,
    constant_inputs,
    logit_difference,
    replacement_logits,
    top_logits,
)
from mechscope.graphs.export import graph_json, load_transcoders, save_transcoders
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
           "TranscoderSetConfig", "TranscoderSetEvaluation", "evaluate_transcoders", "train_transcoders"]
