"""The run behind ``mechscope compare MODEL_A MODEL_B``: the layer-by-layer similarity grid of two
models on texts from the default corpus, on positions aligned across their tokenizers, with each
cell's permutation null; written as grid.json, grid.html and summary.json."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from mechscope import checks
from mechscope.compare.grid import aligned_activations, grid_figure, similarity_grid
from mechscope.compare.similarity import Metric
from mechscope.files import OutputFolder, atomic_text, prepare_output_folder
from mechscope.models.hooked_model import HookedModel
from mechscope.validate import check_choice, check_int

COMPARE_OUTPUTS = ("grid.json", "grid.html", "summary.json")


@dataclass(frozen=True)
class CompareOptions:
    """``mechscope compare``'s options; checked on creation, before any model loads."""

    metric: Metric = "linear_cka"
    texts: int = 64
    max_chars: int = 600
    permutations: int = 20
    seed: int = 0

    def __post_init__(self) -> None:
        check_choice("metric", self.metric, Metric)
        check_int("texts", self.texts, 1, 10_000)
        check_int("max_chars", self.max_chars, 20, 100_000)
        check_int("permutations", self.permutations, 0, 10_000)
        check_int("seed", self.seed, 0, checks.MAX_SEED)


def prepare_compare_folder(out: str | Path, options: CompareOptions, overwrite: bool = False,
                           extra: dict | None = None) -> OutputFolder:
    return prepare_output_folder(out, "compare", COMPARE_OUTPUTS, overwrite=overwrite,
                                 options={**asdict(options), **(extra or {})})


def corpus_texts(count: int, max_chars: int) -> list[str]:
    """``count`` texts of the default corpus (standard-library docstrings), each cut to
    ``max_chars`` characters at a space."""
    from mechscope.data.corpus import stdlib_docstrings

    texts = []
    for text in stdlib_docstrings(limit=count):
        cut = text[:max_chars]
        if len(text) > max_chars and " " in cut:
            cut = cut[:cut.rindex(" ")]
        texts.append(cut)
    return texts


def run_compare(model_a: HookedModel, model_b: HookedModel, options: CompareOptions, out: OutputFolder | str | Path,
                overwrite: bool = False, texts: list[str] | None = None, progress: bool = True) -> dict:
    """Align, score every layer pair, write the grid (JSON and figure) and a summary; returns it."""
    folder = out if isinstance(out, OutputFolder) else prepare_compare_folder(out, options, overwrite)
    texts = texts if texts is not None else corpus_texts(options.texts, options.max_chars)
    activations = aligned_activations(model_a, model_b, texts, progress=progress)
    grid = similarity_grid(activations, options.metric, options.permutations, options.seed, progress=progress)
    name_a, name_b = model_a.cfg.name or model_a.cfg.family, model_b.cfg.name or model_b.cfg.family
    atomic_text(folder / "grid.json", json.dumps(grid.to_json()))
    atomic_text(folder / "grid.html", grid_figure(grid, name_a, name_b).to_html(include_plotlyjs=True, full_html=True))
    above = None if grid.null_high is None else (
        grid.values < grid.null_high if options.metric == "procrustes" else grid.values > grid.null_high)
    summary = {"model_a": name_a, "model_b": name_b, "metric": options.metric, "texts": len(texts),
               "aligned_positions": activations.pairs, "dropped_outliers": activations.dropped, "rows": grid.rows,
               "layers_a": len(grid.layers_a), "layers_b": len(grid.layers_b),
               "cells_beyond_null": None if above is None else int(above.sum()),
               "best_match_relative_depth": [round(depth, 3) for depth in grid.relative_depth_match()]}
    atomic_text(folder / "summary.json", json.dumps(summary, indent=1))
    folder.record()
    return summary


__all__ = ["COMPARE_OUTPUTS", "CompareOptions", "corpus_texts", "prepare_compare_folder", "run_compare"]
