"""Attribution on the replacement model: every direct, linear effect between the nodes of a prompt.

Nodes (:class:`Node`): the transcoders' active features (layer, position, feature), the error
term of every (layer, position), the embedding of every position, and the target logits (the
most likely next tokens at the last position, up to a probability mass). An edge's weight is the
source's value times the gradient of the target's input with respect to it, in the replacement
model where everything non-linear is frozen: the effect the source has on the target along
direct paths (through the residual stream and frozen attention, not through other features).

A feature's input is its transcoder pre-activation; a logit's is the logit minus the mean logit
(both linear in the residual stream once the norms are frozen). Because they are linear, a
target's input is the sum of its incoming edges plus a constant (biases): tested.

Targets are attributed in batches from one forward pass of ``batch_size`` copies of the prompt,
kept with its autograd graph: row i of a batch seeds target i, one backward pass per batch. The
feature activations enter as the values of the active features only (a [batch, n_active] leaf,
written one matmul per position: no [batch, pos, d_sae] or [batch, n_active, d_model] tensor is
made), so memory grows with the number of active features, not with the dictionary's width.
With a cap on feature nodes, features are attributed in order of their influence on the outputs
so far, and the edges of those left out join their error nodes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from mechscope.errors import ConfigError
from mechscope.graphs.replacement import Prompt, ReplacementModel, SparseFeatures, mlp_input
from mechscope.validate import check_int, check_number


@dataclass(frozen=True)
class Node:
    """One node: ``kind`` "feature" (``layer``, ``position``, ``feature``), "error" (``layer``,
    ``position``), "embedding" (``position``), "logit" (``feature`` = the token id) or
    "direction" (``feature`` = its index in the graph's ``directions``: a weighting of the
    last position's logits, e.g. one token's logit minus another's)."""

    kind: str
    layer: int = -1
    position: int = -1
    feature: int = -1

    @property
    def label(self) -> str:
        if self.kind == "feature":
            return f"L{self.layer}F{self.feature}@{self.position}"
        if self.kind == "error":
            return f"L{self.layer}err@{self.position}"
        if self.kind == "embedding":
            return f"emb@{self.position}"
        if self.kind == "direction":
            return f"direction {self.feature}"
        return f"logit {self.feature}"


@dataclass
class AttributionGraph:
    """Sources (features, errors, embeddings) and targets (features, logits) of one prompt.

    ``adjacency`` [n_targets, n_sources]: the edge from source j to target i. The features are
    both: ``targets[:n_features] == sources[:n_features]``. ``activations`` [n_features] the
    features' values, ``target_inputs`` [n_targets] each target's input (pre-activation or
    demeaned logit) in the replacement, ``logit_probabilities`` [n_logits]."""

    tokens: torch.Tensor
    sources: list[Node]
    targets: list[Node]
    adjacency: torch.Tensor
    activations: torch.Tensor
    target_inputs: torch.Tensor
    logit_probabilities: torch.Tensor
    info: dict = field(default_factory=dict)
    directions: list[tuple[str, torch.Tensor]] = field(default_factory=list)  # (label, [d_vocab] weights)

    @property
    def n_features(self) -> int:
        return len(self.activations)


def top_logits(logits: torch.Tensor, mass: float = 0.95, most: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """(token ids, probabilities) of the most likely tokens of ``logits`` [d_vocab] until their
    probability reaches ``mass``, at most ``most``."""
    probabilities = logits.float().softmax(-1)
    values, ids = probabilities.sort(descending=True)
    count = int((values.cumsum(0) < mass).sum()) + 1
    count = max(1, min(count, most))
    return ids[:count], values[:count]


def _active(prompt: Prompt) -> list[tuple[int, int, int]]:
    """(layer, position, feature) of every active feature, the first position excluded, in that
    order (so each layer's features come grouped by position)."""
    found = []
    for layer, values in sorted(prompt.activations.items()):
        positions, features = (values[1:] > 0).nonzero(as_tuple=True)
        found += [(layer, int(p) + 1, int(f)) for p, f in zip(positions, features)]
    return found


@dataclass
class _Pass:
    """One batched forward of the replacement (every row a copy of the prompt), kept with its
    autograd graph so that many targets can be seeded from it, one backward pass per chunk."""

    reads: dict[int, torch.Tensor]  # layer -> [batch, pos, d_model] the MLP's (normalised) input
    logits: torch.Tensor  # [batch, pos, d_vocab]
    leaves: list[torch.Tensor]  # feature values per layer (sorted), then errors per layer, then embeddings
    value_layers: list[int]
    errors: list[torch.Tensor]
    embedding: torch.Tensor


def _run(replacement: ReplacementModel, prompt: Prompt, batch: int, leaves: dict, errors: dict,
         embedding: torch.Tensor, extra_hooks: list[tuple[str, object]] | None = None
         ) -> tuple[dict[int, torch.Tensor], torch.Tensor]:
    """(MLP inputs {layer: [batch, pos, d_model]}, logits [batch, pos, d_vocab]) of the
    replacement on ``batch`` copies of the prompt with the given sources."""
    model = replacement.model
    reads: dict[int, torch.Tensor] = {}

    def keep(activation, hook, layer):
        reads[layer] = activation

    hooks = replacement.hooks(prompt, leaves, errors, embedding)
    hooks += [(mlp_input(layer), lambda a, h, layer=layer: keep(a, h, layer)) for layer in range(model.cfg.n_layers)]
    with model.hooks(hooks + list(extra_hooks or [])):
        logits = model.hf_model(input_ids=prompt.tokens.repeat(batch, 1).to(model.device)).logits.float()
    return reads, logits


def _seeds(replacement: ReplacementModel, reads: dict[int, torch.Tensor], logits: torch.Tensor, chunk: list[Node],
           directions: list[tuple[str, torch.Tensor]] | None) -> torch.Tensor:
    """[len(chunk)] the input of target ``chunk[i]`` read from row i: a feature's transcoder
    pre-activation, a logit minus the mean logit, or a direction's weighted logits."""
    seeds = []
    for row, node in enumerate(chunk):
        if node.kind == "feature":
            transcoder = replacement.transcoders[node.layer]
            x = reads[node.layer][row, node.position].to(transcoder.W_enc.dtype)
            seeds.append((x @ transcoder.W_enc[:, node.feature] + transcoder.b_enc[node.feature]).float())
        elif node.kind == "direction":
            seeds.append(logits[row, -1] @ directions[node.feature][1].to(logits.device).float())
        else:
            final = logits[row, -1]
            seeds.append(final[node.feature] - final.mean())
    return torch.stack(seeds)


def _no_features(batch: int) -> SparseFeatures:
    empty = torch.zeros(0, dtype=torch.long)
    return SparseFeatures(empty, empty, torch.zeros(batch, 0))


@dataclass
class SourceLeaves:
    """The sources of one prompt's graph as the leaves of a batched backward pass.

    ``features`` [(layer, position, feature)] the feature nodes, ``activations`` [n_features]
    their values; ``folded_errors`` {layer: [pos, d_model]} each error node's value (the real
    error plus what features that are not nodes write); ``embeddings`` [pos, d_model]."""

    features: list[tuple[int, int, int]]
    activations: torch.Tensor
    by_layer: dict[int, list[int]]
    spots: dict[int, tuple[torch.Tensor, torch.Tensor]]
    folded_errors: dict[int, torch.Tensor]
    embeddings: torch.Tensor

    @classmethod
    def of(cls, replacement: ReplacementModel, prompt: Prompt, features: list[tuple[int, int, int]]) -> SourceLeaves:
        by_layer: dict[int, list[int]] = {}
        for index, (layer, _, _) in enumerate(features):
            by_layer.setdefault(layer, []).append(index)
        activations = torch.tensor([float(prompt.activations[layer][pos, f]) for layer, pos, f in features])
        # Features that are not nodes (at BOS, or past max_features) still act: what they write joins
        # their (layer, position)'s error node, so the graph's replacement stays exact on the prompt.
        rests = {}
        for layer in range(replacement.model.cfg.n_layers):
            rest = prompt.activations[layer].clone()
            for index in by_layer.get(layer, []):
                _, pos, feature = features[index]
                rest[pos, feature] = 0
            rests[layer] = rest
        folded_errors = {layer: prompt.errors[layer] + sum(rests[source] @ decoder.detach().float()
                                                           for source, decoder in replacement.writers(layer))
                         for layer in range(replacement.model.cfg.n_layers)}
        # Each layer's active features as (positions, features) index lists, for SparseFeatures.
        spots = {layer: (torch.tensor([features[i][1] for i in indices]), torch.tensor([features[i][2] for i in indices]))
                 for layer, indices in by_layer.items()}
        return cls(features, activations, by_layer, spots, folded_errors, prompt.embeddings)

    def forward(self, replacement: ReplacementModel, prompt: Prompt, batch: int,
                extra_hooks: list[tuple[str, object]] | None = None) -> _Pass:
        """The replacement on ``batch`` copies of the prompt with these sources as leaves."""
        n_layers = replacement.model.cfg.n_layers
        nothing = _no_features(batch)
        values = {layer: self.activations[torch.tensor(indices)].unsqueeze(0).repeat(batch, 1).requires_grad_(True)
                  for layer, indices in self.by_layer.items()}
        leaves = {layer: SparseFeatures(self.spots[layer][0], self.spots[layer][1], values[layer]) if layer in values
                  else nothing for layer in range(n_layers)}
        errors = {layer: self.folded_errors[layer].unsqueeze(0).repeat(batch, 1, 1).requires_grad_(True)
                  for layer in range(n_layers)}
        embedding = self.embeddings.unsqueeze(0).repeat(batch, 1, 1).requires_grad_(True)
        reads, logits = _run(replacement, prompt, batch, leaves, errors, embedding, extra_hooks)
        value_layers = sorted(values)
        error_list = [errors[layer] for layer in range(n_layers)]
        return _Pass(reads, logits, [values[layer] for layer in value_layers] + error_list + [embedding],
                     value_layers, error_list, embedding)

    def edges_of(self, replacement: ReplacementModel, run: _Pass, chunk: list[Node],
                 directions: list[tuple[str, torch.Tensor]] | None = None,
                 keep_graph: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """(edges [len(chunk), n_sources], inputs [len(chunk)]): row i holds every source's edge
        into ``chunk[i]`` (value x gradient, seeded from row i of ``run``) and that target's input;
        one backward pass. The first position's error terms are constants, not sources (the
        attention sink is the same in every prompt; circuit-tracer treats it the same way), so
        their edges are zero and their effect is part of each target's constant."""
        batch, n_features = len(chunk), len(self.features)
        if batch > run.logits.shape[0]:
            raise ConfigError(f"{batch} targets for a pass of {run.logits.shape[0]} rows")
        seed = _seeds(replacement, run.reads, run.logits, chunk, directions)
        grads = torch.autograd.grad(seed.sum(), run.leaves, allow_unused=True, retain_graph=keep_graph)
        n_values = len(run.value_layers)
        feature_grads = torch.zeros(batch, n_features)
        for layer, grad in zip(run.value_layers, grads[:n_values]):
            if grad is not None:
                feature_grads[:, self.by_layer[layer]] = grad[:batch]
        n_pos = run.embedding.shape[1]
        error_edges = []
        for error, grad in zip(run.errors, grads[n_values:-1]):
            edge = (grad[:batch] * error[:batch].detach()).sum(-1) if grad is not None else torch.zeros(batch, n_pos)
            edge[:, 0] = 0
            error_edges.append(edge)
        embedding_grad = grads[-1]
        embedding_edges = (embedding_grad[:batch] * run.embedding[:batch].detach()).sum(-1) \
            if embedding_grad is not None else torch.zeros(batch, n_pos)
        edges = torch.cat([feature_grads * self.activations, torch.stack(error_edges, 1).reshape(batch, -1),
                           embedding_edges], 1)
        return edges, seed.detach()

    def edges(self, replacement: ReplacementModel, prompt: Prompt, chunk: list[Node],
              directions: list[tuple[str, torch.Tensor]] | None = None,
              extra_hooks: list[tuple[str, object]] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`edges_of` a forward of its own (``extra_hooks`` in it, e.g. cutting one head per row)."""
        run = self.forward(replacement, prompt, len(chunk), extra_hooks)
        return self.edges_of(replacement, run, chunk, directions, keep_graph=False)


@torch.no_grad()
def constant_inputs(replacement: ReplacementModel, graph: AttributionGraph, batch_size: int = 16) -> torch.Tensor:
    """[n_targets] each target's input with every source at zero (what the biases and the first
    position's error terms give): a target's input is this plus the sum of its incoming edges."""
    prompt = replacement.freeze(graph.tokens)
    features = [(node.layer, node.position, node.feature) for node in graph.sources[:graph.n_features]]
    first = SourceLeaves.of(replacement, prompt, features).folded_errors
    n_pos, d_model = graph.tokens.shape[1], replacement.model.cfg.d_model
    found = []
    for start in range(0, len(graph.targets), batch_size):
        chunk = graph.targets[start:start + batch_size]
        leaves = {layer: _no_features(len(chunk)) for layer in replacement.transcoders}
        errors = {}
        for layer in replacement.transcoders:
            errors[layer] = torch.zeros(len(chunk), n_pos, d_model)
            errors[layer][:, 0] = first[layer][0]
        reads, logits = _run(replacement, prompt, len(chunk), leaves, errors, torch.zeros(len(chunk), n_pos, d_model))
        found.append(_seeds(replacement, reads, logits, chunk, graph.directions))
    return torch.cat(found)


def partial_influence(rows: torch.Tensor, row_nodes: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """[n_columns] each source's influence on the outputs so far: ``rows`` [n_rows, n_columns]
    the edges into the targets attributed so far (row i is node ``row_nodes[i]``, a column index,
    or -1 for an output), ``weights`` [n_rows] the outputs' weights (0 for feature rows). The
    weights are followed back along the row-normalised |edges|, summed over path lengths; only
    attributed nodes pass influence on."""
    magnitude = rows.abs()
    shares = magnitude / magnitude.sum(1, keepdim=True).clamp_min(1e-30)
    place = torch.full((rows.shape[1],), -1, dtype=torch.long)
    has_row = row_nodes >= 0
    place[row_nodes[has_row]] = has_row.nonzero().flatten()
    flow, total = weights.float().clone(), torch.zeros(rows.shape[1])
    for _ in range(rows.shape[0] + 1):
        reached = flow @ shares  # [n_columns]
        if not bool(reached.any()):
            break
        total = total + reached
        flow = torch.zeros_like(flow)
        found = place >= 0
        flow[place[found]] = reached[found]
    return total


def attribute(replacement: ReplacementModel, tokens: torch.Tensor, logit_mass: float = 0.95, max_logits: int = 10,
              max_features: int | None = None, batch_size: int = 16, progress: bool = True,
              target_tokens: list[int] | None = None,
              directions: list[tuple[str, torch.Tensor]] | None = None, update_every: int = 4) -> AttributionGraph:
    """The attribution graph of ``tokens`` [1, pos] (see the module docstring): every edge into
    every active feature and every target logit. Features at the first position (BOS, an
    attention sink) are not nodes. ``max_features`` caps the feature nodes: the outputs are
    attributed first, then features in order of their influence on the outputs so far (re-ranked
    every ``update_every`` batches), until the cap; what the features left out write is added
    to their (layer, position)'s error node, so the graph stays exact. Memory: the rows computed
    are [cap + outputs, active features + errors + embeddings], never a square over every
    active feature.
    ``target_tokens``: attribute these next tokens (ids) instead of the most likely ones;
    ``directions``: [(label, [d_vocab] weights)] targets of their own, each the weighted sum of
    the last position's logits (see :func:`logit_difference`), with weight 1 in influence."""
    check_number("logit_mass", logit_mass, minimum=0.0, maximum=1.0, strict_minimum=True)
    check_int("max_logits", max_logits, 1)
    check_int("batch_size", batch_size, 1)
    check_int("update_every", update_every, 1)
    if max_features is not None:
        check_int("max_features", max_features, 1)
    model = replacement.model
    prompt = replacement.freeze(tokens)
    n_pos = tokens.shape[1]
    n_layers = model.cfg.n_layers
    if target_tokens:
        vocabulary = prompt.logits.shape[-1]
        bad = [t for t in target_tokens if not 0 <= int(t) < vocabulary]
        if bad:
            raise ConfigError(f"target token ids {bad} are outside the vocabulary of {vocabulary}")
        logit_ids = torch.tensor([int(t) for t in dict.fromkeys(target_tokens)])
        logit_probs = prompt.logits[-1].softmax(-1)[logit_ids]
    else:
        logit_ids, logit_probs = top_logits(prompt.logits[-1], logit_mass, max_logits)
    directions = list(directions or [])
    for label, weights in directions:
        if not isinstance(weights, torch.Tensor) or weights.shape != (prompt.logits.shape[-1],):
            raise ConfigError(f"direction {label!r} must weigh the {prompt.logits.shape[-1]} logits ([d_vocab]); got "
                              f"{getattr(weights, 'shape', type(weights).__name__)}")
    outputs = [Node("logit", feature=int(t)) for t in logit_ids] + \
        [Node("direction", feature=index) for index in range(len(directions))]
    logit_probs = torch.cat([logit_probs.float(), torch.ones(len(directions))])
    active = _active(prompt)
    every = SourceLeaves.of(replacement, prompt, active)  # every active feature a leaf: all columns exact
    all_nodes = [Node("feature", layer, pos, f) for layer, pos, f in active]
    n_active, n_columns = len(active), len(active) + (n_layers + 1) * n_pos
    cap = n_active if max_features is None else min(max_features, n_active)
    bar = tqdm(total=len(outputs) + cap, desc="attribution", disable=not progress or len(outputs) + cap <= batch_size)

    # One forward pass of batch_size copies, kept: every chunk of targets is one backward pass of it.
    run = every.forward(replacement, prompt, min(batch_size, len(outputs) + cap))

    def attribute_rows(nodes: list[Node]) -> tuple[torch.Tensor, torch.Tensor]:
        found = [every.edges_of(replacement, run, nodes[start:start + batch_size], directions)
                 for start in range(0, len(nodes), batch_size)]
        bar.update(len(nodes))
        return torch.cat([edges for edges, _ in found]), torch.cat([inputs for _, inputs in found])

    output_rows, output_inputs = attribute_rows(outputs) if outputs else (torch.zeros(0, n_columns), torch.zeros(0))
    if cap == n_active:  # every feature: no ranking needed
        chosen = list(range(n_active))
        feature_rows, feature_inputs = attribute_rows(all_nodes) if all_nodes else (torch.zeros(0, n_columns),
                                                                                     torch.zeros(0))
    else:
        rows, inputs, order = [output_rows], [output_inputs], []
        visited = torch.zeros(n_active, dtype=torch.bool)
        while len(order) < cap:
            computed = torch.cat(rows)
            row_nodes = torch.tensor([-1] * len(outputs) + order, dtype=torch.long)
            weights = torch.cat([logit_probs, torch.zeros(len(order))])
            ranking = partial_influence(computed, row_nodes, weights)[:n_active].argsort(descending=True)
            pending = ranking[~visited[ranking]][:min(update_every * batch_size, cap - len(order))].tolist()
            found_rows, found_inputs = attribute_rows([all_nodes[i] for i in pending])
            rows.append(found_rows)
            inputs.append(found_inputs)
            order += pending
            visited[pending] = True
        by_index = sorted(range(len(order)), key=lambda i: order[i])
        chosen = sorted(order)
        feature_rows = torch.cat(rows[1:])[by_index]
        feature_inputs = torch.cat(inputs[1:])[by_index]
    bar.close()
    # Columns: the chosen features, then each error node with the features left out at its
    # (layer, position) added to it (their edges are exact; they are just not nodes), then embeddings.
    kept = set(chosen)
    left_out = torch.tensor([i for i in range(n_active) if i not in kept], dtype=torch.long)
    all_rows = torch.cat([feature_rows, output_rows])
    errors = all_rows[:, n_active:n_active + n_layers * n_pos].clone()
    if len(left_out):
        error_column = torch.tensor([active[i][0] * n_pos + active[i][1] for i in left_out.tolist()])
        errors.index_add_(1, error_column, all_rows[:, left_out])
    adjacency = torch.cat([all_rows[:, chosen], errors, all_rows[:, n_active + n_layers * n_pos:]], 1)
    features = [active[i] for i in chosen]
    sources = ([all_nodes[i] for i in chosen]
               + [Node("error", layer, pos) for layer in range(n_layers) for pos in range(n_pos)]
               + [Node("embedding", -1, pos) for pos in range(n_pos)])
    targets = sources[:len(features)] + outputs
    activations = every.activations[chosen] if chosen else torch.zeros(0)
    total_active = sum(int((values > 0).sum()) for values in prompt.activations.values())
    info = {"n_features": len(features), "active_features": total_active, "folded_into_errors":
            total_active - len(features), "max_features": max_features, "logit_mass": logit_mass,
            "kept_logit_probability": float(logit_probs[:len(logit_ids)].sum()), "directions": [
                label for label, _ in directions]}
    return AttributionGraph(tokens, sources, targets, adjacency, activations,
                            torch.cat([feature_inputs, output_inputs]), logit_probs, info, directions)


def logit_difference(model, token: int, other: int) -> tuple[str, torch.Tensor]:
    """A direction target: the logit of ``token`` minus that of ``other`` (ids)."""
    vocabulary = model.cfg.d_vocab
    for value in (token, other):
        if not 0 <= int(value) < vocabulary:
            raise ConfigError(f"token id {value} is outside the vocabulary of {vocabulary}")
    weights = torch.zeros(vocabulary)
    weights[int(token)], weights[int(other)] = 1.0, -1.0
    decode = model.tokenizer.decode
    return f"{decode([int(token)])!r} - {decode([int(other)])!r}", weights


def replacement_logits(replacement: ReplacementModel, tokens: torch.Tensor) -> torch.Tensor:
    """[pos, d_vocab] the replacement model's logits on ``tokens`` [1, pos] (equal to the real
    model's: the error terms make up what the transcoders miss)."""
    prompt = replacement.freeze(tokens)
    with torch.no_grad(), replacement.model.hooks(replacement.hooks(prompt)):
        return replacement.model.hf_model(input_ids=tokens.to(replacement.model.device)).logits[0].float()


__all__ = ["AttributionGraph", "Node", "attribute", "constant_inputs", "logit_difference", "replacement_logits", "top_logits"]
