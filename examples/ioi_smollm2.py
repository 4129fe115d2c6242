"""The IOI analysis of SmolLM2-135M-Instruct; regenerates docs/case-studies/ioi-smollm2.md.

    python examples/ioi_smollm2.py [--n 16] [--seed 0]

Writes the markdown with every number it quotes, plotly figures as HTML under
docs/case-studies/figures/ and, when `kaleido` is installed (pip install kaleido; it needs a
Chrome/Chromium), PNG copies that the markdown shows inline.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

import mechscope
from mechscope import tasks
from mechscope.circuits import compare_methods, discover, edge_setup, faithfulness
from mechscope.files import atomic_text
from mechscope.patching import activation_patch, attribution_patch, correlation, path_patch

DOCS = Path(__file__).resolve().parents[1] / "docs" / "case-studies"
FIGURES = DOCS / "figures"


def save_figure(figure, name: str) -> str:
    """Write figures/NAME.html (and .png when kaleido works); return markdown pointing at it."""
    FIGURES.mkdir(parents=True, exist_ok=True)
    # The page loads figures/plotly.min.js (committed once); written atomically like every output.
    atomic_text(FIGURES / f"{name}.html", figure.to_html(include_plotlyjs="directory", full_html=True))
    try:
        figure.write_image(FIGURES / f"{name}.png", width=900, height=600)
        return f"![{name}](figures/{name}.png)\n\n[interactive version](figures/{name}.html)"
    except Exception:  # kaleido missing or no browser: the HTML figure is still there
        return f"[figure: {name}](figures/{name}.html)"


def heads_table(rows: list[tuple[tuple[str, ...], float]], label: str) -> str:
    lines = [f"| head | {label} |", "|---|---|"]
    lines += [f"| L{layer}H{head} | {score:+.3f} |" for (layer, head), score in rows]
    return "\n".join(lines)


def effect_ranking(result, k: int) -> list[tuple[tuple[str, str], float]]:
    """Heads whose path, when noised, lowers the metric most: effect = 1 - normalised score."""
    effect = 1 - result.scores
    order = effect.flatten().argsort(descending=True)[:k]
    n_heads = effect.shape[1]
    return [((str(int(i) // n_heads), str(int(i) % n_heads)), float(effect.flatten()[i])) for i in order]


def circuit_section(model, task, movers, inhibitors) -> str:
    """EAP-IG's circuit, faithfulness curves of three methods, and how the heads line up with
    the patching analysis above."""
    rows = compare_methods(model, task, [{"method": "eap"}, {"method": "eap-ig", "steps": 5},
                                         {"method": "eap-ig", "steps": 5, "selection": "greedy"}], progress=False)
    comparison = [("| method | selection | scoring time | CPR (higher is better) | CMD (lower is better) |"
                   " faithfulness at 0.1% / 1% / 10% of edges |"), "|---|---|---|---|---|---|"]
    for row in rows:
        curve = row["curve"]
        at = {f: v for f, v in zip(curve["fractions"], curve["faithfulness"])}
        comparison.append(f"| {row['method']} | {row.get('selection', 'top_n')} | {row['seconds']:.1f} s | "
                          f"{row['cpr']:.3f} | {row['cmd']:.3f} | {at[0.001]:.2f} / {at[0.01]:.2f} / {at[0.1]:.2f} |")
    ranked = sorted(rows, key=lambda row: row["cpr"], reverse=True)
    best, runner_up = ranked[0], ranked[1]

    def describe(row: dict) -> str:
        return f"{row['method']} ({row.get('selection', 'top_n')})"

    tie = best["cpr"] - runner_up["cpr"] < 0.005
    best_text = (f"{describe(best)} and {describe(runner_up)} tie for the largest area (CPR {best['cpr']:.3f})"
                 if tie else f"{describe(best)} has the largest area (CPR {best['cpr']:.3f}, next "
                             f"{describe(runner_up)} {runner_up['cpr']:.3f})")
    at = {describe(row): dict(zip(row["curve"]["fractions"], row["curve"]["faithfulness"])) for row in rows}
    one_percent = [values[0.01] for values in at.values()]
    ten_percent = [values[0.1] for values in at.values()]
    circuit = discover(model, task, method="eap-ig", steps=5, selection="greedy", n_edges=round(0.01 * 70651),
                       progress=False)
    graph = circuit.graph
    scored = faithfulness(model, task, edge_setup(model, task, graph), circuit.edges)
    node_strength = {name: float(value) for name, value in
                     zip(graph.writers, circuit.scores.nan_to_num().abs().sum(1)) if name != "input"}
    ranking = sorted(node_strength, key=node_strength.get, reverse=True)
    in_circuit = set(circuit.nodes())
    lines = ["| head (patching role) | in the 1% circuit | rank by EAP-IG node score |", "|---|---|---|"]
    for ((layer, head), _), role in [(m, "name-mover-like") for m in movers] + [(i, "S-inhibition-like") for i in inhibitors]:
        name = f"L{layer}H{head}"
        lines.append(f"| {name} ({role}) | {'yes' if name in in_circuit else 'no'} | {ranking.index(name) + 1} "
                     f"of {len(ranking)} |")
    edges = ["| edge | EAP-IG score |", "|---|---|"] + [f"| {e['from']} -> {e['to']} | {e['score']:+.3f} |"
                                                       for e in circuit.edge_list()[:10]]
    FIGURES.mkdir(parents=True, exist_ok=True)
    circuit.to_html(FIGURES / "ioi-circuit.html")
    import plotly.graph_objects as go

    figure = go.Figure()
    for row in rows:
        label = f"{row['method']} ({row.get('selection', 'top_n')})"
        figure.add_trace(go.Scatter(x=[100 * f for f in row["curve"]["fractions"]], y=row["curve"]["faithfulness"],
                                    mode="lines+markers", name=label))
    figure.add_hline(y=1, line_dash="dot")
    figure.update_layout(title="Faithfulness of the top circuits by size", xaxis_type="log",
                         xaxis_title="% of edges", yaxis_title="faithfulness")
    curve_figure = save_figure(figure, "ioi-faithfulness")
    return f"""## Circuit discovery (edge level)

