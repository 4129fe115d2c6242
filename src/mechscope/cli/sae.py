"""``mechscope sae train | eval | dashboard`` on the default corpus (standard-library docstrings)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from mechscope import checks
from mechscope.cli.core import console, load_model, new_app, say
from mechscope.cli.options import (
    Contexts,
    DictionaryFolder,
    HookName,
    ModelName,
    Overwrite,
    Seed,
    checked,
    choice,
    finite,
    out_option,
)
from mechscope.data.manifest import check_rank_share
from mechscope.graphs.transcoders import PLACEMENTS
from mechscope.sae import ARCHITECTURES
from mechscope.sae.runs import (
    TrainOptions,
    load_dictionary,
    parse_latents,
    prepare_dashboard_folder,
    prepare_train_folder,
    run_dashboard,
    run_eval,
    run_train,
)

sae_app = new_app("Sparse dictionaries: train, evaluate, dashboards.")


def _print_eval(scored) -> None:
    table = Table(title="evaluation on held-out contexts")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in ("l0", "fvu", "fvu_typical", "cosine", "ce_clean", "ce_spliced", "ce_zero", "ce_recovered", "kl",
                "dead", "dense"):
        table.add_row(key, f"{getattr(scored, key):.4f}")
    console.print(table)


def _parse_tokens(text: str) -> int:
    """``--tokens``: "500k", "2M" or "100000"; zero, negative, NaN and absurd counts are refused."""
    return checks.parse_count(text, "tokens")


@sae_app.command()
def train(
    hook: HookName,
    arch: Annotated[str, typer.Option(help="relu, topk, batchtopk, jumprelu or matryoshka",
                                      callback=choice("architecture", ARCHITECTURES))] = "topk",
    k: Annotated[int, typer.Option(min=1, help="active latents (TopK family)")] = 32,
    d_sae: Annotated[int, typer.Option(min=1, max=checks.MAX_D_SAE, help="number of latents")] = 4608,
    tokens: Annotated[str, typer.Option(help="training tokens, e.g. 500k or 2M (the corpus is reused in epochs)",
                                        callback=checked(_parse_tokens))] = "2M",
    batch_size: Annotated[int, typer.Option(min=1, max=checks.MAX_BATCH)] = 4096,
    lr: Annotated[float, typer.Option(help="learning rate", callback=finite(minimum=0.0, strictly_above=True))] = 1e-3,
    harvest_contexts: Annotated[int, typer.Option(min=1, max=checks.MAX_CONTEXTS,
                                                  help="contexts of 128 tokens harvested (the rest is reuse)")] = 1024,
    model: ModelName = None,
    out: Annotated[Path, out_option("folder: store/, checkpoints/, sae/, eval.json; a rerun with the same options "
                                    "resumes")] = Path("mechscope-sae"),
    seed: Seed = 0,
    overwrite: Overwrite = False,
) -> None:
    """Harvest activations (resumable), train a dictionary (resumable), save it in SAELens'
    format and evaluate it on held-out contexts."""
    from mechscope.distributed import joined, output_folder_on_ranks

    options = TrainOptions(hook, arch, k, d_sae, _parse_tokens(tokens), batch_size, lr, harvest_contexts, seed)
    with joined() as ranks:  # one of several ranks under torchrun; a world of one otherwise
        check_rank_share(ranks.rank, ranks.world_size, options.batch_size, "--batch-size", "rows")
        folder = output_folder_on_ranks(ranks, lambda: prepare_train_folder(out, options, overwrite, model), str(out))
        if ranks.is_main:
            say(folder.describe())
            if ranks.distributed:
                say(f"{ranks.world_size} ranks ({ranks.backend}): harvest sharded, training data-parallel with a global "
                    f"batch of {options.batch_size:,} ({options.batch_size // ranks.world_size:,} per rank)")
        _, scored = run_train(load_model(model), options, folder, ranks=ranks)
    if ranks.is_main:
        _print_eval(scored)
        console.print(f"saved {folder / 'sae'} (cfg.json + sae_weights.safetensors) and {folder / 'eval.json'}")


@sae_app.command("eval")
def evaluate(
    sae: DictionaryFolder,
    contexts: Contexts = 32,
    model: ModelName = None,
    seed: Seed = 1,
) -> None:
    """L0, FVU, cosine, CE loss recovered, KL, dead and dense fractions on corpus contexts."""
    dictionary = load_dictionary(sae)  # before the model: a bad folder costs no load
    _print_eval(run_eval(load_model(model), dictionary, contexts, seed))


@sae_app.command()
def dashboard(
    sae: DictionaryFolder,
    latents: Annotated[str, typer.Option(help="latents: e.g. 0-19 or 3,17,256",
                                         callback=checked(parse_latents))] = "0-19",
    contexts: Contexts = 64,
    model: ModelName = None,
    out: Annotated[Path, out_option("folder for index.html and one page per latent")] = Path("mechscope-dashboards"),
    seed: Seed = 1,
    overwrite: Overwrite = False,
    explanations: Annotated[Path | None, typer.Option(help="a `mechscope explain` run folder over this "
                                                           "dictionary: each latent's explanation and score "
                                                           "are shown")] = None,
) -> None:
    """Static HTML dashboards (top contexts, quantile samples, histogram, logit effects) plus an index."""
    from mechscope.autointerp.results import label, latent_results

    results = latent_results(explanations) if explanations is not None else None
    explained = None if results is None else {latent: label(result) for latent, result in results.items()}
    dictionary = load_dictionary(sae)
    chosen = parse_latents(latents, dictionary)  # in range of this dictionary, before the model loads
    folder = prepare_dashboard_folder(out, chosen, overwrite, {"sae": str(Path(sae).resolve()), "contexts": contexts,
                                                               "seed": seed, "model": model})
    say(folder.describe())
    index = run_dashboard(load_model(model), dictionary, chosen, folder, contexts, seed, explanations=explained,
                          explanation_results=results)
    console.print(f"wrote {len(chosen)} dashboards; open {index}")


@sae_app.command("train-transcoders")
def train_transcoders(
    d_sae: Annotated[int, typer.Option(min=1, max=checks.MAX_D_SAE, help="latents per layer")] = 2048,
    arch: Annotated[str, typer.Option(help="relu, topk, batchtopk, jumprelu or matryoshka",
                                      callback=choice("architecture", ARCHITECTURES))] = "topk",
    k: Annotated[int, typer.Option(min=1, help="active latents per token (TopK family)")] = 32,
    skip: Annotated[bool, typer.Option("--skip/--no-skip", help="add a linear skip connection (input -> output)")] = False,
    tokens: Annotated[str, typer.Option(help="training tokens, e.g. 400k or 2M (the corpus is reused in epochs)",
                                        callback=checked(_parse_tokens))] = "400k",
    batch_contexts: Annotated[int, typer.Option(min=1, max=1024, help="contexts of 128 tokens per step (one model "
                                                "pass feeds every layer)")] = 16,
    contexts: Annotated[int, typer.Option(min=1, max=checks.MAX_CONTEXTS, help="corpus contexts drawn from "
                                          "(the rest is reuse)")] = 2048,
    lr: Annotated[float, typer.Option(help="learning rate", callback=finite(minimum=0.0, strictly_above=True))] = 1e-3,
    window: Annotated[int, typer.Option(min=1, help="1: a transcoder per layer; W > 1: a cross-layer transcoder "
                                                    "whose layer-l features write to layers l .. l+W-1 (TopK)")] = 1,
    placement: Annotated[str, typer.Option(help="under torchrun: data (split each batch over the ranks) or layers "
                                                "(whole layers per rank, no traffic per step)",
                                           callback=choice("placement", PLACEMENTS))] = "data",
    model: ModelName = None,
    out: Annotated[Path, out_option("folder: checkpoints/, transcoders/layer_*/, eval.json; a rerun with the same "
                                    "options resumes")] = Path("mechscope-transcoders"),
    seed: Seed = 0,
    overwrite: Overwrite = False,
) -> None:
    """A transcoder (normalised MLP input -> MLP output) for every layer, all layers trained from
    the same forward passes (resumable); scored per layer and with every layer spliced at once.
    The folder is what `mechscope graph --transcoders` reads."""
    from mechscope.distributed import joined, output_folder_on_ranks
    from mechscope.graphs.transcoder_runs import (
        TranscoderOptions,
        prepare_transcoders_folder,
        run_train_transcoders,
    )

    options = TranscoderOptions(d_sae, arch, k, skip, _parse_tokens(tokens), batch_contexts, contexts, lr, seed, window,
                                placement)
    with joined() as ranks:  # one of several ranks under torchrun; a world of one otherwise
        folder = output_folder_on_ranks(ranks, lambda: prepare_transcoders_folder(out, options, overwrite, model),
                                        str(out))
        if ranks.is_main:
            say(folder.describe())
        scored = run_train_transcoders(load_model(model), options, folder, ranks=ranks)
    if not ranks.is_main:
        return
    table = Table(title="transcoders on held-out contexts")
    for column in ("layer", "L0", "FVU", "dead"):
        table.add_column(column, justify="right")
    for score in scored.layers:
        table.add_row(str(score.layer), f"{score.l0:.1f}", f"{score.fvu:.3f}", f"{score.dead:.3f}")
    console.print(table)
    console.print(f"every layer spliced: CE {scored.ce_spliced:.3f} (clean {scored.ce_clean:.3f}, every MLP zeroed "
                  f"{scored.ce_zero:.3f}), CE recovered {scored.ce_recovered:.3f}, KL {scored.kl:.3f}")
    console.print(f"saved {folder / 'transcoders'} and {folder / 'eval.json'}; trace with `mechscope graph PROMPT "
                  f"--transcoders {folder.path}`")
