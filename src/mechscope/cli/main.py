"""The ``mechscope`` command line: ``inspect`` a prompt, ``patch``, ``trace``, ``circuit``, ``sae``, ``probe``, ``steer``,
``refusal``, list ``models``."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Mechanistic interpretability of HuggingFace causal LMs.")
console = Console()


def _load(model: str | None):
    """Load a model with a spinner (a GGUF conversion on first use takes ~20 s)."""
    import mechscope

    with console.status(f"loading {model or mechscope.DEFAULT_MODEL} ..."):
        return mechscope.load(model)


@app.command()
def inspect(
    prompt: str = typer.Argument(..., help="the prompt whose next-token prediction is analysed"),
    model: str = typer.Option(None, "--model", "-m", help="bundled name, .gguf path, local folder or hub id"),
    out: Path = typer.Option(Path("mechscope-report"), "--out", "-o", help="folder for report.html + summary.json"),
    top_k: int = typer.Option(10, min=2, help="how many next tokens to list (at least 2)"),
) -> None:
    """Top next tokens, logit lens, direct logit attribution (top vs second token, by layer and
    by head) and head scores; writes an HTML report and prints a summary."""
    from mechscope.report import inspect_prompt, write_report

    hooked = _load(model)
    with console.status("running the analyses ..."):
        result = inspect_prompt(hooked, prompt, k=top_k)
    _print_summary(result)
    report = write_report(result, out / "report.html")
    (out / "summary.json").write_text(json.dumps(result.to_json(), indent=2), encoding="utf-8")
    console.print(f"\nreport: [bold]{report}[/bold]  numbers: {out / 'summary.json'}")


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


@app.command()
def patch(
    task: str = typer.Option("ioi", help="ioi, greater-than, induction or factual-recall"),
    sites: str = typer.Option("heads", help="resid_pre, resid_mid, resid_post, attn_out, mlp_out, heads, "
                                            "heads_by_pos, q, k, v or pattern"),
    mode: str = typer.Option("denoise", help="denoise (clean into corrupted) or noise (corrupted into clean)"),
    metric: str = typer.Option("logit_diff", help="logit_diff, prob, prob_diff or kl"),
    atp: bool = typer.Option(False, "--atp", help="attribution patching (gradient estimate) instead of exact"),
    n: int = typer.Option(16, min=1, help="number of prompts"),
    seed: int = typer.Option(0),
    model: str = typer.Option(None, "--model", "-m", help="bundled name, .gguf path, local folder or hub id"),
    out: Path = typer.Option(Path("mechscope-patch"), "--out", "-o", help="folder for result.json + heatmap.html"),
) -> None:
    """Activation patching sweep on a task; writes JSON scores and an HTML heatmap."""
    from mechscope import tasks
    from mechscope.patching import activation_patch, attribution_patch

    if task not in tasks.TASKS:
        raise typer.BadParameter(f"unknown task {task!r}; choose one of: {', '.join(tasks.TASKS)}", param_hint="--task")
    hooked = _load(model)
    built = tasks.TASKS[task](hooked) if task == "factual-recall" else tasks.TASKS[task](hooked, n=n, seed=seed)
    if atp:
        result = attribution_patch(hooked, built, sites, mode=mode, metric=metric)
    else:
        result = activation_patch(hooked, built, sites, mode=mode, metric=metric)
    out.mkdir(parents=True, exist_ok=True)
    result.save(out / "result.json")
    result.plot().write_html(out / "heatmap.html", include_plotlyjs=True)
    table = Table(title=f"{'AtP' if atp else mode} patching of {sites} on {task} ({len(built)} prompts): top sites")
    for axis in result.axes:
        table.add_column(axis)
    table.add_column("score", justify="right")
    for labels, score in result.top(10):
        table.add_row(*labels, f"{score:+.3f}")
    console.print(table)
    console.print(f"clean {metric} {result.clean_value:.3f}, corrupted {result.corrupted_value:.3f}; "
                  f"wrote {out / 'result.json'} and {out / 'heatmap.html'}")


@app.command()
def trace(
    prompt: str = typer.Option(..., "--prompt", "-p", help="the factual prompt, e.g. 'The Eiffel Tower is in'"),
    subject: str = typer.Option(..., "--subject", "-s", help="the subject span to noise, e.g. 'Eiffel Tower'"),
    kinds: str = typer.Option("resid,attn,mlp", help="comma-separated: resid, attn, mlp"),
    window: int = typer.Option(10, min=1, help="layers restored together for attn / mlp"),
    samples: int = typer.Option(8, min=1, help="noise draws averaged per cell"),
    model: str = typer.Option(None, "--model", "-m", help="bundled name, .gguf path, local folder or hub id"),
    out: Path = typer.Option(Path("mechscope-trace"), "--out", "-o", help="folder for JSON + HTML heatmaps"),
) -> None:
    """Causal tracing (ROME-style): noise the subject, restore one state at a time."""
    from mechscope.patching import causal_trace

    hooked = _load(model)
    out.mkdir(parents=True, exist_ok=True)
    for kind in [k.strip() for k in kinds.split(",") if k.strip()]:
        result = causal_trace(hooked, prompt, subject, kind=kind, window=window, samples=samples)
        result.save(out / f"trace-{kind}.json")
        result.plot(title=f"causal trace ({kind}): p({result.info['answer']!r}) restored; clean "
                          f"{result.clean_value:.3f}, noised {result.corrupted_value:.3f}").write_html(
            out / f"trace-{kind}.html", include_plotlyjs=True)
        (layer, position), score = result.top(1)[0]
        console.print(f"{kind:5s}: strongest restore at layer {layer}, position {position} ({score:.2f} of the "
                      f"clean-noised gap)")
    console.print(f"wrote {out}/trace-*.json and trace-*.html")


@app.command()
def models() -> None:
    """List loadable models: bundled ones (installed or not) and what is in the cache."""
    from mechscope.models import disk_cache
    from mechscope.models.loading import BUNDLED, bundled_available

    table = Table(title="bundled models")
    table.add_column("name", no_wrap=True)
    for column in ("installed", "cached", "description", "install"):
        table.add_column(column)
    cached = set(disk_cache.list_cached())
    for name, bundled in BUNDLED.items():
        table.add_row(name, "yes" if bundled_available(name) else "no", "yes" if name in cached else "no",
                      bundled.description, bundled.install_hint)
    console.print(table)
    others = sorted(cached - set(BUNDLED))
    console.print(f"cache: {disk_cache.cache_root()}  (other cached: {', '.join(others) or 'none'})")
    console.print("also accepted by --model / mechscope.load: a .gguf path, a local HF folder, a hub id")


def _register_commands() -> None:
    from mechscope.cli.circuit import circuit
    from mechscope.cli.probe import probe
    from mechscope.cli.sae import sae_app
    from mechscope.cli.steer import refusal, steer

    app.command()(circuit)
    app.command()(probe)
    app.command()(steer)
    app.command()(refusal)
    app.add_typer(sae_app, name="sae")


_register_commands()

if __name__ == "__main__":
    app()
