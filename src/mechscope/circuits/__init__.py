"""Circuit discovery over a component graph: EAP, EAP-IG, ACDC and exact edge patching, with
faithfulness curves and exports."""

from mechscope.circuits.acdc import acdc
from mechscope.circuits.circuit import (
    Circuit,
    node_edges,
    node_scores_from_edges,
    prune,
    select_edges,
    select_nodes,
)
from mechscope.circuits.discover import METHODS, DiscoveryConfig, compare_methods, discover
from mechscope.circuits.evaluation import Faithfulness, FaithfulnessCurve, faithfulness, faithfulness_curve
from mechscope.circuits.graph import ComponentGraph, Receiver
from mechscope.circuits.intervention import EdgeRun, EdgeSpec, run_edges, writer_outputs
from mechscope.circuits.known.benchmark import benchmark, roc_auc
from mechscope.circuits.known.registry import KnownCircuit, known_circuits, load_known
from mechscope.circuits.scoring import (
    ABLATIONS,
    EdgeSetup,
    eap_ig_scores,
    eap_scores,
    edge_setup,
    evaluate_masks,
    exact_scores,
)

__all__ = [
    "ABLATIONS",
    "METHODS",
    "Circuit",
    "ComponentGraph",
    "DiscoveryConfig",
    "EdgeRun",
    "EdgeSetup",
    "EdgeSpec",
    "Faithfulness",
    "FaithfulnessCurve",
    "KnownCircuit",
    "Receiver",
    "acdc",
    "benchmark",
    "compare_methods",
    "discover",
    "eap_ig_scores",
    "eap_scores",
    "edge_setup",
    "evaluate_masks",
    "exact_scores",
    "faithfulness",
    "faithfulness_curve",
    "known_circuits",
    "load_known",
    "node_edges",
    "node_scores_from_edges",
    "prune",
    "roc_auc",
    "run_edges",
    "select_edges",
    "select_nodes",
    "writer_outputs",
]
