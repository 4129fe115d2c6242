"""``mechscope diff BASE FT``: what a fine-tune changed (weights, the activation-difference lens,
steering with it, per-token KL; optionally an SAE diff and a crosscoder), as JSON, plotly
figures and one HTML report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from mechscope import checks
from mechscope.cli.core import console, load_model_or_organism, say
from mechscope.cli.options import MODEL_HELP, Overwrite, Seed, finite, out_option

WHICH = f"{MODEL_HELP}, an organism folder or a shipped organism's name"


def _model_argument(value: str) -> str:
    if not value.strip():
        # Path("") is the current folder: an empty name would try to load it as a model.
        raise typer.BadParameter("must not be empty: give a model name, path or organism")
    return value


def diff(
    base: Annotated[str, typer.Argument(metavar="BASE", help=f"the base model: {WHICH}",
                                        callback=_model_argument, show_default=False)],
    ft: Annotated[str, typer.Argument(metavar="FT", help=f"the fine-tune of BASE (same architecture and tokenizer): {WHICH}",
                                      callback=_model_argument, show_default=False)],
    out: Annotated[Path, out_option("folder for diff.json, report.html, figures/ (and the crosscoder's "
                                    "files); a rerun with the same options resumes a crosscoder")] = Path("mechscope-diff"),
    contexts: Annotated[int, typer.Option(min=1, max=checks.MAX_CONTEXTS,
                                          help="neutral corpus contexts (standard-library docstrings) read by "
                                               "both models")] = 32,
    context_length: Annotated[int, typer.Option(min=2, max=checks.MAX_POSITION, help="tokens per context")] = 64,
    first_positions: Annotated[int, typer.Option(min=0, help="first positions whose mean difference is kept "
                                                             "apart (attention sinks); the rest form one group")] = 5,
    top_k: Annotated[int, typer.Option(min=1, max=checks.MAX_TOP_K, help="tokens, rows, positions and latents "
                                                                       "listed")] = 20,
    steer_prompts: Annotated[int, typer.Option(min=0, help="neutral prompts generated with and without the "
                                                           "difference (0: skip steering)")] = 4,
    steer_strength: Annotated[float, typer.Option(help="steering strength, in units of the base's mean activation "
                                                       "norm at the layer", callback=finite())] = 1.0,
    steer_tokens: Annotated[int, typer.Option(min=1, max=checks.MAX_NEW_TOKENS,
                                              help="tokens generated per steering prompt")] = 24,
    sae: Annotated[Path | None, typer.Option("--sae", help="a base-model SAE folder (cfg.json + "
                                                           "sae_weights.safetensors): adds an SAE diff")] = None,
    crosscoder_steps: Annotated[int, typer.Option(min=0, help="crosscoder training steps (0: no crosscoder)")] = 0,
    crosscoder_layer: Annotated[int | None, typer.Option(min=0, help="layer whose resid_post the crosscoder reads "
                                                                     "(default: the middle layer)")] = None,
    crosscoder_width: Annotated[int, typer.Option(min=1, max=checks.MAX_D_SAE, help="crosscoder latents")] = 2048,
    crosscoder_k: Annotated[int, typer.Option(min=1, help="active crosscoder latents per token (BatchTopK)")] = 32,
    crosscoder_contexts: Annotated[int, typer.Option(min=1, max=checks.MAX_CONTEXTS,
                                                     help="contexts harvested for the crosscoder")] = 256,
    crosscoder_batch_size: Annotated[int, typer.Option(min=1, max=checks.MAX_BATCH,
                                                       help="paired rows per crosscoder step")] = 1024,
    crosscoder_delta_scale: Annotated[float | None, typer.Option(min=1, help="how many times the crosscoder "
                                                                             "magnifies the fine-tune's change "
                                                                             "(h_ft - h_base) in the rows it reads "
                                                                             "(1: a plain crosscoder; default: 10)",
                                                                 callback=finite())] = None,
    crosscoder_ft_exclusive: Annotated[int | None, typer.Option(min=0, help="crosscoder latents designated "
                                                                            "fine-tune-exclusive: their base decoder "
                                                                            "half is held at zero (0: none; default: "
                                                                            "1/32 of the width)")] = None,
    chat_prompts: Annotated[int | None, typer.Option(min=0, help="generic chat prompts: a second difference lens "
                                                                 "reads them where the reply starts, and, answered "
                                                                 "by the fine-tune (plainly and amplified), they "
                                                                 "join the crosscoder's corpus (default: 128 with a "
                                                                 "chat template, else 0)")] = None,
    last_positions: Annotated[int, typer.Option(min=1, help="last positions of each chat prompt the chat lens "
                                                            "averages one by one")] = 3,
    amplify_alpha: Annotated[float, typer.Option(min=0, help="how far the amplified replies scale the fine-tune's "
                                                             "logit difference to the base", callback=finite())] = 2.0,
    seed: Seed = 0,
    overwrite: Overwrite = False,
) -> None:
    """Diff the fine-tune FT against BASE: weight changes, the activation-difference lens on neutral
    text, the base steered by that difference, per-token KL, and optionally an SAE diff (--sae) and
    a crosscoder (--crosscoder-steps). Writes diff.json, figures/ and report.html."""
    from mechscope.report.diff_runs import DiffOptions, load_ft, prepare_diff_folder, run_diff
    from mechscope.sae.runs import load_dictionary

    options = DiffOptions(base_name=base, ft_name=ft, contexts=contexts, context_length=context_length,
                          first_positions=first_positions, last_positions=last_positions, top_k=top_k, steer_prompts=steer_prompts,
                          steer_strength=steer_strength, steer_tokens=steer_tokens,
                          sae=None if sae is None else str(sae), crosscoder_steps=crosscoder_steps,
                          crosscoder_layer=crosscoder_layer, crosscoder_width=crosscoder_width,
                          crosscoder_k=crosscoder_k, crosscoder_contexts=crosscoder_contexts,
                          crosscoder_batch_size=crosscoder_batch_size, chat_prompts=chat_prompts,
                          crosscoder_ft_exclusive=crosscoder_ft_exclusive,
                          amplify_alpha=amplify_alpha, seed=seed,
                          **({} if crosscoder_delta_scale is None else {"crosscoder_delta_scale": crosscoder_delta_scale}))
    dictionary = None if sae is None else load_dictionary(sae)  # a bad folder fails before any model loads
    folder = prepare_diff_folder(out, options, overwrite)
    say(folder.describe())
    base_model = load_model_or_organism(base)
    if ft == base:
        ft_model = base_model  # the same model twice: one load, and every difference is exactly zero
    else:
        with console.status(f"loading {ft} ..."):
            ft_model = load_ft(ft, base_model)
    result = run_diff(base_model, ft_model, folder, options, sae=dictionary, log=lambda line: say(f"- {line}"))
    _print_summary(result)
    console.print(f"\nreport: [bold]{folder / 'report.html'}[/bold]  numbers: {folder / 'diff.json'}")


def _print_summary(result) -> None:
    moved = [module for module in result.weights.modules_ranked() if module.delta_norm > 0]
    if moved:
        table = Table(title=f"most changed modules (||ΔW|| / ||W_base||; {len(moved)} changed)")
        table.add_column("module")
        table.add_column("relative", justify="right")
        for module in moved[:5]:
            table.add_row(module.name, "n/a" if module.relative is None else f"{module.relative:.4g}")
        console.print(table)
    else:
        console.print("no weight changed: the two models have the same parameters")
    console.print(f"mean per-token KL(base || ft): {result.kl.mean:.4g} nats over {result.kl.n_tokens} positions")
    steering = result.steering
    if "layer" in steering:
        reading = result.lens.reading(steering["layer"])
        tokens = ", ".join(repr(score.token) for score in reading.logit_lens[:8])
        console.print(f"difference lens at layer {steering['layer']} (rest positions): {tokens}", markup=False,
                      highlight=False)
    if result.chat_lens is not None:
        last = result.chat_lens.reading(result.chat_means.n_layers - 1, -1)
        tokens = ", ".join(repr(score.token) for score in last.logit_lens[:8])
        console.print(f"difference lens where replies start (last layer, pos -1): {tokens}", markup=False,
                      highlight=False)
    crosscoder = result.crosscoder or {}
    if "counts" in crosscoder:
        console.print("crosscoder latents: " + ", ".join(f"{k} {v}" for k, v in crosscoder["counts"].items()))
