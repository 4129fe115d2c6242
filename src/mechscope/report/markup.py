"""Markup shared by mechscope's HTML reports: one style sheet, number formatting, escaped tables
and plotly figures written both as JSON and as page parts."""

from __future__ import annotations

import html
import math
from pathlib import Path
from typing import Any

from mechscope.files import atomic_text

FIGURES = "figures"

STYLE = """body{font-family:sans-serif;max-width:1200px;margin:auto;padding:0 12px} td,th{padding:2px 8px;
text-align:left;vertical-align:top} table{border-collapse:collapse;margin:6px 0} tr:nth-child(even){background:#f3f3f3}
.mono{font-family:monospace;white-space:pre-wrap} .note{color:#555}"""


def num(value: Any, digits: int = 4) -> str:
    """A number as table text: ints as they are, floats to ``digits`` significant digits."""
    if value is None:
        return "n/a"
    if isinstance(value, bool) or isinstance(value, int):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return f"{value:.{digits}g}"


def pct(value: float | None) -> str:
    """A share as a whole percentage ("n/a" for a missing one)."""
    return "n/a" if value is None else f"{value:.0%}"


def table(rows: list[list[str]], header: list[str], raw_columns: tuple[int, ...] = ()) -> str:
    """An HTML table; every cell escaped except the ``raw_columns`` (already-built markup)."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c if i in raw_columns else html.escape(str(c))}</td>"
                                    for i, c in enumerate(row)) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def write_figures(figures: dict, folder: Path) -> tuple[list[str], dict[str, str]]:
    """Write each plotly figure as ``folder/figures/<name>.json``; returns (the paths written,
    relative to ``folder``; each figure as an HTML part, plotly.js embedded in the first only,
    so a page opens offline)."""
    written = []
    for name, figure in figures.items():
        atomic_text(folder / FIGURES / f"{name}.json", figure.to_json())
        written.append(f"{FIGURES}/{name}.json")
    parts = {name: figure.to_html(full_html=False, include_plotlyjs=index == 0)
             for index, (name, figure) in enumerate(figures.items())}
    return written, parts


__all__ = ["FIGURES", "STYLE", "num", "pct", "table", "write_figures"]
