"""The run behind ``mechscope graph``: one prompt's attribution graph, pruned, written as the
viewers' graph JSON plus a summary (scores, counts, timing) into a checked output folder."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from mechscope import checks
from mechscope.errors import ConfigError
from mechscope.files import OutputFolder, atomic_text, prepare_output_folder
from mechscope.graphs.attribution import attribute, logit_difference
from mechscope.graphs.export import graph_json, write_graph_json
from mechscope.graphs.heads import head_attribution
from mechscope.graphs.prune import prune
from mechscope.graphs.replacement import ReplacementModel
from mechscope.models.hooked_model import HookedModel
from mechscope.validate import check_int, check_number

GRAPH_OUTPUTS = ("graph.json", "summary.json")


@dataclass(frozen=True)
class GraphOptions:
    """``mechscope graph``'s options; checked on creation, before any model loads."""

    prompt: str
    target: str | None = None  # a next token to attribute (one token), instead of the most likely ones
    versus: str | None = None  # with target: also attribute logit(target) - logit(versus)
    logit_mass: float = 0.95
    max_logits: int = 10
    max_features: int | None = 2048  # feature nodes, chosen by influence (None: every active feature)
    node_share: float = 0.8
    edge_share: float = 0.98
    batch_size: int = 16
    max_positions: int = 64
    head_targets: int = 0  # the most influential targets whose edges get per-head attributions
    supernodes: tuple[tuple[str, tuple[str, ...]], ...] = ()  # (label, node ids) groupings for the viewers

    def __post_init__(self) -> None:
        checks.check_text("prompt", self.prompt)
        if self.target is not None and not self.target:
            raise ConfigError("--target must be a token's text, e.g. ' Paris'")
        if self.versus is not None and (not self.versus or self.target is None):
            raise ConfigError("--versus needs --target: the graph then also explains logit(target) - logit(versus)")
        check_number("logit_mass", self.logit_mass, minimum=0.0, maximum=1.0, strict_minimum=True)
        check_int("max_logits", self.max_logits, 1, 100)
        if self.max_features is not None:
            check_int("max_features", self.max_features, 1)
        check_number("node_share", self.node_share, minimum=0.0, maximum=1.0)
        check_number("edge_share", self.edge_share, minimum=0.0, maximum=1.0)
        check_int("batch_size", self.batch_size, 1, 1024)
        check_int("max_positions", self.max_positions, 2, checks.MAX_POSITION)
        check_int("head_targets", self.head_targets, 0, 1000)
        object.__setattr__(self, "supernodes", tuple((label, tuple(members)) for label, members in self.supernodes))
        labels = [label for label, _ in self.supernodes]
        for label, members in self.supernodes:
            if not label or not members or not all(members):
                raise ConfigError(f"supernode {label!r} needs a label and at least one node id, as LABEL=ID,ID "
                                  "(ids as in graph.json, e.g. 12_345_6)")
        if len(set(labels)) != len(labels):
            raise ConfigError(f"supernode labels must differ; got {labels}")


def prepare_graph_folder(out: str | Path, options: GraphOptions, overwrite: bool = False,
                         extra: dict | None = None) -> OutputFolder:
    return prepare_output_folder(out, "graph", GRAPH_OUTPUTS, overwrite=overwrite,
                                 options={**asdict(options), **(extra or {})})


