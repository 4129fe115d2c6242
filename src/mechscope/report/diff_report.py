"""The report of ``mechscope diff``: plotly figures and one self-contained HTML page, both drawn
from the run's JSON summary alone (``diff.json``), so a report can be redrawn from that file.

:func:`diff_figures` builds the figures, :func:`write_diff_report` writes each as plotly JSON
under ``figures/`` (``plotly.io.read_json`` opens one) and ``report.html`` (plotly.js embedded
once, so it opens offline). Every token and text is escaped; numbers are formatted, then escaped.
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import plotly.graph_objects as go

from mechscope.files import atomic_text
from mechscope.report.markup import FIGURES, STYLE, num, table, write_figures

REPORT = "report.html"
SHOWN_MODULES = 30  # modules in the bar chart and the table
SHOWN_TOKENS = 10  # tokens per cell of the difference-lens table
def _tokens(scores: list[dict], n: int = SHOWN_TOKENS, key: str = "value") -> str:
    return ", ".join(f"{item['token']!r} {item[key]:.2f}" for item in scores[:n])


# ---------------------------------------------------------------------------------- figures
def _changed(groups: list[dict]) -> list[dict]:
    """The entries that moved at all; all of them when none did (so a chart is never empty)."""
    return [group for group in groups if group["delta_norm"] > 0] or groups


def _module_grid(weights: dict) -> tuple[list[str], list[int], list[list[float | None]]]:
    """(module roles in model order, layers, [roles][layers] relative change ‖ΔW‖ / ‖W‖) of the
    per-block modules (a module's weight and bias together)."""
    sums: dict[tuple[str, int], list[float]] = {}
    for change in weights["parameters"]:
        if change["layer"] is None:
            continue
        module = change["role"].rpartition(".")[0] or change["role"]
        total = sums.setdefault((module, change["layer"]), [0.0, 0.0])
        total[0] += change["delta_norm"] ** 2
        total[1] += change["base_norm"] ** 2
    # by_role keeps the models' parameter order, so rows read attention then MLP, as in a block.
    roles = list(dict.fromkeys(role.rpartition(".")[0] or role for role in (g["name"] for g in weights["by_role"])
                               if any(key[0] == (role.rpartition(".")[0] or role) for key in sums)))
    layers = [group["layer"] for group in weights["by_layer"]]
    grid = [[(math.sqrt(sums[(role, layer)][0] / sums[(role, layer)][1]) if sums.get((role, layer), [0, 0])[1] > 0
              else None) for layer in layers] for role in roles]
    return roles, layers, grid


def diff_figures(summary: dict) -> dict[str, go.Figure]:
    """{name: figure} of a ``mechscope diff`` summary: weight change by layer, by module (top
    ones) and by module role x layer; the difference's relative norm per layer x position group;
    the per-token KL histogram; and, when run, the SAE latents' and crosscoder latents' figures."""
    weights, lens, kl = summary["weights"], summary["difference_lens"], summary["token_kl"]
    figures: dict[str, go.Figure] = {}
    layers = weights["by_layer"]
    figures["weight_layers"] = go.Figure(go.Bar(x=[g["name"] for g in layers], y=[g["relative"] for g in layers]))
    figures["weight_layers"].update_layout(title="Weight change per layer: ||ΔW|| / ||W_base|| (all its parameters)",
                                           yaxis_title="relative change")
    modules = _changed(weights["modules"])[:SHOWN_MODULES][::-1]  # largest at the top of a horizontal bar chart
    figures["weight_modules"] = go.Figure(go.Bar(y=[m["name"] for m in modules], x=[m["relative"] for m in modules],
                                                 orientation="h"))
    figures["weight_modules"].update_layout(title=f"The {len(modules)} most changed modules: ||ΔW|| / ||W_base||",
                                            xaxis_title="relative change", height=max(300, 22 * len(modules) + 120))
    roles, layer_ids, grid = _module_grid(weights)
    figures["weight_grid"] = go.Figure(go.Heatmap(z=grid, x=[f"layer {i}" for i in layer_ids], y=roles,
                                                  colorscale="Reds", colorbar_title="rel."))
    figures["weight_grid"].update_layout(title="Relative weight change per module and layer")
    figures["lens_norms"] = go.Figure(go.Heatmap(z=lens["relative_norm"], x=lens["groups"],
                                                 y=[f"layer {i}" for i in range(len(lens["relative_norm"]))],
                                                 colorscale="Viridis", colorbar_title="rel. norm"))
    figures["lens_norms"].update_layout(title="||mean(h_ft - h_base)|| / mean ||h_base|| at hook_resid_post, per "
                                              "layer and position group", xaxis_title="position group")
    values = [value for text in kl["texts"] for value in text["kl"]]
    figures["kl_histogram"] = go.Figure(go.Histogram(x=values, nbinsx=50))
    figures["kl_histogram"].update_layout(title=f"Per-token KL(P_base || P_ft) over {len(values)} positions "
                                                f"(mean {kl['mean']:.4g} nats)", xaxis_title="KL (nats)",
                                          yaxis_title="positions", yaxis_type="log" if values and max(values) > 0
                                          else "linear")
    if summary.get("sae"):
        sae = summary["sae"]
        figures["sae_latents"] = go.Figure(go.Scattergl(
            x=sae["mean_base"], y=sae["mean_ft"], mode="markers", marker={"size": 4},
            text=[f"latent {j}" for j in range(len(sae["mean_base"]))]))
        figures["sae_latents"].update_layout(title=f"SAE latents at {sae['hook_name']}: mean activation in each model",
                                             xaxis_title="base", yaxis_title="fine-tune")
    crosscoder = summary.get("crosscoder") or {}
    if "classes" in crosscoder:
        figures["crosscoder_norms"] = go.Figure(go.Histogram(x=crosscoder["classes"]["relative_norm"], nbinsx=40))
        figures["crosscoder_norms"].update_layout(title="Crosscoder latents: relative decoder norm ||d_ft|| / "
                                                        "(||d_base|| + ||d_ft||)", xaxis_title="relative norm",
                                                  yaxis_title="latents", xaxis_range=[0, 1])
    return figures


# ---------------------------------------------------------------------------------- sections
def _models_section(summary: dict) -> str:
    rows = [[role, side["given"] or "", side["model"] or "", side["model_sha256"][:16], side["family"],
             num(side["n_layers"]), num(side["d_model"]), num(side["d_vocab"])]
            for role, side in (("base", summary["models"]["base"]), ("fine-tune", summary["models"]["ft"]))]
    same = ("<p><b>The two models have the same weights</b> (equal fingerprints): every difference below is zero."
            "</p>" if summary["models"]["same_weights"] else "")
    options = ", ".join(f"{key}={value}" for key, value in summary["options"].items()
                        if key not in ("base_name", "ft_name"))
    return (f"<h2>Models compared</h2>{table(rows, ['', 'given as', 'name', 'fingerprint (sha256)', 'family', 'layers', 'd_model', 'vocabulary'])}"
            f"{same}<p class=note>options: {html.escape(options)}</p>")


def _weights_section(weights: dict, parts: dict[str, str]) -> str:
    total = weights["total"]
    moved = [m for m in weights["modules"] if m["delta_norm"] > 0]
    modules = [[m["name"], num(m["layer"]), num(m["relative"]), num(m["delta_norm"]), num(m["base_norm"])]
               for m in moved[:SHOWN_MODULES]]
    unmoved = len(weights["modules"]) - len(moved)
    module_table = (table(modules, ["module", "layer", "relative", "||ΔW||", "||W_base||"]) if modules
                    else "<p>No module changed.</p>") + (f"<p class=note>{unmoved} module(s) did not change at all.</p>"
                                                         if unmoved and moved else "")
    changed = [p for p in weights["parameters"] if p["delta_norm"] > 0][:SHOWN_MODULES]
    parameters = [[p["name"], "x".join(map(str, p["shape"])), num(p["relative"]),
                   ", ".join(num(v, 3) for v in p["singular_values"]), num(p["top_fraction"], 3)] for p in changed]

    def rows(found: list[dict] | None) -> str:
        if not found:
            return "<p>No row moved.</p>"
        return table([[repr(r["token"]), num(r["token_id"]), num(r["delta_norm"]), num(r["relative"])]
                       for r in found], ["token", "id", "||Δrow||", "relative"])

    unembedding = (f"<p>{html.escape(weights['unembedding_note'])}</p>" if weights["tied_embeddings"]
                   else rows(weights["unembedding_rows"]))
    return (f"<h2>Weight diff</h2><p>Total relative change ||ΔW|| / ||W_base||: <b>{html.escape(num(total['relative']))}"
            f"</b> (||ΔW|| = {html.escape(num(total['delta_norm']))} over {total['n_parameters']} parameters).</p>"
            f"{parts['weight_layers']}{parts['weight_grid']}{parts['weight_modules']}"
            f"<h3>Most changed modules</h3>{module_table}"
            f"<h3>Changed parameters: top singular values of ΔW</h3>"
            + (table(parameters, ["parameter", "shape", "relative", "top singular values", "share of ||ΔW||²"])
               if parameters else "<p>No parameter changed.</p>")
            + f"<h3>Embedding rows that moved most</h3>{rows(weights['embedding_rows'])}"
            f"<h3>Unembedding rows that moved most</h3>{unembedding}")


def _reading_rows(lens: dict) -> list[list[str]]:
    """One table row per reading of a difference lens's JSON: layer, group, relative norm, top
    tokens of the logit lens and of the embedding cosine."""
    rows = []
    for layer in lens["layers"]:
        for reading in layer["readings"]:
            group = reading["position_group"]
            # A zero difference has no direction: its "top tokens" would be an arbitrary tie order.
            zero = reading["norm"] == 0
            rows.append([num(layer["layer"]), f"pos {group}" if isinstance(group, int) else str(group),
                         num(reading["relative_norm"], 3), "(no difference)" if zero else _tokens(reading["logit_lens"]),
                         "(no difference)" if zero else _tokens(reading["embed_cosine"])])
    return rows


LENS_COLUMNS = ["layer", "positions", "rel. norm", "logit lens of the difference (top tokens)",
                "embedding cosine (top tokens)"]


def _lens_section(lens: dict, parts: dict[str, str]) -> str:
    means = lens["means"]
    return (f"<h2>Activation-difference lens</h2><p>Mean of h_ft - h_base at every layer's hook_resid_post over "
            f"{html.escape(str(means['n_contexts']))} neutral contexts ({html.escape(str(means['n_rest']))} 'rest' tokens); "
            "the first positions are kept "
            f"apart (attention sinks). Relative norm: over the base's mean activation norm there.</p>{parts['lens_norms']}"
            + table(_reading_rows(lens), LENS_COLUMNS))


def _chat_lens_section(chat: dict | None) -> str:
    head = "<h2>Difference lens where the reply starts</h2>"
    if not chat or "skipped" in chat:
        return f"{head}<p>Skipped: {html.escape((chat or {}).get('skipped', 'not run'))}.</p>"
    return (f"{head}<p>Mean of h_ft - h_base at the last positions of {html.escape(str(chat['prompts']))} generic chat prompts, each "
            "ending at the assistant's header (pos -1: the last token, where the reply's first token is predicted). "
            "A fine-tune that changed how it answers shows it here even where it left plain text alone.</p>"
            + table(_reading_rows(chat), LENS_COLUMNS))


def _steering_section(steering: dict) -> str:
    head = "<h2>Steering the base with the difference</h2>"
    if "skipped" in steering:
        return f"{head}<p>Skipped: {html.escape(steering['skipped'])}.</p>"
    rows = [[s["prompt"], s["unsteered"], s["steered"]] for s in steering["samples"]]
    return (f"{head}<p>Layer <b>{html.escape(str(steering['layer']))}</b> ({html.escape(steering['hook'])}), chosen as the "
            f"{html.escape(steering['chosen_by'])}; strength {html.escape(num(steering['strength']))} times the base's "
            f"mean activation norm there; {html.escape(str(steering['max_new_tokens']))} greedy tokens.</p>"
            + table(rows, ["prompt", "base", "base + difference"]).replace("<td>", "<td class=mono>"))


def _kl_section(kl: dict, parts: dict[str, str]) -> str:
    rows = [[num(t["kl"]), "…" + t["context"], repr(t["token"]), repr(t["next_token"]) if t["next_token"] is not None
             else "(end)", f"text {t['text_index']}, pos {t['position']}"] for t in kl["top"]]
    return (f"<h2>Per-token KL</h2><p>Mean KL(P_base || P_ft) of the next-token distribution: "
            f"<b>{html.escape(num(kl['mean']))}</b> nats over {html.escape(str(kl['n_tokens']))} positions.</p>{parts['kl_histogram']}"
            "<h3>Positions where the predictions differ most</h3>"
            + table(rows, ["KL", "context (up to the token)", "token", "next token", "where"]))


def _sae_section(sae: dict | None, parts: dict[str, str]) -> str:
    if not sae:
        return ""
    rows = []
    for latent in sae["top"]:
        contexts = sae["contexts"].get(str(latent), [])
        example = f"{contexts[0]['text']!r} (ft {contexts[0]['ft_activation']:.3g}, base " \
                  f"{contexts[0]['base_activation']:.3g})" if contexts else ""
        rows.append([num(latent), num(sae["frequency_base"][latent]), num(sae["frequency_ft"][latent]),
                     num(sae["mean_base"][latent]), num(sae["mean_ft"][latent]), num(sae["mean_delta"][latent]),
                     example])
    return (f"<h2>SAE diff</h2><p>Dictionary {html.escape(str(sae['dictionary']))} at {html.escape(sae['hook_name'])}, "
            f"{html.escape(str(sae['n_tokens']))} tokens; latents ranked by {html.escape(sae['config']['rank_by'])}.</p>{parts['sae_latents']}"
            + table(rows, ["latent", "freq. base", "freq. ft", "mean base", "mean ft", "Δ mean",
                            "top fine-tune context"]))


def _designated(config: dict) -> str:
    n = config.get("ft_exclusive", 0)
    if not n:
        return ""
    return (f"; the last {n} designated fine-tune-exclusive (base decoder half held at zero, so ft-only by "
            "construction: Latent Scaling and their top contexts say whether they carry anything genuine)")


def _crosscoder_section(crosscoder: dict | None, parts: dict[str, str], link: Callable[[str], str] = str) -> str:
    head = "<h2>Crosscoder</h2>"
    if not crosscoder or "skipped" in crosscoder:
        reason = (crosscoder or {}).get("skipped", "not run")
        return f"{head}<p>Skipped: {html.escape(reason)} (pass --crosscoder-steps N to train one).</p>"
    config, counts = crosscoder["config"], crosscoder["counts"]
    dashboards = crosscoder["dashboards"]
    rows = [[f'<a href="{html.escape(link(d["page"]), quote=True)}">latent {d["latent"]}</a>', html.escape(d["kind"]),
             html.escape(num(d["relative_norm"], 3)), html.escape(num(d["cosine"], 3)),
             html.escape(d["verdict"] or "n/a")] for d in dashboards["latents"]]
    number = lambda value: html.escape(str(value))  # noqa: E731  (values read back from diff.json)
    return (f"{head}<p>BatchTopK crosscoder of {number(config['d_sae'])} latents (k={number(config['k'])}) on "
            f"{html.escape(crosscoder['hook'])}, {number(crosscoder['train']['steps'])} steps on "
            f"{number(crosscoder['harvested_tokens'])} paired tokens, the fine-tune's change magnified "
            f"{html.escape(num(config.get('delta_scale', 1), 3))} times. Latents: "
            f"{html.escape(', '.join(f'{k} {v}' for k, v in counts.items()))}{_designated(config)}.</p>"
            f"{parts['crosscoder_norms']}<h3>Dashboards ({html.escape(dashboards['selection'])})</h3>"
            f"<p><a href=\"{html.escape(link(dashboards['index']), quote=True)}\">index of the dashboards</a></p>"
            + table(rows, ["latent", "kind", "relative norm", "cosine of halves", "Latent Scaling"],
                     raw_columns=(0, 1, 2, 3, 4)))


def diff_title(summary: dict) -> str:
    base, ft = summary["models"]["base"], summary["models"]["ft"]
    return f"mechscope diff: {base['given'] or base['model']} vs {ft['given'] or ft['model']}"


def diff_report_body(summary: dict, parts: dict[str, str], link: Callable[[str], str] = str) -> str:
    """The report's sections from a diff summary, with the figures given as HTML ``parts`` {name:
    markup}; ``link`` maps a file of the run (a dashboard page) to the URL to show for it."""
    return (f"{_models_section(summary)}{_weights_section(summary['weights'], parts)}"
            f"{_lens_section(summary['difference_lens'], parts)}{_chat_lens_section(summary.get('chat_lens'))}"
            f"{_steering_section(summary['steering'])}"
            f"{_kl_section(summary['token_kl'], parts)}{_sae_section(summary.get('sae'), parts)}"
            f"{_crosscoder_section(summary.get('crosscoder'), parts, link)}")


def write_diff_report(summary: dict, folder: str | Path) -> dict[str, Any]:
    """Write ``folder/figures/<name>.json`` (one plotly figure each) and ``folder/report.html``
    from a ``mechscope diff`` summary; returns the paths written, relative to ``folder``."""
    folder = Path(folder)
    figures = diff_figures(summary)
    written, parts = write_figures(figures, folder)
    title = diff_title(summary)
    document = (f'<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
                f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>{diff_report_body(summary, parts)}"
                f"<p class=note>Every number: diff.json; figures as plotly JSON: {FIGURES}/.</p></body></html>")
    atomic_text(folder / REPORT, document)
    return {"report": REPORT, "summary": "diff.json", "figures": written}


def redraw_report(folder: str | Path) -> dict[str, Any]:
    """Redraw ``report.html`` and the figures of an earlier run from its ``diff.json``."""
    from mechscope.files import read_json

    folder = Path(folder)
    return write_diff_report(read_json(folder / "diff.json", "a mechscope diff summary", "run mechscope diff again"),
                             folder)


__all__ = ["diff_figures", "diff_report_body", "diff_title", "redraw_report", "write_diff_report"]
