"""``mechscope steer`` (steered vs unsteered generations side by side) and ``mechscope refusal``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from mechscope.cli.core import console, load_model, say
from mechscope.cli.options import MaxNewTokens, ModelName, Overwrite, finite, out_option
from mechscope.files import prepare_output_folder
from mechscope.steering.direction import Direction
from mechscope.steering.refusal import RefusalConfig
from mechscope.steering.refusal_report import run_refusal
from mechscope.steering.runs import (
    CONTRASTS,
    SteerOptions,
    check_refusal_config,
    check_refusal_fits,
    refusal_outputs,
    run_steer,
)


def steer(
    prompt: Annotated[str, typer.Argument(help="the user prompt to generate from (chat template applied when the "
                                               "model has one)")],
    direction: Annotated[Path | None, typer.Option("--direction", "-d", help="a saved direction "
                                                                             "(.safetensors + .json)")] = None,
    contrast: Annotated[str | None, typer.Option(help="build the direction from a bundled contrast instead: "
                                                      f"{', '.join(CONTRASTS)}")] = None,
    layer: Annotated[int | None, typer.Option(min=0, help="layer to steer before (default: the direction's own "
                                                          "layer)")] = None,
    alpha: Annotated[str, typer.Option(help="strength: absolute (e.g. 8) or times the direction's scale "
                                            "(e.g. 1.5x)")] = "1x",
    positions: Annotated[str, typer.Option(help="all, prompt or generated")] = "all",
    ablate: Annotated[bool, typer.Option("--ablate", help="project the direction out everywhere instead of "
                                                          "adding it")] = False,
    max_new_tokens: MaxNewTokens = 48,
    model: ModelName = None,
) -> None:
    """Generate from PROMPT with and without steering and print both side by side."""
    options = SteerOptions(prompt, direction, contrast, layer, alpha, positions, ablate, max_new_tokens)
    chosen = Direction.load(direction) if direction is not None else None  # file errors before the load
    hooked = load_model(model)
    with console.status("reading the direction and generating ..."):
        run = run_steer(hooked, options, chosen)
    console.print(f"direction: {run.direction.method}, layer {run.direction.layer}, scale {run.direction.scale:.3g}")
    table = Table(title=f"{prompt!r}", show_lines=True)
    table.add_column("unsteered", ratio=1)
    table.add_column(run.label, ratio=1)
    table.add_row(run.plain, run.steered)
    console.print(table)


def refusal(
    out: Annotated[Path, out_option("folder for the direction, report and plots")] = Path("mechscope-refusal"),
    n_train: Annotated[int, typer.Option(min=2, help="harmful and harmless prompts each, for the candidate "
                                                     "means")] = 64,
    n_val: Annotated[int, typer.Option(min=1, help="held-out prompts each, for choosing the candidate")] = 16,
    n_test: Annotated[int | None, typer.Option(min=1, help="test prompts each (default: the whole test "
                                                           "split)")] = None,
    kl_bound: Annotated[float, typer.Option(min=0.0, help="largest KL (nats) on harmless prompts under ablation",
                                            callback=finite(minimum=0.0))] = 0.1,
    max_new_tokens: MaxNewTokens = 48,
    save_model: Annotated[bool, typer.Option("--save-model", help="also save the orthogonalised model (HF folder, "
                                                                  "~0.5 GB)")] = False,
    model: ModelName = None,
    overwrite: Overwrite = False,
) -> None:
    """Find the refusal direction, ablate it, bake it into the weights, add it; print and save the
    refusal rates, refusal scores, KL and perplexity of each."""
    config = check_refusal_config(RefusalConfig(n_train=n_train, n_val=n_val, n_test=n_test, kl_bound=kl_bound,
                                                max_new_tokens=max_new_tokens))
    folder = prepare_output_folder(out, "refusal", refusal_outputs(save_model), overwrite=overwrite,
                                   options={"config": vars(config), "save_model": save_model, "model": model})
    say(folder.describe())
    hooked = load_model(model)
    check_refusal_fits(hooked, config)  # a missing chat template or a short context: before the search
    report = run_refusal(hooked, folder.path, config, save_model=save_model)
    folder.record()
    chosen = report.search.chosen
    console.print(f"chosen direction: layer {chosen.layer}, position {chosen.position}; "
                  f"KL on harmless under ablation {report.kl_harmless_ablated:.4f}")
    for note in report.search.notes:
        console.print(f"[yellow]note:[/yellow] {note}")
    table = Table(title="held-out prompts")
    for column in ("prompts", "model", "refusal rate", "refusal score", "perplexity"):
        table.add_column(column)
    for item in report.conditions:
        ppl = report.perplexity.get(item.name)
        table.add_row(item.prompts, item.name, f"{item.refusal_rate:.0%}", f"{item.refusal_score:+.2f}",
                      "" if ppl is None else f"{ppl:.2f}")
    console.print(table)
    console.print(f"written: {folder.path}/direction.safetensors, report.json, generations.json, refusal.html"
                  + (", model/" if save_model else ""))
