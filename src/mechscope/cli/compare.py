"""``mechscope compare MODEL_A MODEL_B``: how similar two models' layers are, across tokenizers."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mechscope.cli.core import console, load_model, say
from mechscope.cli.options import Overwrite, Seed, choice, out_option
from mechscope.compare.similarity import METRICS


def compare(
    model_a: Annotated[str, typer.Argument(help="first model: bundled name, .gguf path or local folder")],
    model_b: Annotated[str, typer.Argument(help="second model (may have another tokenizer, width and depth)")],
    metric: Annotated[str, typer.Option(help=f"one of {', '.join(sorted(METRICS))}",
                                        callback=choice("metric", sorted(METRICS)))] = "linear_cka",
    texts: Annotated[int, typer.Option(min=1, max=10_000, help="corpus texts (standard-library docstrings)")] = 64,
    max_chars: Annotated[int, typer.Option(min=20, max=100_000, help="characters per text, at most")] = 600,
    permutations: Annotated[int, typer.Option(min=0, max=10_000, help="row shuffles per cell for the null")] = 20,
    out: Annotated[Path, out_option("folder for grid.json, grid.html and summary.json")] = Path("mechscope-compare"),
    seed: Seed = 0,
    overwrite: Overwrite = False,
) -> None:
    """Score every layer of MODEL_A against every layer of MODEL_B on the same texts, at the
    positions where both tokenizers end a token at the same character, with each cell's
    permutation null; outlier-norm tokens are dropped and counted."""
    from mechscope.compare.runs import CompareOptions, prepare_compare_folder, run_compare

    options = CompareOptions(metric, texts, max_chars, permutations, seed)
    folder = prepare_compare_folder(out, options, overwrite, {"model_a": model_a, "model_b": model_b})
    say(folder.describe())
    summary = run_compare(load_model(model_a), load_model(model_b), options, folder)
    console.print(f"{summary['aligned_positions']} aligned positions over {summary['texts']} texts "
                  f"({summary['dropped_outliers']} outlier rows dropped); {summary['layers_a']} x {summary['layers_b']} "
                  f"layers by {summary['metric']}; cells beyond their null: {summary['cells_beyond_null']}")
    console.print(f"wrote {folder.path}/grid.json, grid.html and summary.json")
