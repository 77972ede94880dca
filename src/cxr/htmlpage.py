"""Self-contained HTML pages: one file, figures embedded as ``data:`` URIs, no network.

Used by the evaluation report (:mod:`cxr.evaluation.report`) and the dataset report
(:mod:`cxr.datareport`). Every page carries the research-use notice at the top.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence

from cxr import RESEARCH_NOTICE

__all__ = ["STYLE", "figure", "notes", "page", "table"]

STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;
max-width:1200px;color:#222;padding:0 1em}
.notice{background:#fff3cd;border:1px solid #e0c060;padding:.7em 1em;font-weight:600;
border-radius:4px}
table{border-collapse:collapse;font-size:.85em;margin:1em 0}
th,td{border:1px solid #ccc;padding:.25em .5em;text-align:right}
th{background:#f2f2f2} td:first-child,th:first-child{text-align:left}
figure{display:inline-block;margin:.5em;vertical-align:top} figure img{max-width:100%}
.grid figure img{width:360px} figcaption{font-size:.8em;color:#555;text-align:center}
.warn{color:#8a4b00;font-weight:600}
"""


def table(headers: Sequence[object], rows: Sequence[Sequence[object]]) -> str:
    """An HTML table; every cell is escaped."""
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def figure(png: bytes, caption: str) -> str:
    """A captioned figure holding ``png`` inline (a ``data:image/png;base64`` URI)."""
    data = base64.b64encode(png).decode("ascii")
    alt = html.escape(caption)
    return (
        f'<figure><img src="data:image/png;base64,{data}" alt="{alt}">'
        f"<figcaption>{alt}</figcaption></figure>"
    )


def notes(items: Sequence[str], title: str = "Notes") -> str:
    """A titled bullet list; empty when there is nothing to say."""
    if not items:
        return ""
    return (
        f"<h2>{html.escape(title)}</h2><ul>"
        + "".join(f"<li>{html.escape(n)}</li>" for n in items)
        + "</ul>"
    )


def page(title: str, body: str) -> str:
    """A whole page: the notice, the title, then ``body`` (already HTML)."""
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>\n"
        f'<p class="notice">{html.escape(RESEARCH_NOTICE)}</p>\n'
        f"<h1>{html.escape(title)}</h1>\n{body}\n</body></html>\n"
    )
