"""The HTML page kit: building blocks for self-contained pages in graftwork's house style.

A page built from this kit has its stylesheet inline, its charts as inline SVG and its images as
``data:`` URIs: no JavaScript and no external URL, so it can be moved or mailed on its own.
``report.html`` (:mod:`graftwork.report._html`) is built from it; any other page can be too.
Torch-free; Pillow is used for :func:`thumbnail` only.

Every helper returns HTML text. Helpers taking text (titles, labels, values) escape it; helpers
taking cells or bodies (:func:`table`, :func:`section`) expect HTML that is already escaped, so
build those with :func:`escape`.

A page of its own, from the kit alone::

    from pathlib import Path
    from graftwork.report import kit

    rows = [[kit.escape("cat/1.png"), kit.escape("duplicate of cat/7.png")]]
    uri = kit.thumbnail("cat/1.png", base_dir=Path("data"))
    body = (kit.header("Data audit", "data/",
                       body=kit.cards([("images", "1,204"), ("problems", "1")]))
            + kit.nav([("problems", "Problems")])
            + kit.section("problems", "Problems",
                          kit.table(["image", "problem"], rows)
                          + (f'<img src="{uri}" alt="cat/1.png">' if uri else "")))
    Path("audit.html").write_text(kit.page("graftwork audit: data", body), encoding="utf-8")
"""
from __future__ import annotations

import base64
import html
import io
import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from graftwork.report._format import fmt_cell
from graftwork.report._svg import SVG_CSS, Chart

__all__ = ["CSS", "escape", "table", "kv_value", "kv_table", "section", "card", "cards",
           "header", "figure", "nav", "details", "thumbnail", "page", "THUMBNAIL", "TINY"]

log = logging.getLogger(__name__)

#: The page stylesheet (:func:`page` adds the charts' ``SVG_CSS``). Besides the elements the
#: helpers write, it styles ``.muted`` text, ``.side`` (blocks side by side), ``.plots`` (a grid
#: of charts), ``.verdict.ok``/``.verdict.bad``, and ``.losses`` grids of ``figure.loss`` image
#: tiles (an ``img`` or a ``.missing`` placeholder over a ``figcaption``).
CSS = """
body { font-family: -apple-system, "Segoe UI", Roboto, "DejaVu Sans", Arial, sans-serif;
       color: #1d2430; background: #f5f6f8; margin: 0; line-height: 1.45; }
main { max-width: 1120px; margin: 0 auto; padding: 24px 32px 48px; }
h1 { font-size: 1.7em; margin: 0 0 4px; }
h2 { font-size: 1.25em; margin: 0 0 12px; border-bottom: 2px solid #dde1e7; padding-bottom: 4px; }
h3 { font-size: 1.05em; margin: 18px 0 8px; }
section { background: #fff; border: 1px solid #dde1e7; border-radius: 8px;
          padding: 18px 22px; margin: 18px 0; }
.subtitle { color: #5b6573; margin: 0 0 12px; word-break: break-all; }
nav a { margin-right: 14px; color: #2459a6; text-decoration: none; font-size: 0.95em; }
.cards { display: flex; flex-wrap: wrap; gap: 12px; }
.card { background: #fff; border: 1px solid #dde1e7; border-radius: 8px; padding: 10px 16px;
        flex: 1 1 auto; min-width: 110px; max-width: 300px; }
nav { margin-top: 12px; }
.card .label { color: #5b6573; font-size: 0.8em; text-transform: uppercase; letter-spacing: .04em; }
.card .value { font-size: 1.35em; font-weight: 600; word-break: break-word; }
table { border-collapse: collapse; margin: 6px 0 10px; font-size: 0.93em; }
th, td { border: 1px solid #dde1e7; padding: 5px 10px; text-align: left; vertical-align: top; }
th { background: #eef1f5; font-weight: 600; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.best td { font-weight: 700; background: #eef7ee; }
.verdict { font-weight: 700; }
.verdict.bad { color: #b42318; } .verdict.ok { color: #1e7b34; }
figure { margin: 0; }
svg.chart { display: block; max-width: 100%; height: auto; }
.plots { display: grid; grid-template-columns: repeat(auto-fit, minmax(420px, 1fr)); gap: 14px; }
.plots svg.chart { width: 100%; }
figure.chart { overflow-x: auto; }
.side { display: flex; flex-wrap: wrap; gap: 24px; align-items: flex-start; }
.losses { display: grid; grid-template-columns: repeat(auto-fill, minmax(150px, 1fr)); gap: 12px; }
figure.loss { border: 1px solid #dde1e7; border-radius: 6px; padding: 6px; background: #fafbfc;
              min-width: 0; }
figure.loss img, figure.loss .missing { display: block; width: 100%; aspect-ratio: 1;
              object-fit: contain; background: #111827; border-radius: 3px; }
figure.loss img { image-rendering: pixelated; }
figure.loss .missing { background: #d1d5db; color: #4b5563; font-size: 0.85em;
                       display: flex; align-items: center; justify-content: center; }
figure.loss figcaption { font-size: 0.8em; margin-top: 5px; line-height: 1.3; }
figure.loss figcaption span { display: block; overflow: hidden; text-overflow: ellipsis;
                              white-space: nowrap; }
figure.loss .true b { color: #1e7b34; } figure.loss .pred b { color: #b42318; }
figure.loss .prob { color: #5b6573; font-variant-numeric: tabular-nums; }
pre, code { font-family: "DejaVu Sans Mono", Menlo, Consolas, "Liberation Mono", monospace; }
pre { background: #f3f4f6; border: 1px solid #dde1e7; padding: 10px; overflow-x: auto;
      font-size: 0.8em; line-height: 1.35; white-space: pre; }
code { font-size: 0.85em; word-break: break-word; }
details summary { cursor: pointer; color: #2459a6; margin: 6px 0; }
.muted { color: #5b6573; }
"""


