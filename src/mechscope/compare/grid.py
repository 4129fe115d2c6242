"""The layer-by-layer similarity grid between two models (or a model and itself, or its organism).

:func:`aligned_activations` runs both models on the same texts, pairs their positions across
tokenizers (:mod:`mechscope.compare.align`) and returns each chosen layer's residual stream at
the paired positions; rows where any chosen layer of either model has an outlier-norm token are
dropped (and counted), so massive activations do not decide the similarity. :func:`similarity_grid`
scores every layer of A against every layer of B with one metric (and, optionally, each cell's
permutation null), and :func:`grid_figure` draws it.

Shapes: activations {layer: [n_pairs, d_model]}; the grid [n_layers_a, n_layers_b].
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from mechscope.compare.align import aligned_positions
from mechscope.compare.similarity import METRICS, Metric
from mechscope.errors import ConfigError
from mechscope.hooks import names
from mechscope.models.hooked_model import HookedModel
from mechscope.sae.evaluate import typical_tokens
from mechscope.validate import check_choice, check_int


@dataclass(frozen=True)
class AlignedActivations:
    """Each model's residual streams at the paired positions: ``a`` / ``b`` {layer: [n, d]};
    ``pairs`` positions paired over the texts, ``dropped`` of them as outliers."""

    a: dict[int, torch.Tensor]
    b: dict[int, torch.Tensor]
    pairs: int
    dropped: int


def _layers(model: HookedModel, layers: list[int] | None) -> list[int]:
    chosen = list(range(model.cfg.n_layers)) if layers is None else [int(layer) for layer in layers]
    bad = [layer for layer in chosen if not 0 <= layer < model.cfg.n_layers]
    if bad or not chosen:
        raise ConfigError(f"layers {bad or chosen} are not layers of {model.cfg.name or model.cfg.family} "
                          f"(0..{model.cfg.n_layers - 1})")
    return chosen


@torch.no_grad()
def aligned_activations(model_a: HookedModel, model_b: HookedModel, texts: list[str], layers_a: list[int] | None = None,
                        layers_b: list[int] | None = None, minimum_pairs: int = 64,
                        progress: bool = True) -> AlignedActivations:
    """The residual streams (after each chosen block) of both models at the positions of
    ``texts`` where their tokenizers end a token at the same character; fewer than
    ``minimum_pairs`` over all texts is a ConfigError that says how many aligned."""
    layers_a, layers_b = _layers(model_a, layers_a), _layers(model_b, layers_b)
    check_int("minimum_pairs", minimum_pairs, 4)
    if not texts:
        raise ConfigError("give at least one text to compare the models on")
    found_a: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers_a}
    found_b: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers_b}
    for text in tqdm(texts, desc="aligned activations", disable=not progress):
        alignment = aligned_positions(model_a.tokenizer, model_b.tokenizer, text, minimum=0)
        if alignment.pairs == 0:
            continue
        for model, ids, positions, layers, found in (
                (model_a, alignment.ids_a, alignment.positions_a, layers_a, found_a),
                (model_b, alignment.ids_b, alignment.positions_b, layers_b, found_b)):
            _, cache = model.run_with_cache(ids[None], names=[names.resid_post(layer) for layer in layers])
            for layer in layers:
                found[layer].append(cache[names.resid_post(layer)][0, positions].float().cpu())
    pairs = sum(len(values) for values in found_a[layers_a[0]])
    if pairs < minimum_pairs:
        raise ConfigError(f"only {pairs} positions of the {len(texts)} texts align between the two tokenizers; "
                          f"{minimum_pairs} are needed: give more or longer texts (plain prose aligns best)")
    a = {layer: torch.cat(values) for layer, values in found_a.items()}
    b = {layer: torch.cat(values) for layer, values in found_b.items()}
    keep = torch.ones(pairs, dtype=torch.bool)
    for values in list(a.values()) + list(b.values()):
        keep &= typical_tokens(values)
    return AlignedActivations({layer: v[keep] for layer, v in a.items()}, {layer: v[keep] for layer, v in b.items()},
                              pairs, int((~keep).sum()))


@dataclass(frozen=True)
class SimilarityGrid:
    """``values`` [n_layers_a, n_layers_b] of ``metric`` between layer ``layers_a[i]`` of A and
    ``layers_b[j]`` of B; ``null_high`` the same shape, each cell's 95th percentile over row
    shuffles (None when no null was asked for)."""

    metric: str
    layers_a: list[int]
    layers_b: list[int]
    values: torch.Tensor
    null_high: torch.Tensor | None
    rows: int

    def relative_depth_match(self) -> list[float]:
        """For each layer of A, the relative depth (0..1) of B's most similar layer (least
        distant, for a distance): where A's layer sits in B."""
        best = self.values.argmin(1) if self.metric == "procrustes" else self.values.argmax(1)
        top = max(self.layers_b) or 1
        return [self.layers_b[int(j)] / top for j in best]

    def to_json(self) -> dict:
        return {"metric": self.metric, "layers_a": self.layers_a, "layers_b": self.layers_b, "rows": self.rows,
                "values": self.values.tolist(),
                "null_high": None if self.null_high is None else self.null_high.tolist()}


def similarity_grid(activations: AlignedActivations, metric: Metric = "linear_cka", permutations: int = 0,
                    seed: int = 0, progress: bool = True) -> SimilarityGrid:
    """Every layer of A against every layer of B (see the module docstring); ``permutations`` > 0
    adds each cell's permutation null (Y's rows shuffled, the same shuffles for every cell)."""
    check_choice("metric", metric, Metric)
    check_int("permutations", permutations, 0)
    function = METRICS[metric]
    layers_a, layers_b = sorted(activations.a), sorted(activations.b)
    rows = len(activations.a[layers_a[0]])
    if rows < 4:
        raise ConfigError(f"{rows} rows are left after dropping outliers; at least 4 are needed")
    generator = torch.Generator().manual_seed(seed)
    shuffles = [torch.randperm(rows, generator=generator) for _ in range(permutations)]
    values = torch.zeros(len(layers_a), len(layers_b))
    null_high = torch.zeros_like(values) if permutations else None
    cells = [(i, j) for i in range(len(layers_a)) for j in range(len(layers_b))]
    for i, j in tqdm(cells, desc=f"{metric} grid", disable=not progress):
        x, y = activations.a[layers_a[i]], activations.b[layers_b[j]]
        values[i, j] = function(x, y)
        if permutations:
            null = torch.tensor([function(x, y[order]) for order in shuffles])
            null_high[i, j] = null.quantile(0.05 if metric == "procrustes" else 0.95)
    return SimilarityGrid(metric, layers_a, layers_b, values, null_high, rows)


def grid_figure(grid: SimilarityGrid, name_a: str = "model A", name_b: str = "model B"):
    """A plotly heatmap of the grid (layers of B across, layers of A up)."""
    import plotly.graph_objects as go

    figure = go.Figure(go.Heatmap(z=grid.values.tolist(), x=[str(layer) for layer in grid.layers_b],
                                  y=[str(layer) for layer in grid.layers_a], colorscale="Viridis",
                                  colorbar={"title": grid.metric}))
    figure.update_layout(title=f"{grid.metric} between the layers of {name_a} and {name_b} ({grid.rows} aligned tokens)",
                         xaxis_title=f"{name_b} layer", yaxis_title=f"{name_a} layer")
    return figure


__all__ = ["AlignedActivations", "SimilarityGrid", "aligned_activations", "grid_figure", "similarity_grid"]
