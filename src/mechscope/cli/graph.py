"""``mechscope graph``: one prompt's attribution graph through a model's transcoders."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mechscope.cli.core import console, load_model, say
from mechscope.cli.options import ModelName, Overwrite, finite, out_option


def graph(
    prompt: Annotated[str, typer.Argument(help="the prompt to trace (its next token is the output)")],
    transcoders: Annotated[Path, typer.Option(help="folder of per-layer transcoders: layer_0/, layer_1/, ... "
                                                   "(each cfg.json + sae_weights.safetensors)")],
    target: Annotated[str | None, typer.Option(help="attribute this next token (one token, e.g. ' Paris') "
                                                    "instead of the most likely ones")] = None,
    versus: Annotated[str | None, typer.Option(help="with --target: also explain logit(target) - logit(versus), "
                                                    "one token, e.g. ' London'")] = None,
    logit_mass: Annotated[float, typer.Option(help="attribute the most likely next tokens up to this "
                                                   "probability", callback=finite(0.0))] = 0.95,
    max_logits: Annotated[int, typer.Option(min=1, max=100, help="at most this many next tokens")] = 10,
    max_features: Annotated[int, typer.Option(min=1, help="at most this many feature nodes, chosen by their influence "
                                                          "on the outputs (the rest join the error nodes); memory "
                                                          "grows with it")] = 2048,
    node_share: Annotated[float, typer.Option(help="pruning: keep the features holding this share of the "
                                                   "influence", callback=finite(0.0))] = 0.8,
    edge_share: Annotated[float, typer.Option(help="pruning: keep the edges holding this share of the "
                                                   "influence", callback=finite(0.0))] = 0.98,
    batch_size: Annotated[int, typer.Option(min=1, max=1024, help="targets per backward pass")] = 16,
    max_positions: Annotated[int, typer.Option(min=2, help="refuse longer prompts (memory grows with the "
                                                           "prompt)")] = 64,
    head_targets: Annotated[int, typer.Option(min=0, max=1000, help="per-head attribution (which attention heads "
                                                                    "carry each edge) for this many targets: the "
                                                                    "outputs first, then the most influential "
                                                                    "features")] = 0,
    supernode: Annotated[list[str] | None, typer.Option(help="group nodes for the viewers: LABEL=ID,ID (ids as in "
                                                             "graph.json, e.g. 12_345_6); repeatable")] = None,
    model: ModelName = None,
    out: Annotated[Path, out_option("folder for graph.json (the viewers' format) and summary.json")] = Path(
        "mechscope-graph"),
    overwrite: Overwrite = False,
) -> None:
    """Trace PROMPT through the model's transcoders: a local replacement model (MLPs replaced,
    attention and norms frozen, error nodes), every direct effect between features, errors,
    embeddings and the output logits, pruned by influence; writes graph.json for the graph
    viewers and `mechscope serve`."""
    from mechscope.graphs.export import load_transcoders
    from mechscope.graphs.replacement import ReplacementModel
    from mechscope.graphs.runs import GraphOptions, parse_supernode, prepare_graph_folder, run_graph

    options = GraphOptions(prompt, target, versus, logit_mass, max_logits, max_features, node_share, edge_share, batch_size,
                           max_positions, head_targets, tuple(parse_supernode(text) for text in supernode or ()))
    found = load_transcoders(transcoders)  # a bad folder fails before the model loads
    folder = prepare_graph_folder(out, options, overwrite, {"transcoders": str(Path(transcoders).resolve()),
                                                            "model": model})
    say(folder.describe())
    hooked = load_model(model)
    names = [f"layer_{layer}" for layer in sorted(found)] if isinstance(found, dict) else \
        [f"crosslayer (window {found.cfg.window})"]
    summary = run_graph(hooked, ReplacementModel(hooked, found), options, folder, transcoder_names=names)
    kept = summary["kept"]
    console.print(f"{summary['features']} active features over {summary['tokens']} tokens, attributed in "
                  f"{summary['seconds']} s; kept {kept['features']} features and {kept['edges']} edges; replacement "
                  f"score {summary['replacement_score']:.3f}, completeness {summary['completeness_score']:.3f}")
    for found in summary["heads"]:
        shown = ", ".join(f"L{h['layer']}H{h['head']} {h['carried']:.3g}" for h in found["top"][:3])
        console.print(f"heads carrying the edges into {found['target']}: {shown or 'none'}")
    console.print(f"wrote {folder.path}/graph.json and summary.json")