def escape(value: Any) -> str:
    """``value`` as HTML-escaped text (quotes too, so it is safe in attributes)."""
    return html.escape(str(value), quote=True)


# --------------------------------------------------------------------------- tables

def table(header: Sequence[str], rows: Iterable[Sequence[str]], numeric: Sequence[bool] = (),
          row_classes: Sequence[str] = ()) -> str:
    """An HTML table; header and cells must already be escaped. ``numeric[i]`` right-aligns
    column ``i``; ``row_classes[r]`` is row ``r``'s CSS class (``"best"`` highlights it)."""
    head = "".join(f"<th>{h}</th>" for h in header)
    body = []
    for r, row in enumerate(rows):
        cls = f' class="{row_classes[r]}"' if r < len(row_classes) and row_classes[r] else ""
        cells = "".join(
            f'<td class="num">{c}</td>' if i < len(numeric) and numeric[i] else f"<td>{c}</td>"
            for i, c in enumerate(row))
        body.append(f"<tr{cls}>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def kv_value(key: str, value: Any) -> str:
    """A value as an escaped cell, formatted by what its key says it is (dicts and lists as
    JSON code)."""
    if isinstance(value, (dict, list)):
        return f"<code>{escape(json.dumps(value, sort_keys=True))}</code>"
    return escape(fmt_cell(key, value))


def kv_table(mapping: Mapping[str, Any], raw: bool = False) -> str:
    """A field/value table; ``raw`` shows values exactly as stored (for configuration)."""
    def cell(key: str, value: Any) -> str:
        if raw and not isinstance(value, (dict, list)):
            return escape(value if isinstance(value, str) else json.dumps(value))
        return kv_value(key, value)

    return table(["field", "value"], ([escape(k), cell(str(k), v)] for k, v in mapping.items()))


# --------------------------------------------------------------------------- page parts

def section(anchor: str, title: str, body: str) -> str:
    """A titled section (a card of its own) that :func:`nav` can link to as ``anchor``."""
    return f'<section id="{anchor}"><h2>{escape(title)}</h2>{body}</section>'


def card(label: str, value: str) -> str:
    """One headline number: a small label over a large value."""
    return (f'<div class="card"><div class="label">{escape(label)}</div>'
            f'<div class="value">{escape(value)}</div></div>')


def cards(items: Iterable[tuple[str, str]]) -> str:
    """A row of :func:`card` s, one per ``(label, value)``."""
    return f'<div class="cards">{"".join(card(k, v) for k, v in items)}</div>'


def header(title: str, subtitle: str = "", *, subtitle_html: str = "", body: str = "") -> str:
    """The page's heading: ``title``, a muted ``subtitle`` line (``subtitle_html``, already
    HTML, is appended to it), then ``body`` (HTML, e.g. :func:`cards`)."""
    return (f"<header><h1>{escape(title)}</h1>"
            f'<p class="subtitle">{escape(subtitle)}{subtitle_html}</p>{body}</header>')


def figure(chart: Chart) -> str:
    """A chart inlined as SVG."""
    return f'<figure class="chart" id="chart-{escape(chart.name)}">{chart.inline()}</figure>'


def nav(links: Sequence[tuple[str, str]]) -> str:
    """In-page links, one per ``(anchor, title)``."""
    return "<nav>" + "".join(f'<a href="#{a}">{escape(t)}</a>' for a, t in links) + "</nav>"


def details(summary: str, data: Mapping[str, Any]) -> str:
    """``data`` as indented JSON, folded under ``summary``; empty when ``data`` is."""
    if not data:
        return ""
    text = json.dumps(data, indent=2, sort_keys=True, default=str)
    return f"<details><summary>{escape(summary)}</summary><pre>{escape(text)}</pre></details>"


# --------------------------------------------------------------------------- images

THUMBNAIL = 160  # longest side of a thumbnail, in pixels
TINY = 64  # images at most this size are embedded as they are (PNG) and enlarged by the browser


def thumbnail(path: str, base_dir: Path | None = None, size: int = THUMBNAIL) -> str | None:
    """The image as a ``data:`` URI (JPEG, or PNG for tiny images) scaled to fit ``size``
    pixels, or None (with a warning) when it cannot be read. Relative paths are tried against
    the working directory, then against ``base_dir``."""
    candidates = [Path(path)] if path else []
    if path and base_dir is not None and not Path(path).is_absolute():
        candidates.append(base_dir / path)
    for candidate in candidates:
        try:
            if not candidate.is_file():
                continue
            with Image.open(candidate) as opened:
                opened.draft("RGB", (size, size))  # JPEG: decode at reduced scale, much faster
                image = opened.convert("L" if opened.mode in ("L", "I;16", "1") else "RGB")
            buffer = io.BytesIO()
            if max(image.size) <= TINY:
                image.save(buffer, "PNG")
                kind = "png"
            else:
                image.thumbnail((size, size), Image.Resampling.BICUBIC)
                image.save(buffer, "JPEG", quality=82)
                kind = "jpeg"
            return f"data:image/{kind};base64," + base64.b64encode(buffer.getvalue()).decode()
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            log.warning("cannot show %s: %s", candidate, exc)
            return None
    log.warning("cannot show %s: file not found", path or "(no path)")
    return None


# --------------------------------------------------------------------------- the page

def page(title: str, body: str, extra_css: str = "") -> str:
    """The whole self-contained document: ``title`` in the browser's title bar, ``body`` (HTML)
    as its content, the kit's stylesheet and ``extra_css`` inline."""
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{escape(title)}</title><style>{CSS}{SVG_CSS}{extra_css}</style></head>"
            f"<body><main>{body}</main></body></html>\n")
