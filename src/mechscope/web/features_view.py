"""Dictionary features in the app: a dashboard run's feature list (searchable by explanation and
top tokens, sortable) and one page per feature: top contexts shaded by activation, samples from
activation quantiles, the histogram, logit effects, the explanation and its scores, the nearest
features by decoder direction, and a link that opens the steering playground on it."""

from __future__ import annotations

import html
from urllib.parse import urlencode

from mechscope.store import FeatureRow, RunRecord, RunStore
from mechscope.web.pages import shade_class

PAGE_SIZE = 100


def _window(window: dict) -> str:
    """A context window as shaded tokens (classes, not styles: the policy refuses inline styles)."""
    scale = max(window["values"] + [0.0])
    pieces = []
    for index, (token, value) in enumerate(zip(window["tokens"], window["values"])):
        mark = " at" if index == window["at"] else ""
        pieces.append(f"<span class=\"token {shade_class(value, scale)}{mark}\" title=\"{value:.3f}\">"
                      f"{html.escape(token)}</span>")
    return f"<div class=ctx>{''.join(pieces)}</div>"


def _explanation(feature: dict) -> str:
    explained = feature.get("explanation")
    if not explained:
        return "<p class=muted>no explanation (run <code>mechscope explain</code> on this dictionary, then build the " \
               "dashboard with <code>--explanations</code>)</p>"
    rows = "".join(
        f"<tr><td>{html.escape(name)}</td><td>{score.get('value', float('nan')):.3f}</td>"
        f"<td>[{score.get('low', float('nan')):.3f}, {score.get('high', float('nan')):.3f}]</td>"
        f"<td>{'above chance' if score.get('above_chance') else 'not above chance'}</td></tr>"
        for name, score in (explained.get("scores") or {}).items() if isinstance(score, dict) and "value" in score)
    table = f"<table class=facts><tr><th>scorer<th>score<th>95% interval<th></tr>{rows}</table>" if rows else ""
    return f"<p class=explanation>{html.escape(explained.get('text') or '')}</p>{table}"


def _effects(feature: dict) -> str:
    columns = []
    for title, key in (("promotes", "promoted"), ("suppresses", "suppressed")):
        items = "".join(f"<li><code>{html.escape(repr(token))}</code> {value:+.3f}</li>"
                        for token, value in feature.get(key, []))
        if items:
            columns.append(f"<section><h3>{title}</h3><ul class=effects>{items}</ul></section>")
    return f"<div class=side-by-side>{''.join(columns)}</div>" if columns else ""


def _latent_link(record: RunRecord, latent: int, known: set[int]) -> str:
    name = f"latent {latent}"
    return f"<a href=/runs/{record.id}/features/{latent}>{name}</a>" if latent in known else name


def feature_page_body(record: RunRecord, feature: dict, known: set[int]) -> tuple[str, dict]:
    """(HTML body, page data) of one feature of dashboard run ``record``; ``known``: the latents
    this run has pages for (nearest features link to those)."""
    latent = feature["latent"]
    top = "".join(_window(w) for w in feature.get("top", [])) or "<p>never active on these contexts</p>"
    bands = "".join(f"<h4>{html.escape(band['band'])}</h4>" + "".join(_window(w) for w in band["contexts"])
                    for band in feature.get("quantiles", []))
    nearest = "".join(f"<li>{_latent_link(record, n['latent'], known)} cosine {n['cosine']:.3f}</li>"
                      for n in feature.get("nearest", []))
    steer = urlencode({"sae": record.id, "latent": latent})
    body = (f"<p><a href=/runs/{record.id}>{html.escape(record.name)}</a> / features</p>"
            f"<h1>Latent {latent}</h1>{_explanation(feature)}"
            f"<p>density {feature['density']:.5f} of tokens · max activation {feature['max_activation']:.3f}</p>"
            f"<p><a class=button id=steer-with href=/steer?{steer}>steer with this</a></p>"
            f"<div class=figure data-figure=0></div>{_effects(feature)}"
            f"<h2>Top activations</h2>{top}<h2>Samples by activation quantile</h2>{bands or '<p>none</p>'}"
            f"<h2>Nearest features (decoder cosine)</h2><ul>{nearest or '<li>none recorded</li>'}</ul>")
    edges, counts = feature["histogram"]["edges"], feature["histogram"]["counts"]
    centres = [(a + b) / 2 for a, b in zip(edges, edges[1:])]
    figure = {"data": [{"type": "bar", "x": centres, "y": counts, "marker": {"color": "#e6501e"}}],
              "layout": {"height": 260, "margin": {"t": 30, "b": 40}, "title": {"text": "activation histogram "
                                                                                        "(active tokens)"},
                         "xaxis": {"title": {"text": "activation"}}, "yaxis": {"title": {"text": "tokens"}}}}
    return body, {"figures": [figure]}


def _row(record: RunRecord, row: FeatureRow) -> str:
    return (f"<tr><td><a href=/runs/{record.id}/features/{row.latent}>latent {row.latent}</a></td>"
            f"<td>{row.density:.5f}</td><td>{row.max_activation:.3f}</td>"
            f"<td>{html.escape(row.explanation or '')}</td></tr>")


def feature_list(record: RunRecord, store: RunStore, search: str, order: str, page: int) -> str:
    """The dashboard run's features: a search box, the sort order, one page of rows."""
    found, total = store.features(record.id, search.strip() or None, order, PAGE_SIZE, (page - 1) * PAGE_SIZE)
    orders = "".join(f"<option value={name}{' selected' if name == order else ''}>{name}</option>"
                     for name in ("latent", "density", "max"))
    form = (f"<form method=get action=/runs/{record.id} class=inline><input name=fq value=\"{html.escape(search)}\" "
            "placeholder=\"search explanations and top tokens, or a latent's number\"> <label>order <select "
            f"name=order>{orders}</select></label> <button>search</button></form>")
    shown = f"{len(found)} shown of {total} features" + (f" matching <q>{html.escape(search)}</q>" if search else "")
    pages = ""
    if total > page * PAGE_SIZE:
        following = urlencode({"fq": search, "order": order, "page": page + 1})
        pages = f" · <a href=/runs/{record.id}?{following}>next {PAGE_SIZE}</a>"
    rows = "".join(_row(record, row) for row in found)
    return (f"<h2>Features</h2>{form}<p id=feature-count>{shown}{pages}</p><table class=runs><tr><th>feature"
            f"<th>density<th>max<th>explanation</tr>{rows}</table>")


__all__ = ["PAGE_SIZE", "feature_list", "feature_page_body"]
