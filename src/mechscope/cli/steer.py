"""``mechscope steer`` (steered vs unsteered generations side by side) and ``mechscope refusal``."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

console = Console()
CONTRASTS = {
    # name: (how the direction is read, what it points towards)
    "sentiment": "positive minus negative sentences (last token)",
    "refusal": "harmful minus harmless instructions (last chat-template token)",
    "caa-refusal": "CAA: refusing minus complying A/B answers",
    "caa-sycophancy": "CAA: sycophantic minus honest A/B answers",
}


def _contrast_direction(hooked, name: str, layer: int):
    from mechscope import datasets
    from mechscope.steering import caa_direction, contrast_directions

    if name == "sentiment":
        pairs = datasets.load("sentiment")
        return contrast_directions(hooked, [p["positive"] for p in pairs], [p["negative"] for p in pairs],
                                   layer, -1, chat=False)[(layer, -1)]
    if name == "refusal":
        return contrast_directions(hooked, datasets.load("harmful")[:64], datasets.load("harmless")[:64],
                                   layer, -1, chat=True)[(layer, -1)]
    return caa_direction(hooked, datasets.load(name), layer, chat=True)[layer]


def parse_alpha(text: str, scale: float) -> float:
    """"4" is absolute; "1.5x" is 1.5 times the direction's scale."""
    try:
        return float(text[:-1]) * scale if text.endswith("x") else float(text)
    except ValueError:
        raise typer.BadParameter(f"alpha must be a number (e.g. 4) or a multiple of the direction's scale "
                                 f"(e.g. 1.5x), got {text!r}") from None


def steer(
    prompt: str = typer.Argument(..., help="the user prompt to generate from (chat template applied when the model has one)"),
    direction: Path = typer.Option(None, "--direction", "-d", help="a saved direction (.safetensors + .json)"),
    contrast: str = typer.Option(None, help=f"build the direction from a bundled contrast instead: {', '.join(CONTRASTS)}"),
    layer: int = typer.Option(None, help="layer to steer before (default: the direction's own layer)"),
    alpha: str = typer.Option("1x", help="strength: absolute (e.g. 8) or times the direction's scale (e.g. 1.5x)"),
    positions: str = typer.Option("all", help="all, prompt or generated"),
    ablate: bool = typer.Option(False, "--ablate", help="project the direction out everywhere instead of adding it"),
    max_new_tokens: int = typer.Option(48, min=1),
    model: str = typer.Option(None, "--model", "-m", help="bundled name, .gguf path, local folder or hub id"),
) -> None:
    """Generate from PROMPT with and without steering and print both side by side."""
    from mechscope.cli.main import _load
    from mechscope.steering import Direction, DirectionalAblation, Steering, generate

    if (direction is None) == (contrast is None):
        raise typer.BadParameter("give exactly one of --direction FILE or --contrast NAME")
    if contrast is not None and contrast not in CONTRASTS:
        raise typer.BadParameter(f"unknown contrast {contrast!r}; choose one of: {', '.join(CONTRASTS)}")
    if contrast is not None and layer is None:
        raise typer.BadParameter("--contrast needs --layer (where to read and add the direction)")
    hooked = _load(model)
    if direction is not None:
        chosen = Direction.load(direction)
    else:
        with console.status(f"reading the {contrast} direction at layer {layer} ..."):
            chosen = _contrast_direction(hooked, contrast, layer)
    if ablate:
        intervention, label = DirectionalAblation(chosen), "direction ablated"
    else:
        strength = parse_alpha(alpha, chosen.scale)
        intervention = Steering(chosen, strength, layers=layer, positions=positions)
        label = f"steered: alpha {strength:.3g} at layer {layer if layer is not None else chosen.layer}"
    console.print(f"direction: {chosen.method}, layer {chosen.layer}, scale {chosen.scale:.3g}")
    with console.status("generating ..."):
        plain = generate(hooked, prompt, None, max_new_tokens=max_new_tokens, progress=False)[0]
        steered = generate(hooked, prompt, intervention, max_new_tokens=max_new_tokens, progress=False)[0]
    table = Table(title=f"{prompt!r}", show_lines=True)
    table.add_column("unsteered", ratio=1)
    table.add_column(label, ratio=1)
    table.add_row(plain, steered)
    console.print(table)


def refusal(
    out: Path = typer.Option(Path("mechscope-refusal"), "--out", "-o", help="folder for the direction, report and plots"),
    n_train: int = typer.Option(64, min=2, help="harmful and harmless prompts each, for the candidate means"),
    n_val: int = typer.Option(16, min=1, help="held-out prompts each, for choosing the candidate"),
    n_test: int = typer.Option(None, min=1, help="test prompts each (default: the whole test split)"),
    kl_bound: float = typer.Option(0.1, min=0.0, help="largest KL (nats) on harmless prompts under ablation"),
    max_new_tokens: int = typer.Option(48, min=1, help="tokens generated per prompt for refusal rates"),
    save_model: bool = typer.Option(False, "--save-model", help="also save the orthogonalised model (HF folder, ~0.5 GB)"),
    model: str = typer.Option(None, "--model", "-m", help="bundled name, .gguf path, local folder or hub id"),
) -> None:
    """Find the refusal direction, ablate it, bake it into the weights, add it; print and save the
    refusal rates, refusal scores, KL and perplexity of each."""
    from mechscope.cli.main import _load
    from mechscope.steering.refusal import RefusalConfig
    from mechscope.steering.refusal_report import run_refusal

    if save_model and (out / "model").exists() and any((out / "model").iterdir()):
        raise typer.BadParameter(f"{out / 'model'} already holds a model; choose another --out")
    config = RefusalConfig(n_train=n_train, n_val=n_val, n_test=n_test, kl_bound=kl_bound,
                           max_new_tokens=max_new_tokens)
    hooked = _load(model)
    report = run_refusal(hooked, out, config, save_model=save_model)
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
    console.print(f"written: {out}/direction.safetensors, report.json, generations.json, refusal.html"
                  + (", model/" if save_model else ""))