The graph has {graph.n_edges} edges: {graph.n_writers} writers (input, 270 heads, 30 MLPs) to
{graph.n_receivers} receivers (each head's q, each kv head's k and v, each MLP, the logits).
Edges outside a circuit take their values from the ABC-corrupted run; faithfulness is 0 for
the corrupted run and 1 for the clean model (`mechscope.circuits`).

{curve_figure}

{chr(10).join(comparison)}

{best_text}. Circuits of 1% of the edges recover {min(one_percent):.2f}-{max(one_percent):.2f} of
the clean-corrupted logit difference, circuits of 10% {min(ten_percent):.2f}-{max(ten_percent):.2f}:
no small set of edges carries IOI on its own in this model.

A 1% circuit ({circuit.n_edges} edges after pruning, greedy from the logits, EAP-IG scores):
faithfulness **{scored.faithfulness:.3f}**; its complement (every edge but these)
**{scored.complement_faithfulness:.3f}**, so ablating these edges alone removes
{"all" if scored.complement_faithfulness < 0.05 else "most" if scored.complement_faithfulness < 0.5 else "part"}
of the behaviour, while running them alone restores
{"most" if scored.faithfulness >= 0.8 else "about half" if scored.faithfulness >= 0.4 else "only part"} of it. Strongest edges:

{chr(10).join(edges)}

How the heads the patching analysis named line up with the circuit:

{chr(10).join(lines)}

