"""``mechscope inspect`` (one prompt, many analyses), ``mechscope patch`` (a patching sweep on a
task) and ``mechscope trace`` (causal tracing)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from mechscope.checks import MAX_SAMPLES, MAX_TOP_K, MAX_WINDOW
from mechscope.cli.core import console, load_model, say
from mechscope.cli.options import ModelName, Overwrite, Prompts, Seed, Task, out_option
from mechscope.patching.runs import (
    PatchOptions,
    TraceOptions,
    prepare_patch_folder,
    prepare_trace_folder,
    run_patch,
    run_trace,
)
from mechscope.report.runs import check_inspect_options, prepare_inspect_folder, run_inspect


def inspect(
    prompt: Annotated[str, typer.Argument(help="the prompt whose next-token prediction is analysed")],
    model: ModelName = None,
    out: Annotated[Path, out_option("folder for report.html + summary.json")] = Path("mechscope-report"),
    top_k: Annotated[int, typer.Option(min=2, max=MAX_TOP_K, help="how many next tokens to list (at least 2)")] = 10,
    lens: Annotated[Path | None, typer.Option("--lens", help="a tuned lens from `mechscope lens train` (DIR/lens, "
                                                            "or its .safetensors / .json): adds it to the report")] = None,
    overwrite: Overwrite = False,
) -> None:
    """Top next tokens, logit lens (and the tuned lens, with --lens), direct logit attribution
    (top vs second token, by layer and by head) and head scores; writes an HTML report and
    prints a summary."""
    from mechscope.analysis import TunedLens

    check_inspect_options(prompt, top_k)
    tuned = None if lens is None else TunedLens.load(lens)  # a bad file fails before the model loads
    folder = prepare_inspect_folder(out, prompt, top_k, overwrite, model, lens)
    say(folder.describe())
    hooked = load_model(model)
    with console.status("running the analyses ..."):
        result = run_inspect(hooked, prompt, folder, top_k, tuned_lens=tuned)
    _print_summary(result)
    if result.lens_kl is not None:
        from mechscope.cli.lens import kl_table

        console.print(kl_table(result.lens_kl, "KL(model output || lens) on this prompt, nats"))
    console.print(f"\nreport: [bold]{folder / 'report.html'}[/bold]  numbers: {folder / 'summary.json'}")


def _print_summary(result) -> None:
    console.print(f"[bold]{result.model_name}[/bold]  prompt: {result.prompt!r}")
    table = Table(title="top next tokens")
    table.add_column("token")
    table.add_column("prob", justify="right")
    for token, prob in result.top_next[:5]:
        table.add_row(repr(token), f"{prob:.3f}")
    console.print(table)
    lens = Table(title="logit lens (top token at each point)")
    lens.add_column("point")
    lens.add_column("top token")
    lens.add_column("prob", justify="right")
    for label, top in zip(result.lens.labels, result.lens.top_tokens):
        lens.add_row(label, repr(top[0][0]), f"{top[0][1]:.3f}")
    console.print(lens)
    dla = result.attribution
    console.print(f"DLA of {dla.token!r} - {dla.other_token!r}: logit diff {dla.logit_diff:.3f} "
                  f"= components {float(dla.by_component.sum()):.3f} + bias {dla.bias:.3f}")
    heads = Table(title="top heads")
    for column in ("DLA", "previous token", "induction", "duplicate token"):
        heads.add_column(column)
    ranked = [result.heads.ranked(kind, 5) for kind in ("previous_token", "induction", "duplicate_token")]
    top_dla = dla.top_heads(5)
    for row in range(len(top_dla)):  # fewer than 5 rows on models with fewer than 5 heads
        layer, head, value = top_dla[row]
        cells = [f"L{layer}H{head} {value:+.2f}"] + [f"L{r[row][0]}H{r[row][1]} {r[row][2]:.2f}" for r in ranked]
        heads.add_row(*cells)
    console.print(heads)


def patch(
    task: Task = "ioi",
    sites: Annotated[str, typer.Option(help="resid_pre, resid_mid, resid_post, attn_out, mlp_out, heads, "
                                            "heads_by_pos, q, k, v or pattern")] = "heads",
    mode: Annotated[str, typer.Option(help="denoise (clean into corrupted) or noise (corrupted into clean)")] = "denoise",
    metric: Annotated[str, typer.Option(help="logit_diff, prob, prob_diff or kl")] = "logit_diff",
    atp: Annotated[bool, typer.Option("--atp", help="attribution patching (gradient estimate) instead of exact")] = False,
    n: Prompts = 16,
    seed: Seed = 0,
    model: ModelName = None,
    out: Annotated[Path, out_option("folder for result.json + heatmap.html")] = Path("mechscope-patch"),
    overwrite: Overwrite = False,
) -> None:
    """Activation patching sweep on a task; writes JSON scores and an HTML heatmap."""
    options = PatchOptions(task, sites, mode, metric, atp, n, seed)
    folder = prepare_patch_folder(out, options, overwrite, model)
    say(folder.describe())
    result, built = run_patch(load_model(model), options, folder)
    table = Table(title=f"{'AtP' if atp else mode} patching of {sites} on {task} ({len(built)} prompts): top sites")
    for axis in result.axes:
        table.add_column(axis)
    table.add_column("score", justify="right")
    for labels, score in result.top(10):
        table.add_row(*labels, f"{score:+.3f}")
    console.print(table)
    console.print(f"clean {metric} {result.clean_value:.3f}, corrupted {result.corrupted_value:.3f}; "
                  f"wrote {folder / 'result.json'} and {folder / 'heatmap.html'}")


def trace(
    prompt: Annotated[str, typer.Option("--prompt", "-p", help="the factual prompt, e.g. 'The Eiffel Tower is in'")],
    subject: Annotated[str, typer.Option("--subject", "-s", help="the subject span to noise, e.g. 'Eiffel Tower'")],
    kinds: Annotated[str, typer.Option(help="comma-separated: resid, attn, mlp")] = "resid,attn,mlp",
    window: Annotated[int, typer.Option(min=1, max=MAX_WINDOW, help="layers restored together for attn / mlp")] = 10,
    samples: Annotated[int, typer.Option(min=1, max=MAX_SAMPLES, help="noise draws averaged per cell")] = 8,
    model: ModelName = None,
    out: Annotated[Path, out_option("folder for JSON + HTML heatmaps")] = Path("mechscope-trace"),
    overwrite: Overwrite = False,
) -> None:
    """Causal tracing (ROME-style): noise the subject, restore one state at a time."""
    options = TraceOptions(prompt, subject, TraceOptions.parse_kinds(kinds), window, samples)
    folder = prepare_trace_folder(out, options, overwrite, model)
    say(folder.describe())
    for kind, result in run_trace(load_model(model), options, folder).items():
        (layer, position), score = result.top(1)[0]
        console.print(f"{kind:5s}: strongest restore at layer {layer}, position {position} ({score:.2f} of the "
                      f"clean-noised gap)")
    console.print(f"wrote {folder.path}/trace-*.json and trace-*.html")
