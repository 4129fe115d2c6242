"""The page shell every view shares: a header, the stylesheet, vendored scripts and the page's data.

No inline script or style anywhere (the Content-Security-Policy is ``default-src 'self'``): a
page's data travels in a ``<script type="application/json" id="page-data">`` element, which the
browser never executes, and the view's own script under ``/static`` reads it."""

from __future__ import annotations

import html
import json
from collections.abc import Sequence

#: vendored libraries, by the name a view asks for: (script, stylesheets), served from the package,
#: never a CDN. The stylesheets hold what the library would otherwise inject inline (refused by the
#: policy), under the element ids the library checks before injecting (static/vendor/README.md).
VENDORED = {
    "plotly": ("/static/vendor/plotly.min.js",
               "<link id=plotly.js-style-global class=no-inline-styles rel=stylesheet href=/static/vendor/plotly.css>"
               "<link id=ce8d464691048653ffe3a57c6c18ab566e8366f186677868cf724621a857b4fe rel=stylesheet "
               "href=/static/vendor/plotly-maplibre.css>"),
    "cytoscape": ("/static/vendor/cytoscape.min.js",
                  "<link id=__________cytoscape_stylesheet rel=stylesheet href=/static/vendor/cytoscape.css>"),
}

NAVIGATION = (("/", "runs"), ("/prompt", "prompt"), ("/steer", "steering"))


def json_for_html(data: object) -> str:
    """``data`` as JSON that cannot close the element it sits in (``</script>`` and ``<!--``)."""
    return (json.dumps(data, allow_nan=False).replace("<", "\\u003c").replace(">", "\\u003e")
            .replace("&", "\\u0026"))


def page(title: str, body: str, scripts: Sequence[str] = (), data: object = None) -> str:
    """A whole HTML page: ``scripts`` are vendored names (:data:`VENDORED`) or our own
    ``static/*.js`` files by name; ``data`` (JSON-able) is handed to them as ``page-data``."""
    if "plotly" in scripts:  # its style attributes go through the CSSOM (see static/style-attributes.js)
        scripts = ["style-attributes", *scripts]
    sources = [VENDORED[name][0] if name in VENDORED else f"/static/{name}.js" for name in scripts]
    tags = "".join(VENDORED[name][1] for name in scripts if name in VENDORED)
    tags += "".join(f"<script src=\"{html.escape(src)}\" defer></script>" for src in sources)
    carried = ("" if data is None else
               f"<script type=\"application/json\" id=page-data>{json_for_html(data)}</script>")
    links = "".join(f"<a href={href}>{label}</a>" for href, label in NAVIGATION)
    return (f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{html.escape(title)} · mechscope"
            f"</title><link rel=icon href=/static/favicon.svg><link rel=stylesheet href=/static/app.css>{tags}"
            f"</head><body><header><span class=brand>mechscope</span>{links}</header><main>{body}</main>"
            f"{carried}</body></html>")


def shade_class(value: float, scale: float) -> str:
    """One of ten CSS classes ``shade0`` .. ``shade9`` for ``value`` on ``[0, scale]`` (classes,
    not style attributes: the policy refuses inline styles)."""
    if scale <= 0 or value <= 0:
        return "shade0"
    return f"shade{min(9, int(10 * value / scale))}"


__all__ = ["NAVIGATION", "VENDORED", "json_for_html", "page", "shade_class"]
