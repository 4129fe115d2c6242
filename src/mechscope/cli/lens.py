"""``mechscope lens train``: fit a tuned lens on the default corpus (standard-library docstrings),
and :func:`kl_table`, the summary ``mechscope inspect --lens PATH`` can print."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from mechscope import checks
from mechscope.cli.core import console, load_model, new_app, say
from mechscope.cli.options import Contexts, ModelName, Overwrite, Seed, checked, out_option

lens_app = new_app("Tuned lens: per-layer affine translators read through the model's unembedding.")
MAX_STEPS = 1_000_000


@lens_app.callback()
def _group() -> None:
    """Tuned lens: per-layer affine translators read through the model's unembedding."""
    # The callback keeps ``lens`` a command group with its one command, so ``lens train`` reads
    # the same standalone and registered with ``app.add_typer(lens_app, name="lens")``.


def _parse_layers(text: str) -> list[int] | None:
    """``--layers``: "all" -> None (every layer), else e.g. "5,15,25" or "0-3"."""
    return None if text.strip().lower() == "all" else sorted(checks.parse_indices(text, "layers", what="layers"))


def kl_table(comparison, title: str = "KL(model output || lens), nats") -> Table:
    """A rich table of a :class:`mechscope.analysis.LensComparison`: point, logit lens, tuned lens."""
    table = Table(title=title)
    table.add_column("point")
    table.add_column("logit lens", justify="right")
    table.add_column("tuned lens", justify="right")
    for label, logit, tuned in zip(comparison.labels, comparison.logit_lens_kl.tolist(),
                                   comparison.tuned_lens_kl.tolist()):
        table.add_row(label, f"{logit:.4f}", f"{tuned:.4f}")
    return table


@lens_app.command()
def train(
    model: ModelName = None,
    out: Annotated[Path, out_option("folder: lens.safetensors + lens.json, checkpoints/, comparison.json; a rerun "
                                    "with the same options resumes")] = Path("mechscope-lens"),
    contexts: Contexts = 256,
    steps: Annotated[int, typer.Option(min=1, max=MAX_STEPS, help="optimiser steps")] = 250,
    seed: Seed = 0,
    batch_contexts: Annotated[int, typer.Option(min=1, max=checks.MAX_BATCH, help="contexts per step")] = 4,
    layers: Annotated[str, typer.Option(help="translators to train: all, or e.g. 5,15,25 (the others stay the "
                                             "identity; each layer costs a vocabulary-wide matmul per step)",
                                        callback=checked(_parse_layers))] = "all",
    held_out: Annotated[int, typer.Option(min=0, max=checks.MAX_CONTEXTS,
                                          help="held-out contexts for the KL comparison (0: skip it)")] = 16,
    overwrite: Overwrite = False,
) -> None:
    """Train a tuned lens (resumable: rerun with the same options after an interruption), save
    it as lens.safetensors + lens.json and compare its per-layer KL to the model's output with
    the logit lens's on held-out contexts."""
    from mechscope.analysis import TunedLensConfig
    from mechscope.report.lens_runs import prepare_lens_folder, run_lens_train

    chosen = _parse_layers(layers)
    config = TunedLensConfig(steps=steps, batch_contexts=batch_contexts, seed=seed,
                             layers=tuple(chosen) if chosen is not None else None)
    folder = prepare_lens_folder(out, config, contexts, held_out, model, overwrite)
    say(folder.describe())
    hooked = load_model(model)
    _, comparison = run_lens_train(hooked, folder, config, contexts, held_out)
    console.print(f"saved {folder / 'lens.safetensors'} and {folder / 'lens.json'}")
    if comparison is not None:
        console.print(kl_table(comparison, f"KL(model output || lens) on {held_out} held-out contexts, nats"))
