"""``mechscope probe``: a linear-probe sweep over layers on one of the bundled probing datasets."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

CONTROLS = ("word", "shuffle")


def probe(
    dataset: str = typer.Option("sentiment", help="sentiment, facts or harmful-harmless"),
    kind: str = typer.Option("logistic", help="logistic, mass_mean or mass_mean_iid"),
    layers: str = typer.Option("all", help="all, a list (0,5,10), a range (5-15) or a mix (0,5-8)"),
    hook: str = typer.Option("resid_post", help="hook point within each block: resid_pre, resid_mid, resid_post, "
                                                "attn_out, mlp_out (or any blocks.{L}.<name> suffix)"),
    position: int = typer.Option(-1, help="token position; negative counts back from each text's last token"),
    chat: bool = typer.Option(None, "--chat/--no-chat", help="wrap texts in the chat template (default: only "
                                                             "for harmful-harmless, when the model has one)"),
    control: str = typer.Option("word", help="control-task keys: word (each text's last word gets a random "
                                             "label) or shuffle (labels permuted per example)"),
    limit: int = typer.Option(None, min=4, help="use at most this many train and this many test examples"),
    seed: int = typer.Option(0, help="seed of the control labels"),
    model: str = typer.Option(None, "--model", "-m", help="bundled name, .gguf path, local folder or hub id"),
    out: Path = typer.Option(None, "--out", "-o", help="folder for sweep.json, sweep.html, probes/*.safetensors"),
) -> None:
    """Train a probe (and a control probe) per layer on the dataset's train split, score them on
    its test split, and print accuracy, AUROC, control accuracy and selectivity per layer."""
    from mechscope.cli.main import _load, console
    from mechscope.probes import KINDS, PROBE_DATASETS, probe_dataset, probe_sweep

    if dataset not in PROBE_DATASETS:
        raise typer.BadParameter(f"unknown dataset {dataset!r}; choose one of: {', '.join(PROBE_DATASETS)}",
                                 param_hint="--dataset")
    if kind not in KINDS:
        raise typer.BadParameter(f"unknown probe kind {kind!r}; choose one of: {', '.join(KINDS)}", param_hint="--kind")
    if control not in CONTROLS:
        raise typer.BadParameter(f"unknown control {control!r}; choose one of: {', '.join(CONTROLS)}",
                                 param_hint="--control")
    train, test = probe_dataset(dataset, "train"), probe_dataset(dataset, "test")
    if limit is not None:
        train, test = train.head(limit), test.head(limit)
    hooked = _load(model)
    hook_names = [_hook_name(layer, hook) for layer in _parse_layers(layers, hooked.cfg.n_layers)]
    try:
        for name in hook_names:
            hooked.hook_point(name)
    except KeyError as error:
        raise typer.BadParameter(f"{error.args[0]} (common choices: resid_pre, resid_mid, resid_post, attn_out, "
                                 "mlp_out)", param_hint="--hook") from error
    if chat is None:
        chat = None if dataset == "harmful-harmless" else False  # None: the template when the model has one
    keys = control == "word"
    sweep = probe_sweep(hooked, train.texts, train.labels, hook_names, position=position, kind=kind,
                        test_texts=test.texts, test_labels=test.labels, control_keys=train.keys if keys else None,
                        test_control_keys=test.keys if keys else None, chat=chat, seed=seed)
    _print_sweep(console, sweep, f"{kind} probes on {dataset} at position {position} "
                                 f"({sweep.n_train} train / {sweep.n_test} test, control: {control})")
    if out is not None:
        sweep.save(out)
        console.print(f"wrote {out / 'sweep.json'}, {out / 'sweep.html'} and {len(sweep.probes)} probes in "
                      f"{out / 'probes'}")


def _print_sweep(console, sweep, title: str) -> None:
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


def _hook_name(layer: int, hook: str) -> str:
    """``resid_post`` -> ``blocks.{layer}.hook_resid_post``; dotted or ``hook_`` suffixes are kept."""
    suffix = hook if hook.startswith("hook_") or "." in hook else f"hook_{hook}"
    return f"blocks.{layer}.{suffix}"


def _parse_layers(text: str, n_layers: int) -> list[int]:
    """"all", "0,5,10", "5-15" or a mix, as a sorted list of distinct layers in range."""
    if text.strip().lower() == "all":
        return list(range(n_layers))
    chosen: set[int] = set()
    try:
        for part in text.split(","):
            if "-" in part.strip()[1:]:
                low, high = part.split("-")
                chosen.update(range(int(low), int(high) + 1))
            elif part.strip():
                chosen.add(int(part))
    except ValueError as error:
        raise typer.BadParameter(f"layers must look like all, 0,5,10 or 5-15, got {text!r}",
                                 param_hint="--layers") from error
    bad = sorted(layer for layer in chosen if not 0 <= layer < n_layers)
    if bad or not chosen:
        raise typer.BadParameter(f"layers {bad or text!r} out of range: the model has {n_layers} layers "
                                 f"(0..{n_layers - 1})", param_hint="--layers")
    return sorted(chosen)
