"""``mechscope compare MODEL_A MODEL_B``: how similar two models' layers are, across tokenizers."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mechscope.cli.core import console, load_model_or_organism, say
from mechscope.cli.options import Overwrite, Seed, choice, out_option
from mechscope.compare.similarity import METRICS


def compare(
    model_a: Annotated[str, typer.Argument(help="first model: bundled name, .gguf path, local folder, or a "
                                                 "shipped organism's name or folder")],
    model_b: Annotated[str, typer.Argument(help="second model (may have another tokenizer, width and depth)")],
    metric: Annotated[str, typer.Option(help=f"one of {', '.join(sorted(METRICS))}",
                                        callback=choice("metric", sorted(METRICS)))] = "linear_cka",
    texts: Annotated[int, typer.Option(min=1, max=10_000, help="corpus texts (standard-library docstrings)")] = 64,
    max_chars: Annotated[int, typer.Option(min=20, max=100_000, help="characters per text, at most")] = 600,
    permutations: Annotated[int, typer.Option(min=0, max=10_000, help="row shuffles per cell for the null")] = 20,
    scaling: Annotated[str, typer.Option(help="standardise (every dimension to unit variance) or none",
                                         callback=choice("scaling", ["standardise", "none"]))] = "standardise",
    roles: Annotated[bool, typer.Option(help="score head roles in both models, compare their depths and map "
                                             "A's IOI circuit onto B (roles.json)")] = True,
    ioi_prompts: Annotated[int, typer.Option(min=0, max=1_000, help="IOI prompts per model (0: attention roles only)")] = 16,
    random_circuits: Annotated[int, typer.Option(min=1, max=10_000, help="random circuits for the null")] = 50,
    sae_a: Annotated[Path | None, typer.Option(help="a saved SAE of MODEL_A (mechscope sae train --out): with "
                                                    "--sae-b, match their latents (matches.json)")] = None,
    sae_b: Annotated[Path | None, typer.Option(help="a saved SAE of MODEL_B")] = None,
    min_firing: Annotated[int, typer.Option(min=1, help="latents firing on fewer aligned tokens are left out "
                                                        "of the match (counted)")] = 10,
    out: Annotated[Path, out_option("folder for grid.json, grid.html, roles.json, matches.json and summary.json")] = Path(
        "mechscope-compare"),
    seed: Seed = 0,
    overwrite: Overwrite = False,
) -> None:
    """Score every layer of MODEL_A against every layer of MODEL_B on the same texts, at the
    positions where both tokenizers end a token at the same character, with each cell's
    permutation null; outlier-norm tokens are dropped and counted. Then tag every head of both
    models by role (previous-token, induction, duplicate-token; name mover and S-inhibition on
    IOI), compare where each role sits by relative depth against shuffled layers, and carry A's
    IOI circuit onto B by role, with its faithfulness there against random circuits. With
    --sae-a and --sae-b, match the two dictionaries' latents by activation correlation on the
    aligned tokens and show the matched pairs' top contexts and explanations side by side."""
    from mechscope.compare.runs import CompareOptions, prepare_compare_folder, run_compare

    options = CompareOptions(metric=metric, texts=texts, max_chars=max_chars, permutations=permutations,
                             scaling=scaling, roles=roles, ioi_prompts=ioi_prompts, random_circuits=random_circuits,
                             sae_a=None if sae_a is None else str(sae_a), sae_b=None if sae_b is None else str(sae_b),
                             min_firing=min_firing, seed=seed)
    folder = prepare_compare_folder(out, options, overwrite, {"model_a": model_a, "model_b": model_b})
    say(folder.describe())
    summary = run_compare(load_model_or_organism(model_a), load_model_or_organism(model_b), options, folder)
    console.print(f"{summary['aligned_positions']} aligned positions over {summary['texts']} texts "
                  f"({summary['dropped_outliers']} outlier rows dropped); {summary['layers_a']} x {summary['layers_b']} "
                  f"layers by {summary['metric']}; cells beyond their null: {summary['cells_beyond_null']}")
    found = summary["roles"]
    if found is not None:
        console.print(f"head roles: mean relative-depth gap {found['mean_depth_gap']:.2f} (shuffled layers "
                      f"{found['null_mean_gap']:.2f}, p = {found['p_value']:.3f})")
        if "circuit" in found and found["circuit"]["transferred_faithfulness"] is not None:
            circuit = found["circuit"]
            console.print(f"A's IOI circuit on A: faithfulness {circuit['native_faithfulness']:.2f}; mapped onto B by "
                          f"role: {circuit['transferred_faithfulness']:.2f} (random circuits "
                          f"{circuit['transferred_random_mean']:.2f}, p = {circuit['transferred_p_value']:.3f})")
        elif found["ioi"]:
            console.print(found["ioi"])
    if summary["matches"] is not None:
        found = summary["matches"]
        console.print(f"latents: {found['shared']:.2f} of the firing ones shared (MCC {found['mean_similarity']:.2f}; "
                      f"random pairing {found['null_shared']:.2f}, B's rows shuffled {found['control_shared']:.2f}); "
                      f"unmatched {found['unmatched_a']} of A, {found['unmatched_b']} of B")
    console.print(f"wrote {folder.path}/grid.json, grid.html, roles.json, matches.json and summary.json")
