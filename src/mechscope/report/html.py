"""A self-contained HTML report of an :class:`Inspection`, with plotly figures."""

from __future__ import annotations

import html
from pathlib import Path

import plotly.graph_objects as go
from plotly.subplots import make_subplots

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
    kinds = ("previous_token", "induction", "duplicate_token")
    figure = make_subplots(rows=1, cols=3, subplot_titles=[k.replace("_", " ") for k in kinds])
    for column, kind in enumerate(kinds, start=1):
        figure.add_trace(go.Heatmap(z=result.heads.get(kind).numpy(), colorscale="Viridis", zmin=0, zmax=1,
                                    showscale=column == 3), row=1, col=column)
        figure.update_xaxes(title_text="head", row=1, col=column)
        figure.update_yaxes(title_text="layer", row=1, col=column)
    figure.update_layout(title="Head scores (mean attention on the predicted key, repeated random tokens)")
    return figure


def _table(rows: list[list[str]], header: list[str]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def write_report(result: Inspection, path: Path, n_tracked: int = 5) -> Path:
    """Write ``path`` (an .html file with plotly.js embedded, so it opens offline)."""
    token_ids = result.top_next_ids[:n_tracked]
    figures = [_lens_heatmap(result, token_ids, [t for t, _ in result.top_next[:n_tracked]]),
               *_dla_figures(result), _head_score_figure(result)]
    parts = [figure.to_html(full_html=False, include_plotlyjs=(index == 0)) for index, figure in enumerate(figures)]
    lens_rows = [[label, ", ".join(f"{t!r} {p:.2f}" for t, p in top[:3])]
                 for label, top in zip(result.lens.labels, result.lens.top_tokens)]
    score_rows = [[kind.replace("_", " "), ", ".join(f"L{lay}H{h} {s:.2f}" for lay, h, s in result.heads.ranked(kind, 5))]
                  for kind in ("previous_token", "induction", "duplicate_token")]
    document = f"""<!doctype html><html><head><meta charset="utf-8"><title>mechscope inspect</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:auto}} td,th{{padding:2px 8px;text-align:left}}
table{{border-collapse:collapse}} tr:nth-child(even){{background:#f3f3f3}}</style></head><body>
<h1>mechscope inspect</h1>
<p><b>Model:</b> {html.escape(result.model_name)}<br><b>Prompt:</b> {html.escape(result.prompt)}<br>
<b>Tokens:</b> {html.escape(' | '.join(result.str_tokens))}</p>
<h2>Top next tokens</h2>{_table([[repr(t), f"{p:.3f}"] for t, p in result.top_next], ["token", "probability"])}
<h2>Logit lens</h2>{_table(lens_rows, ["point", "top-3 tokens"])}{parts[0]}
<h2>Direct logit attribution</h2>{parts[1]}{parts[2]}
<h2>Head scores</h2>{_table(score_rows, ["score", "top-5 heads"])}{parts[3]}
</body></html>"""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(document, encoding="utf-8")
    return path