def start_token(model: HookedModel, tokens: torch.Tensor) -> torch.Tensor:
    """``tokens`` [1, pos] with a special token in front when the tokenizer put none there (BOS,
    else PAD or EOS): the graph leaves position 0 out (an attention sink with outlier
    activations), which must not be the prompt's first word. circuit-tracer does the same."""
    tokenizer = model.tokenizer
    if int(tokens[0, 0]) in set(tokenizer.all_special_ids):
        return tokens
    for candidate in (tokenizer.bos_token_id, tokenizer.pad_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return torch.cat([torch.tensor([[candidate]], dtype=tokens.dtype), tokens], 1)
    raise ConfigError("the tokenizer has no BOS, PAD or EOS token to put before the prompt; the graph leaves "
                      "position 0 out, so start the prompt with a token you do not need explained")


def parse_supernode(text: str) -> tuple[str, tuple[str, ...]]:
    """``--supernode "LABEL=ID,ID,..."`` as (label, node ids)."""
    label, _, members = text.partition("=")
    ids = tuple(member.strip() for member in members.split(",") if member.strip())
    if not label.strip() or not ids:
        raise ConfigError(f"--supernode must look like LABEL=ID,ID (node ids as in graph.json, e.g. "
                          f"'capital=12_345_6,14_2_6'); got {text!r}")
    return label.strip(), ids


def target_token(model: HookedModel, text: str) -> int:
    """The id of ``text`` as one token of ``model``'s tokenizer, else a ConfigError."""
    ids = model.tokenizer.encode(text, add_special_tokens=False)
    if len(ids) != 1:
        shown = [model.tokenizer.decode([i]) for i in ids]
        raise ConfigError(f"--target {text!r} is {len(ids)} tokens for this tokenizer ({shown}); give one token "
                          "(mind the leading space, e.g. ' Paris')")
    return int(ids[0])


def influential_targets(graph, pruned, count: int) -> list[int]:
    """Indices into ``graph.targets`` of the ``count`` kept targets of most influence, the logit
    and direction targets first (their influence is their probability)."""
    if count == 0:
        return []
    influence = {node: float(value) for node, value in zip(pruned.nodes, pruned.influence)}
    kept = {node for node, keep in zip(pruned.nodes, pruned.keep_nodes.tolist()) if keep}
    outputs = [i for i, node in enumerate(graph.targets) if node.kind in ("logit", "direction")]
    features = sorted((i for i, node in enumerate(graph.targets[:graph.n_features]) if node in kept),
                      key=lambda i: -influence.get(graph.targets[i], 0.0))
    return (outputs + features)[:count]


def head_totals(found, pruned, graph, count: int = 5) -> list[tuple[int, int, float]]:
    """(layer, head, carried) of the heads carrying most of a target's kept incoming edges,
    summed in absolute value."""
    kept = {node for node, keep in zip(pruned.nodes, pruned.keep_nodes.tolist()) if keep}
    kept_sources = [i for i, node in enumerate(graph.sources) if node in kept]
    total = found.carried[:, :, kept_sources].abs().sum(-1)
    order = total.flatten().argsort(descending=True)[:count].tolist()
    return [(i // total.shape[1], i % total.shape[1], float(total.flatten()[i])) for i in order
            if float(total.flatten()[i]) > 0]


def run_graph(model: HookedModel, replacement: ReplacementModel, options: GraphOptions, out: OutputFolder | str | Path,
              overwrite: bool = False, transcoder_names: list[str] | None = None, progress: bool = True) -> dict:
    """Trace ``options.prompt``, prune, write graph.json and summary.json; returns the summary."""
    folder = out if isinstance(out, OutputFolder) else prepare_graph_folder(out, options, overwrite)
    tokens = start_token(model, model.to_tokens(options.prompt))
    if tokens.shape[1] > options.max_positions:
        raise ConfigError(f"the prompt is {tokens.shape[1]} tokens, over the cap of {options.max_positions} "
                          "positions (each target's backward pass holds the whole prompt): pass --max-positions "
                          f"{tokens.shape[1]} or more if the memory allows, or shorten the prompt")
    targets = [target_token(model, options.target)] if options.target is not None else None
    directions = [logit_difference(model, targets[0], target_token(model, options.versus))] \
        if options.versus is not None else None
    started = time.perf_counter()
    graph = attribute(replacement, tokens, options.logit_mass, options.max_logits, options.max_features,
                      options.batch_size, progress, target_tokens=targets, directions=directions)
    attributed = time.perf_counter() - started
    pruned = prune(graph, options.node_share, options.edge_share)
    heads = [head_attribution(replacement, graph, target, options.batch_size)
             for target in influential_targets(graph, pruned, options.head_targets)]
    data = graph_json(model, graph, pruned, slug=folder.path.name, transcoder_names=transcoder_names, heads=heads,
                      supernodes={label: list(members) for label, members in options.supernodes})
    write_graph_json(folder / "graph.json", data)
    kinds = [node["feature_type"] for node in data["nodes"]]
    summary = {"prompt": options.prompt, "tokens": len(tokens[0]), "seconds": round(attributed, 2),
               "features": graph.n_features, **graph.info,
               "kept": {"features": kinds.count("cross layer transcoder"), "errors": kinds.count("mlp reconstruction "
                                                                                                 "error"),
                        "embeddings": kinds.count("embedding"), "logits": kinds.count("logit"),
                        "edges": len(data["links"])},
               "replacement_score": pruned.replacement_score, "completeness_score": pruned.completeness_score,
               "pruned_replacement_score": pruned.pruned_replacement_score,
               "pruned_completeness_score": pruned.pruned_completeness_score,
               "logits": [{"token": model.tokenizer.decode([int(node.feature)]), "id": int(node.feature),
                           "probability": float(p)}
                          for node, p in zip(graph.targets[graph.n_features:], graph.logit_probabilities)
                          if node.kind == "logit"],
               "directions": [label for label, _ in graph.directions],
               "heads": [{"target": graph.targets[found.target].label, "top": [
                   {"layer": layer, "head": head, "carried": round(value, 6)} for layer, head, value in
                   head_totals(found, pruned, graph)]} for found in heads]}
    atomic_text(folder / "summary.json", json.dumps(summary, indent=1))
    folder.record()
    return summary


__all__ = ["GRAPH_OUTPUTS", "GraphOptions", "parse_supernode", "prepare_graph_folder", "start_token", "run_graph", "target_token"]