The interactive circuit: [figures/ioi-circuit.html](figures/ioi-circuit.html).
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    started = time.time()
    model = mechscope.load()
    task = tasks.ioi(model, n=args.n, seed=args.seed)
    with torch.no_grad():
        clean, corrupted = model(task.clean_tokens), model(task.corrupted_tokens)
    accuracy = task.accuracy(clean).mean().item()
    clean_diff, corrupt_diff = task.logit_diff(clean).mean().item(), task.logit_diff(corrupted).mean().item()

    resid = activation_patch(model, task, "resid_pre")
    heads = activation_patch(model, task, "heads")
    heads_noise = activation_patch(model, task, "heads", mode="noise")
    atp = attribution_patch(model, task, "heads")
    atp_corr = correlation(atp, heads)
    to_logits = path_patch(model, task, receivers="logits")
    movers = effect_ranking(to_logits, 3)
    mover_heads = [(int(layer), int(head)) for (layer, head), _ in movers]
    to_movers = path_patch(model, task, receivers=mover_heads, receiver_input="q")
    inhibitors = effect_ranking(to_movers, 3)

    names = [f"blocks.{layer}.attn.hook_pattern" for layer in sorted({int(h[0][0]) for h in movers + inhibitors})]
    _, cache = model.run_with_cache(task.clean_tokens, names=names)
    rows = torch.arange(len(task))
    end, io, s1, s2 = (task.positions[key] for key in ("END", "IO", "S1", "S2"))
    pattern_lines = ["| head | role | END -> IO | END -> S1 | END -> S2 | attends most to |",
                     "|---|---|---|---|---|---|"]
    for (layer, head), _ in movers + inhibitors:
        pattern = cache["pattern", int(layer)][rows, int(head), end]  # [n, key]
        role = "name-mover-like" if ((layer, head), _) in movers else "S-inhibition-like"
        weights = {"IO": pattern[rows, io].mean().item(), "S1": pattern[rows, s1].mean().item(),
                   "S2": pattern[rows, s2].mean().item()}
        strongest = max(weights, key=weights.get) if max(weights.values()) > 0.1 else "none of the names (< 0.1)"
        pattern_lines.append(f"| L{layer}H{head} | {role} | {weights['IO']:.3f} | {weights['S1']:.3f} | "
                             f"{weights['S2']:.3f} | {strongest} |")

    figures = {
        "resid": save_figure(resid.plot("Denoising the residual stream (resid_pre) by layer and position"), "ioi-resid"),
        "heads": save_figure(heads.plot("Denoising each head's output (all positions)"), "ioi-heads"),
        "logits": save_figure(to_logits.plot("Path patching: sender head -> logits (noising; 1 = clean)"), "ioi-path-logits"),
        "movers": save_figure(to_movers.plot(f"Path patching: sender head -> queries of {mover_heads}"), "ioi-path-movers"),
    }
    circuit_text = circuit_section(model, task, movers, inhibitors)
    minutes = (time.time() - started) / 60
    text = f"""# Case study: indirect object identification in SmolLM2-135M-Instruct

Generated by `python examples/ioi_smollm2.py --n {args.n} --seed {args.seed}` ({minutes:.1f} min on
2 CPU cores); every number below comes from that run.

## Task and behaviour

{len(task)} IOI prompts (`mechscope.tasks.ioi`, BABA and ABBA templates, ABC corruption), e.g.
`{task.clean_prompts[0]}` -> answer the indirect object; corrupted:
`{task.corrupted_prompts[0]}`.

| | value |
|---|---|
| clean accuracy (top token is the IO) | {accuracy:.3f} |
| clean logit difference IO - S | {clean_diff:.2f} |
| corrupted logit difference | {corrupt_diff:.2f} |

## Residual stream patching (denoising, clean -> ABC-corrupted)

{figures["resid"]}

Information about the names sits at the name positions in early layers and moves to the END
position in the later layers; the strongest cells: {", ".join(f"layer {layer} pos {p} ({s:.2f})" for (layer, p), s in resid.top(4))}.

## Head patching

{figures["heads"]}

Denoising (sufficiency), top heads:

{heads_table(heads.top(6), "normalised score")}

Noising (necessity), heads whose corruption hurts most (score below 1):

{heads_table(sorted(((labels, score) for labels, score in heads_noise.top(270, by_abs=False)), key=lambda r: r[1])[:6], "normalised score")}

Attribution patching estimates the same denoising sweep from two forwards and one backward;
its correlation with the exact sweep here: **{atp_corr:.3f}**.

## Path patching: name-mover-like and S-inhibition-like heads

Heads whose direct path to the logits matters most (noising the path sender -> logits; effect =
1 - normalised score):

{figures["logits"]}

{heads_table(movers, "effect of the path to the logits")}

Heads that act through the *queries* of those name-mover-like heads:

{figures["movers"]}

{heads_table(inhibitors, "effect via the movers' queries")}

## Attention of these heads from the END position (clean prompts, mean over prompts)

{chr(10).join(pattern_lines)}

In GPT-2 small (Wang et al. 2022) name movers attend from END to the indirect object and copy
it, and S-inhibition heads attend to the second subject mention (S2) and steer the name movers'
queries away from the subject. The last column shows which of those tokens each head found here
actually attends to; a head that matters for the logits but attends to S2 is closer to a
negative/backup mover or an inhibition signal than to a copier of the IO. These are
patching-level findings on {len(task)} prompts; the next section checks them with edge-level
circuit discovery and faithfulness.

{circuit_text}"""
    DOCS.mkdir(parents=True, exist_ok=True)
    atomic_text(DOCS / "ioi-smollm2.md", text)
    print(text)


if __name__ == "__main__":
    main()
