"""``mechscope sae train | eval | dashboard`` on the default corpus (standard-library docstrings)."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table

sae_app = typer.Typer(no_args_is_help=True, help="Sparse dictionaries: train, evaluate, dashboards.")
CONTEXT = 128


def _contexts(hooked, n: int, seed: int, skip: int = 0):
    from mechscope.data import pack, stdlib_docstrings

    contexts = pack(hooked.tokenizer, stdlib_docstrings(), CONTEXT, n_contexts=n + skip, seed=seed)
    if len(contexts) < n + skip:
        raise typer.BadParameter(f"the default corpus holds {len(contexts)} contexts of {CONTEXT} tokens; ask for fewer")
    return contexts[skip:]


def _print_eval(console, scored) -> None:
    table = Table(title="evaluation on held-out contexts")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in ("l0", "fvu", "fvu_typical", "cosine", "ce_clean", "ce_spliced", "ce_zero", "ce_recovered", "kl", "dead", "dense"):
        table.add_row(key, f"{getattr(scored, key):.4f}")
    console.print(table)


@sae_app.command()
def train(
    hook: str = typer.Option(..., help="hook point, e.g. blocks.15.hook_resid_post"),
    arch: str = typer.Option("topk", help="relu, topk, batchtopk, jumprelu or matryoshka"),
    k: int = typer.Option(32, min=1, help="active latents (TopK family)"),
    d_sae: int = typer.Option(4608, min=1, help="number of latents"),
    tokens: str = typer.Option("2M", help="training tokens, e.g. 500k or 2M (the corpus is reused in epochs)"),
    batch_size: int = typer.Option(4096, min=1),
    lr: float = typer.Option(1e-3),
    harvest_contexts: int = typer.Option(1024, min=1, help="contexts of 128 tokens harvested (the rest is reuse)"),
    model: str = typer.Option(None, "--model", "-m", help="bundled name, .gguf path, local folder or hub id"),
    out: Path = typer.Option(Path("mechscope-sae"), "--out", "-o", help="folder: store/, checkpoints/, sae/"),
    seed: int = typer.Option(0),
) -> None:
    """Harvest activations (resumable), train a dictionary (resumable), save it in SAELens'
    format and evaluate it on held-out contexts."""
    from mechscope.cli.main import _load, console
    from mechscope.data import StoredActivations, harvest
    from mechscope.sae import SAEConfig, TrainConfig, evaluate_sae, save_sae
    from mechscope.sae import train as train_saes

    count = _parse_tokens(tokens)
    hooked = _load(model)
    try:
        cfg = SAEConfig(hooked.hook_point(hook).shape[-1], d_sae, arch, k=k, hook_name=hook,
                        model_name=hooked.cfg.name)
    except (KeyError, ValueError) as error:
        raise typer.BadParameter(str(error)) from error
    contexts = _contexts(hooked, harvest_contexts, seed)
    harvest(hooked, contexts, out / "store", [hook])
    data = StoredActivations(out / "store", hook, batch_size=batch_size, seed=seed)
    steps = max(1, count // batch_size)
    (sae,) = train_saes(cfg, data, TrainConfig(steps=steps, lr=lr, checkpoint_every=max(1, steps // 20), seed=seed),
                        out / "checkpoints")
    save_sae(sae, out / "sae")
    scored = evaluate_sae(hooked, sae, _contexts(hooked, 16, seed + 1))
    (out / "eval.json").write_text(json.dumps(scored.to_json(), indent=1))
    _print_eval(console, scored)
    console.print(f"saved {out / 'sae'} (cfg.json + sae_weights.safetensors) and {out / 'eval.json'}")


@sae_app.command("eval")
def evaluate(
    sae: Path = typer.Option(..., help="dictionary folder (cfg.json + sae_weights.safetensors)"),
    contexts: int = typer.Option(32, min=1, help="held-out contexts of 128 tokens"),
    model: str = typer.Option(None, "--model", "-m"),
    seed: int = typer.Option(1),
) -> None:
    """L0, FVU, cosine, CE loss recovered, KL, dead and dense fractions on corpus contexts."""
    from mechscope.cli.main import _load, console
    from mechscope.sae import evaluate_sae, load_sae

    dictionary = load_sae(sae)
    hooked = _load(model)
    _print_eval(console, evaluate_sae(hooked, dictionary, _contexts(hooked, contexts, seed)))


@sae_app.command()
def dashboard(
    sae: Path = typer.Option(..., help="dictionary folder (cfg.json + sae_weights.safetensors)"),
    latents: str = typer.Option("0-19", help="latents: e.g. 0-19 or 3,17,256"),
    contexts: int = typer.Option(64, min=1, help="corpus contexts of 128 tokens to search"),
    model: str = typer.Option(None, "--model", "-m"),
    out: Path = typer.Option(Path("mechscope-dashboards"), "--out", "-o"),
    seed: int = typer.Option(1),
) -> None:
    """Static HTML dashboards (top contexts, quantile samples, histogram, logit effects) plus an index."""
    from mechscope.cli.main import _load, console
    from mechscope.sae import load_sae
    from mechscope.sae.dashboard import sae_dashboards

    dictionary = load_sae(sae)
    hooked = _load(model)
    chosen = _parse_latents(latents)
    try:
        index = sae_dashboards(hooked, dictionary, _contexts(hooked, contexts, seed), chosen, out)
    except ValueError as error:
        raise typer.BadParameter(str(error)) from error
    console.print(f"wrote {len(chosen)} dashboards; open {index}")


def _parse_tokens(text: str) -> int:
    text = text.strip().lower()
    scale = {"k": 1_000, "m": 1_000_000}.get(text[-1:], 1)
    try:
        return int(float(text[:-1] if scale > 1 else text) * scale)
    except ValueError as error:
        raise typer.BadParameter(f"tokens must look like 500k, 2M or 100000, got {text!r}") from error


def _parse_latents(text: str) -> list[int]:
    chosen: list[int] = []
    try:
        for part in text.split(","):
            if "-" in part:
                low, high = part.split("-")
                chosen.extend(range(int(low), int(high) + 1))
            elif part.strip():
                chosen.append(int(part))
    except ValueError as error:
        raise typer.BadParameter(f"latents must look like 0-19 or 3,17,256, got {text!r}") from error
    return chosen
