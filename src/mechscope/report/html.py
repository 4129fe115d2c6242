"""A self-contained HTML report of an :class:`Inspection`, with plotly figures."""

from __future__ import annotations

import html
from pathlib import Path

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from mechscope.analysis.head_scores import ATTENTION_KINDS, KINDS
from mechscope.files import atomic_text
from mechscope.report.inspection import Inspection


def _lens_heatmap(result: Inspection, token_ids: list[int], token_strs: list[str]) -> go.Figure:
    probs = result.lens.log_probs[:, token_ids].exp().T.numpy()
    figure = go.Figure(go.Heatmap(z=probs, x=result.lens.labels, y=[repr(t) for t in token_strs],
                                  colorscale="Blues", colorbar_title="p"))
    figure.update_layout(title="Logit lens: probability of the final top-5 tokens at each layer",
                         xaxis_title="residual stream entering block")
    return figure


def _dla_figures(result: Inspection) -> list[go.Figure]:
    dla = result.attribution
    labels, values = dla.by_layer()
    title = f"{dla.token!r} vs {dla.other_token!r} (logit difference {dla.logit_diff:.2f})"
    bars = go.Figure(go.Bar(x=labels, y=values.tolist()))
    bars.update_layout(title=f"Direct logit attribution by layer: {title}", yaxis_title="logit difference")
    heads = go.Figure(go.Heatmap(z=dla.by_head.numpy(), colorscale="RdBu", zmid=0,
                                 colorbar_title="logit diff"))
    heads.update_layout(title=f"Direct logit attribution by head: {title}", xaxis_title="head",
                        yaxis_title="layer")
    return [bars, heads]


def _head_score_figure(result: Inspection) -> go.Figure:
    kinds = [kind for kind in KINDS if kind in ATTENTION_KINDS or result.heads.copy_suppression is not None]
    figure = make_subplots(rows=1, cols=len(kinds), subplot_titles=[k.replace("_", " ") for k in kinds])
    for column, kind in enumerate(kinds, start=1):
        if kind in ATTENTION_KINDS:  # attention fractions: one shared 0..1 scale
            trace = go.Heatmap(z=result.heads.get(kind).numpy(), colorscale="Viridis", zmin=0, zmax=1,
                               showscale=column == len(ATTENTION_KINDS), colorbar={"x": 0.72, "title": "attn"})
        else:  # copy suppression: signed, in standard deviations, its own scale
            trace = go.Heatmap(z=result.heads.get(kind).numpy(), colorscale="RdBu_r", zmid=0,
                               colorbar={"x": 1.02, "title": "sd"})
        figure.add_trace(trace, row=1, col=column)
        figure.update_xaxes(title_text="head", row=1, col=column)
        figure.update_yaxes(title_text="layer", row=1, col=column)
    figure.update_layout(title="Head scores on repeated random tokens: attention on the predicted key; copy "
                               "suppression = how far the head's output lowers the attended tokens' logits")
    return figure


def _tuned_lens_figures(result: Inspection, token_ids: list[int], token_strs: list[str]) -> list[go.Figure]:
    """Tuned-lens heatmap (same tokens as the logit-lens one) and the per-layer KL of both lenses."""
    probs = result.tuned.log_probs[:, token_ids].exp().T.numpy()
    heatmap = go.Figure(go.Heatmap(z=probs, x=result.tuned.labels, y=[repr(t) for t in token_strs],
                                   colorscale="Blues", colorbar_title="p"))
    heatmap.update_layout(title="Tuned lens: probability of the final top-5 tokens after each block",
                          xaxis_title="residual stream entering block (after the one before)")
    comparison = result.lens_kl
    kl = go.Figure([go.Scatter(x=comparison.labels, y=comparison.logit_lens_kl.tolist(), name="logit lens",
                               mode="lines+markers"),
                    go.Scatter(x=comparison.labels, y=comparison.tuned_lens_kl.tolist(), name="tuned lens",
                               mode="lines+markers")])
    kl.update_layout(title=f"KL(model output || lens) by layer, mean over {comparison.n_tokens} prompt positions",
                     yaxis_title="KL (nats)", yaxis_type="log")
    return [heatmap, kl]


def _tuned_lens_section(result: Inspection, parts: list[str]) -> str:
    if result.tuned is None:
        return ""
    logit_top = dict(zip(result.lens.labels, result.lens.top_tokens))
    kl = dict(zip(result.lens_kl.labels, zip(result.lens_kl.logit_lens_kl.tolist(),
                                              result.lens_kl.tuned_lens_kl.tolist())))
    rows = [[label, ", ".join(f"{t!r} {p:.2f}" for t, p in top[:3]),
             ", ".join(f"{t!r} {p:.2f}" for t, p in logit_top[label][:3]),
             f"{kl[label][0]:.3f}", f"{kl[label][1]:.3f}"]
            for label, top in zip(result.tuned.labels, result.tuned.top_tokens)]
    header = ["point", "tuned lens top-3", "logit lens top-3", "KL logit lens", "KL tuned lens"]
    return f"<h2>Tuned lens</h2>{_table(rows, header)}{parts[4]}{parts[5]}"


def _table(rows: list[list[str]], header: list[str]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def write_report(result: Inspection, path: Path, n_tracked: int = 5) -> Path:
    """Write ``path`` (an .html file with plotly.js embedded, so it opens offline)."""
    token_ids = result.top_next_ids[:n_tracked]
    figures = [_lens_heatmap(result, token_ids, [t for t, _ in result.top_next[:n_tracked]]),
               *_dla_figures(result), _head_score_figure(result)]
    if result.tuned is not None:
        figures += _tuned_lens_figures(result, token_ids, [t for t, _ in result.top_next[:n_tracked]])
    parts = [figure.to_html(full_html=False, include_plotlyjs=(index == 0)) for index, figure in enumerate(figures)]
    lens_rows = [[label, ", ".join(f"{t!r} {p:.2f}" for t, p in top[:3])]
                 for label, top in zip(result.lens.labels, result.lens.top_tokens)]
    kinds = [kind for kind in KINDS if kind in ATTENTION_KINDS or result.heads.copy_suppression is not None]
    score_rows = [[kind.replace("_", " "), ", ".join(f"L{lay}H{h} {s:.2f}" for lay, h, s in result.heads.ranked(kind, 5))]
                  for kind in kinds]
    document = f"""<!doctype html><html><head><meta charset="utf-8"><title>mechscope inspect</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:auto}} td,th{{padding:2px 8px;text-align:left}}
table{{border-collapse:collapse}} tr:nth-child(even){{background:#f3f3f3}}</style></head><body>
<h1>mechscope inspect</h1>
<p><b>Model:</b> {html.escape(result.model_name)}<br><b>Prompt:</b> {html.escape(result.prompt)}<br>
<b>Tokens:</b> {html.escape(' | '.join(result.str_tokens))}</p>
<h2>Top next tokens</h2>{_table([[repr(t), f"{p:.3f}"] for t, p in result.top_next], ["token", "probability"])}
<h2>Logit lens</h2>{_table(lens_rows, ["point", "top-3 tokens"])}{parts[0]}
{_tuned_lens_section(result, parts)}
<h2>Direct logit attribution</h2>{parts[1]}{parts[2]}
<h2>Head scores</h2>{_table(score_rows, ["score", "top-5 heads"])}{parts[3]}
</body></html>"""
    return atomic_text(path, document)
