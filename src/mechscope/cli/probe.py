"""``mechscope probe``: a linear-probe sweep over layers on one of the bundled probing datasets."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from mechscope.cli.core import console, load_model, say
from mechscope.cli.options import BlockHook, ModelName, Overwrite, Seed, checked, choice, out_option
from mechscope.errors import MechscopeError
from mechscope.probes import KINDS, PROBE_DATASETS
from mechscope.probes.runs import CONTROLS, ProbeOptions, parse_layers, prepare_probe_folder, run_probe


def probe(
    dataset: Annotated[str, typer.Option(help="sentiment, facts or harmful-harmless",
                                         callback=choice("dataset", PROBE_DATASETS))] = "sentiment",
    kind: Annotated[str, typer.Option(help="logistic, mass_mean or mass_mean_iid",
                                      callback=choice("probe kind", KINDS))] = "logistic",
    layers: Annotated[str, typer.Option(help="all, a list (0,5,10), a range (5-15) or a mix (0,5-8)",
                                        callback=checked(parse_layers))] = "all",
    hook: BlockHook = "resid_post",
    position: Annotated[int, typer.Option(help="token position; negative counts back from each text's last "
                                               "token")] = -1,
    chat: Annotated[bool | None, typer.Option("--chat/--no-chat", help="wrap texts in the chat template (default: "
                                                                       "only for harmful-harmless, when the model "
                                                                       "has one)")] = None,
    control: Annotated[str, typer.Option(help="control-task keys: word (each text's last word gets a random label) "
                                              "or shuffle (labels permuted per example)",
                                         callback=choice("control", CONTROLS))] = "word",
    limit: Annotated[int | None, typer.Option(min=4, help="use at most this many train and this many test "
                                                          "examples")] = None,
    seed: Seed = 0,
    model: ModelName = None,
    out: Annotated[Path | None, out_option("folder for sweep.json, sweep.html, probes/*.safetensors")] = None,
    overwrite: Overwrite = False,
) -> None:
    """Train a probe (and a control probe) per layer on the dataset's train split, score them on
    its test split, and print accuracy, AUROC, control accuracy and selectivity per layer."""
    options = ProbeOptions(dataset, kind, layers, hook, position, chat, control, limit, seed)
    folder = None if out is None else prepare_probe_folder(out, options, overwrite, model)
    say(folder and folder.describe())
    hooked = load_model(model)
    _parse_layers(layers, hooked.cfg.n_layers)
    sweep = run_probe(hooked, options, folder)
    _print_sweep(sweep, f"{kind} probes on {dataset} at position {position} ({sweep.n_train} train / "
                        f"{sweep.n_test} test, control: {control})")
    if folder is not None:
        console.print(f"wrote {folder / 'sweep.json'}, {folder / 'sweep.html'} and {len(sweep.probes)} probes in "
                      f"{folder / 'probes'}")


def _print_sweep(sweep, title: str) -> None:
    table = Table(title=title)
    table.add_column("hook")
    for column in ("train acc", "test acc", "AUROC", "control acc", "selectivity"):
        table.add_column(column, justify="right")
    for row in sweep.rows:
        table.add_row(row.hook_name, f"{row.train_accuracy:.3f}", f"{row.test_accuracy:.3f}", f"{row.test_auroc:.3f}",
                      f"{row.control_accuracy:.3f}", f"{row.selectivity:+.3f}")
    console.print(table)
    best = sweep.best("test_accuracy")
    console.print(f"best: [bold]{best.hook_name}[/bold] test accuracy {best.test_accuracy:.3f}, AUROC "
                  f"{best.test_auroc:.3f}, selectivity {best.selectivity:+.3f} (majority-class chance: task "
                  f"{sweep.chance:.3f}, control {sweep.control_chance:.3f})")


def _parse_layers(text: str, n_layers: int) -> list[int]:
    """:func:`mechscope.probes.runs.parse_layers` as a usage error of ``--layers``: the range
    check needs the model's depth, so it runs in the command body, after the load."""
    try:
        return parse_layers(text, n_layers)
    except MechscopeError as error:
        raise typer.BadParameter(str(error), param_hint="--layers") from None
