"""Attribution graphs as files: the graph JSON that circuit-tracer's and Neuronpedia's viewers
read (``metadata``, ``qParams``, ``nodes``, ``links``), and a folder of transcoders, one per layer.

Node ids follow that format: a feature ``{layer}_{feature}_{position}``, an error node
``{layer}_-1_{position}``, an embedding ``E_{token id}_{position}``, a logit
``{n_layers + 1}_{token id}_{position}``. Only the pruned graph is written: the kept nodes, and
the kept edges with their raw weights (a link runs from source to target).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

from mechscope.errors import ConfigError, MissingFileError
from mechscope.files import atomic_text
from mechscope.graphs.attribution import AttributionGraph, Node
from mechscope.graphs.heads import HeadAttribution
from mechscope.graphs.prune import PrunedGraph
from mechscope.models.hooked_model import HookedModel
from mechscope.sae.model import SAE

FORMAT_VERSION = 1


def node_id(node: Node, tokens: list[int], n_layers: int, d_vocab: int = 0) -> str:
    """The graph-JSON id of ``node`` (``tokens``: the prompt's token ids); a direction target
    is numbered past the vocabulary (``d_vocab + index``), like a logit of its own."""
    if node.kind == "feature":
        return f"{node.layer}_{node.feature}_{node.position}"
    if node.kind == "error":
        return f"{node.layer}_-1_{node.position}"
    if node.kind == "embedding":
        return f"E_{tokens[node.position]}_{node.position}"
    if node.kind == "direction":
        return f"{n_layers + 1}_{d_vocab + node.feature}_{len(tokens) - 1}"
    return f"{n_layers + 1}_{node.feature}_{len(tokens) - 1}"


def _pairing(layer: int, feature: int) -> int:
    """One integer for (layer, feature), as the viewers expect in a feature node's ``feature``."""
    return (layer + feature) * (layer + feature + 1) // 2 + feature


def graph_json(model: HookedModel, graph: AttributionGraph, pruned: PrunedGraph, slug: str = "mechscope-graph",
               labels: Mapping[str, str] | None = None, transcoder_names: list[str] | None = None,
               supernodes: Mapping[str, list[str]] | None = None,
               heads: Sequence[HeadAttribution] = (), top_heads: int = 3) -> dict:
    """The pruned graph in the viewers' JSON; ``labels`` {node id: text} (e.g. explanations) go
    to the nodes' ``clerp``, ``supernodes`` {label: node ids} to ``qParams`` (ids not in the
    pruned graph are refused). ``heads``: per-head attributions of some targets; each kept link
    into one of them gets ``heads``: [{"layer", "head", "weight"}] of the ``top_heads`` heads
    carrying most of it (a mechscope field; the viewers ignore it)."""
    tokens = [int(t) for t in graph.tokens[0]]
    n_layers = model.cfg.n_layers
    decode = model.tokenizer.decode
    activation_of = {node: float(value) for node, value in zip(graph.sources, graph.activations)}
    probability_of = {node: float(p) for node, p in
                      zip(graph.targets[graph.n_features:], graph.logit_probabilities)}
    ids = [node_id(node, tokens, n_layers, model.cfg.d_vocab) for node in pruned.nodes]
    nodes = []
    for index, node in enumerate(pruned.nodes):
        if not bool(pruned.keep_nodes[index]):
            continue
        common = {"node_id": ids[index], "jsNodeId": ids[index], "ctx_idx": node.position if node.kind != "logit"
                  else len(tokens) - 1, "influence": float(pruned.influence[index]), "run_idx": 0,
                  "reverse_ctx_idx": 0, "clerp": (labels or {}).get(ids[index], "")}
        if node.kind == "feature":
            nodes.append({**common, "feature": _pairing(node.layer, node.feature), "layer": str(node.layer),
                          "feature_type": "cross layer transcoder", "activation": activation_of.get(node),
                          "token_prob": 0.0, "is_target_logit": False})
        elif node.kind == "error":
            nodes.append({**common, "feature": -1, "layer": str(node.layer), "feature_type": "mlp reconstruction error",
                          "activation": None, "token_prob": 0.0, "is_target_logit": False})
        elif node.kind == "embedding":
            nodes.append({**common, "feature": node.position, "layer": "E", "feature_type": "embedding",
                          "activation": None, "token_prob": 0.0, "is_target_logit": False,
                          "clerp": common["clerp"] or f"Embedding {decode([tokens[node.position]])!r}"})
        elif node.kind == "direction":
            label = graph.directions[node.feature][0]
            nodes.append({**common, "feature": model.cfg.d_vocab + node.feature, "layer": str(n_layers + 1),
                          "feature_type": "logit", "activation": None, "token_prob": 0.0, "is_target_logit": True,
                          "clerp": common["clerp"] or f"Target {label}"})
        else:
            probability = probability_of.get(node, 0.0)
            nodes.append({**common, "feature": node.feature, "layer": str(n_layers + 1), "feature_type": "logit",
                          "activation": None, "token_prob": probability, "is_target_logit": True,
                          "clerp": common["clerp"] or f"Output {decode([node.feature])!r} (p={probability:.3f})"})
    present = {node["node_id"] for node in nodes}
    for label, members in (supernodes or {}).items():
        missing = [member for member in members if member not in present]
        if missing or not members:
            raise ConfigError(f"supernode {label!r} names nodes that are not in the pruned graph: {missing[:8] or 'none'}")
    kept = pruned.keep_edges.nonzero().tolist()
    links = [{"source": ids[source], "target": ids[target], "weight": float(pruned.matrix[target, source])}
             for target, source in kept]
    by_target = {graph.targets[found.target]: found for found in heads}
    source_index = {node: index for index, node in enumerate(graph.sources)}
    for link, (target, source) in zip(links, kept):
        found = by_target.get(pruned.nodes[target])
        if found is not None and pruned.nodes[source] in source_index:
            link["heads"] = [{"layer": layer, "head": head, "weight": weight} for layer, head, weight in
                             found.top_heads(source_index[pruned.nodes[source]], top_heads)]
    return {"metadata": {"slug": slug, "scan": model.cfg.name or model.cfg.family,
                         "transcoder_list": transcoder_names or [],
                         "prompt_tokens": [decode([t]) for t in tokens], "prompt": decode(tokens),
                         "node_threshold": None, "schema_version": FORMAT_VERSION,
                         "replacement_score": pruned.replacement_score,
                         "completeness_score": pruned.completeness_score,
                         "pruned_replacement_score": pruned.pruned_replacement_score,
                         "pruned_completeness_score": pruned.pruned_completeness_score},
            "qParams": {"pinnedIds": [], "supernodes": [[label, *members] for label, members in (supernodes or {}).items()],
                        "linkType": "both", "clickedId": "", "sg_pos": ""},
            "nodes": nodes, "links": links}


def write_graph_json(path: str | Path, data: dict) -> Path:
    return atomic_text(path, json.dumps(data, allow_nan=False))


def save_transcoders(transcoders: Mapping[int, SAE], folder: str | Path) -> Path:
    """Write ``transcoders`` {layer: SAE} as ``folder/layer_{l}/`` (SAELens format each)."""
    from mechscope.sae.io import save_sae

    folder = Path(folder)
    for layer, transcoder in sorted(transcoders.items()):
        save_sae(transcoder, folder / f"layer_{layer}")
    return folder


def load_transcoders(folder: str | Path):
    """{layer: transcoder} from ``folder/layer_{l}/`` (as :func:`save_transcoders` writes), or
    from ``folder/transcoders/layer_{l}/`` (a ``mechscope sae train-transcoders`` folder); or a
    cross-layer transcoder from a folder holding ``crosslayer.json``."""
    from mechscope.sae.io import load_sae

    folder = Path(folder).expanduser()
    if (folder / "transcoders").is_dir() and not any(folder.glob("layer_*")):
        folder = folder / "transcoders"  # a `mechscope sae train-transcoders` output folder
    if not folder.is_dir():
        raise MissingFileError(f"transcoder folder {folder} does not exist (it should hold layer_0/, layer_1/, ...)")
    from mechscope.graphs.crosslayer import is_crosslayer, load_crosslayer

    if is_crosslayer(folder):
        return load_crosslayer(folder)
    found = {}
    for path in sorted(folder.glob("layer_*")):
        suffix = path.name.removeprefix("layer_")
        if not (suffix.isascii() and suffix.isdigit()) or not path.is_dir():
            raise ConfigError(f"{path} is not a layer folder; a transcoder folder holds layer_0/, layer_1/, ...")
        found[int(suffix)] = load_sae(path)
    if not found:
        raise MissingFileError(f"{folder} holds no layer_*/ transcoder folders")
    return found


__all__ = ["FORMAT_VERSION", "graph_json", "load_transcoders", "node_id", "save_transcoders", "write_graph_json"]
