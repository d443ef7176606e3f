"""A small SVG layer for the report's charts: escaping, markup, ticks, axes, legends, colours.

Charts are built as SVG text from the data, so the browser renders text and scales the
drawing; nothing here measures fonts, so text widths are estimated from character classes
(generously, so labels keep clear of each other). Styling is done with CSS classes
(:data:`SVG_CSS`): the report page holds that stylesheet once, and a chart written as a file
of its own carries a copy.
"""
from __future__ import annotations

import html
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

SVG_NS = "http://www.w3.org/2000/svg"

#: Okabe-Ito colours: told apart with every common kind of colour blindness.
PALETTE = {"blue": "#0072B2", "vermillion": "#D55E00", "green": "#009E73",
           "orange": "#E69F00", "sky": "#56B4E9", "purple": "#CC79A7", "grey": "#6b7280"}

#: ColorBrewer "Blues" (9 classes, single hue: readable in grey and with colour blindness).
BLUES = ("#f7fbff", "#deebf7", "#c6dbef", "#9ecae1", "#6baed6", "#4292c6", "#2171b5",
         "#08519c", "#08306b")

FONT = '-apple-system, "Segoe UI", Roboto, "DejaVu Sans", Arial, sans-serif'

SVG_CSS = f"""
svg.chart {{ font-family: {FONT}; font-size: 12px; }}
svg.chart text {{ fill: #1d2430; }}
svg.chart .title {{ font-size: 14px; font-weight: 600; }}
svg.chart .axis-title {{ font-size: 12.5px; }}
svg.chart .tick text, svg.chart text.tick {{ font-size: 11px; fill: #3b4350; }}
svg.chart .phase-label {{ font-size: 11px; fill: #5b6573; font-style: italic; }}
svg.chart .bg {{ fill: #ffffff; }}
svg.chart .frame {{ fill: none; stroke: #1d2430; stroke-width: 1; }}
svg.chart .grid {{ stroke: #e5e7eb; stroke-width: 1; }}
svg.chart .tick line {{ stroke: #1d2430; stroke-width: 1; }}
svg.chart .phase-boundary {{ stroke: #4b5563; stroke-width: 1.3; stroke-dasharray: 6 4; }}
svg.chart .diagonal {{ stroke: #4b5563; stroke-width: 1.3; stroke-dasharray: 5 4; fill: none; }}
svg.chart .legend-box {{ fill: #ffffff; fill-opacity: 0.85; stroke: #d1d5db; }}
svg.chart .train {{ stroke: {PALETTE["blue"]}; fill: {PALETTE["blue"]}; }}
svg.chart .val {{ stroke: {PALETTE["vermillion"]}; fill: {PALETTE["vermillion"]}; }}
svg.chart .lr {{ stroke: {PALETTE["green"]}; fill: {PALETTE["green"]}; }}
svg.chart path.line, svg.chart line.line {{ fill: none; stroke-width: 2.4;
    stroke-linejoin: round; stroke-linecap: round; }}
svg.chart circle.raw {{ fill-opacity: 0.45; stroke: none; }}
svg.chart .bar.before, svg.chart .swatch.before {{ fill: {PALETTE["orange"]}; stroke: #8a5d00; }}
svg.chart .bar.after, svg.chart .swatch.after {{ fill: {PALETTE["blue"]}; stroke: #00476e; }}
svg.chart .bar {{ stroke-width: 0.8; }}
svg.chart .cell {{ stroke: #ffffff; stroke-width: 0.5; }}
svg.chart text.count {{ font-size: 12px; font-variant-numeric: tabular-nums; }}
svg.chart text.count.dark {{ fill: #ffffff; }}
svg.chart .colorbar {{ stroke: #1d2430; stroke-width: 0.8; }}
"""

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ufffe\uffff]")


def esc(value: object) -> str:
    """``value`` as text safe in HTML and in XML (control characters XML forbids are dropped)."""
    return html.escape(_CONTROL.sub("", str(value)), quote=True)


def num(value: float) -> str:
    """A coordinate with at most two decimals and no trailing zeros."""
    text = f"{value:.2f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


# --------------------------------------------------------------------------- text sizes

_NARROW = frozenset("ijlIft.,:;'|!()[]{} 1")
_WIDE = frozenset("mwMW@%")


def text_width(text: str, size: float) -> float:
    """Estimated advance width of ``text`` at ``size`` px in a common sans-serif face."""
    em = 0.0
    for char in text:
        if char in _NARROW:
            em += 0.32
        elif char in _WIDE:
            em += 0.88
        elif ord(char) >= 0x2E80:  # CJK and other wide scripts
            em += 1.0
        elif char.isupper() or char.isdigit():
            em += 0.64
        else:
            em += 0.57
    return em * size


def fit(text: str, size: float, max_width: float) -> str:
    """``text`` cut with an ellipsis so that it is about ``max_width`` px wide at most."""
    if text_width(text, size) <= max_width:
        return text
    while len(text) > 1 and text_width(text + "\u2026", size) > max_width:
        text = text[:-1]
    return text + "\u2026"


# --------------------------------------------------------------------------- ticks and colours

def nice_ticks(lo: float, hi: float, max_ticks: int, integer: bool = False) -> list[float]:
    """Round tick values within ``[lo, hi]``: the smallest step of 1, 2, 2.5 or 5 times a power of
    ten (no 2.5 for integer axes) that gives at most ``max_ticks`` ticks."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return []
    max_ticks = max(max_ticks, 2)
    power = 10.0 ** math.floor(math.log10((hi - lo) / max_ticks))
    mantissas = (1, 2, 5, 10) if integer else (1, 2, 2.5, 5, 10)
    step = 1.0
    for scale in (power, power * 10):
        candidates = [m * scale for m in mantissas if not integer or m * scale >= 1]
        fitting = [s for s in candidates if _tick_count(lo, hi, s) <= max_ticks]
        if fitting:
            step = fitting[0]
            break
    first = math.ceil(lo / step - 1e-9)
    last = math.floor(hi / step + 1e-9)
    return [k * step for k in range(first, last + 1)]


def _tick_count(lo: float, hi: float, step: float) -> int:
    return math.floor(hi / step + 1e-9) - math.ceil(lo / step - 1e-9) + 1


def tick_labels(ticks: Sequence[float]) -> list[str]:
    """Tick values with as many decimals as their spacing needs (``0.2``, ``0.25``, ``3``)."""
    if len(ticks) < 2 or max(abs(t) for t in ticks) >= 1e6:
        return [f"{t:.4g}" for t in ticks]
    step = abs(ticks[1] - ticks[0])
    decimals = 0
    while decimals < 8 and abs(step * 10 ** decimals - round(step * 10 ** decimals)) > 1e-6:
        decimals += 1
    labels = [f"{t:.{decimals}f}" for t in ticks]
    return [label.lstrip("-") if float(label) == 0 else label for label in labels]  # no "-0.0"


def log_ticks(lo: float, hi: float) -> tuple[list[float], list[str]]:
    """Powers of ten within ``[lo, hi]`` (both > 0) and their labels: ``0.001``, ``0.01`` when
    every tick is between 1e-3 and 1e3, else ``1e-5``, ``1e-4``."""
    first, last = math.ceil(math.log10(lo) - 1e-9), math.floor(math.log10(hi) + 1e-9)
    step = max(1, math.ceil((last - first + 1) / 7))
    powers = list(range(first, last + 1, step))
    plain = all(-3 <= k <= 3 for k in powers)  # 0.001 ... 1000; else 1e-5 ... for every tick
    return [10.0 ** k for k in powers], [f"{10.0 ** k:g}" if plain else f"1e{k}" if k else "1"
                                         for k in powers]


def blues(fraction: float) -> str:
    """The "Blues" colour map at ``fraction`` (clipped to ``[0, 1]``) as ``#rrggbb``."""
    t = min(max(fraction, 0.0), 1.0) * (len(BLUES) - 1) if math.isfinite(fraction) else 0.0
    i = min(int(t), len(BLUES) - 2)
    f = t - i
    a, b = BLUES[i], BLUES[i + 1]
    channels = (round(int(a[k:k + 2], 16) * (1 - f) + int(b[k:k + 2], 16) * f) for k in (1, 3, 5))
    return "#" + "".join(f"{c:02x}" for c in channels)


# --------------------------------------------------------------------------- markup

@dataclass
class Svg:
    """SVG markup collected element by element; coordinates are in SVG user units (px)."""

    width: float
    height: float
    parts: list[str] = field(default_factory=list)

    def add(self, markup: str) -> None:
        """Append raw markup (already escaped)."""
        self.parts.append(markup)

    def line(self, x1: float, y1: float, x2: float, y2: float, cls: str) -> None:
        """A straight line (no class attribute when ``cls`` is empty)."""
        attr = f' class="{cls}"' if cls else ""
        self.parts.append(f'<line{attr} x1="{num(x1)}" y1="{num(y1)}" x2="{num(x2)}" '
                          f'y2="{num(y2)}"/>')

    def path(self, points: Sequence[tuple[float, float]], cls: str) -> None:
        """A polyline through ``points``."""
        d = "M" + "L".join(f"{num(x)},{num(y)}" for x, y in points)
        self.parts.append(f'<path class="{cls}" d="{d}"/>')

    def circle(self, x: float, y: float, r: float, cls: str) -> None:
        """A dot of radius ``r``."""
        self.parts.append(f'<circle class="{cls}" cx="{num(x)}" cy="{num(y)}" r="{num(r)}"/>')

    def rect(self, x: float, y: float, w: float, h: float, cls: str, extra: str = "",
             tooltip: str | None = None) -> None:
        """A rectangle; ``extra`` is more (escaped) attributes, ``tooltip`` a hover text."""
        head = (f'<rect class="{cls}" x="{num(x)}" y="{num(y)}" width="{num(max(w, 0.0))}" '
                f'height="{num(max(h, 0.0))}"{extra}')
        self.parts.append(f"{head}><title>{esc(tooltip)}</title></rect>" if tooltip
                          else head + "/>")

    def text(self, x: float, y: float, text: str, cls: str = "", anchor: str = "middle",
             rotate: float = 0.0, tooltip: str | None = None, extra: str = "") -> None:
        """``text`` with its baseline at ``y``; ``rotate`` turns it about ``(x, y)``."""
        attrs = f' class="{cls}"' if cls else ""
        if anchor != "start":
            attrs += f' text-anchor="{anchor}"'
        if rotate:
            attrs += f' transform="rotate({num(rotate)} {num(x)} {num(y)})"'
        inner = esc(text) + (f"<title>{esc(tooltip)}</title>" if tooltip else "")
        self.parts.append(f'<text x="{num(x)}" y="{num(y)}"{attrs}{extra}>{inner}</text>')


@dataclass
class Chart:
    """One finished chart: ``name`` (its file is ``plots/<name>.svg``), ``title``, and markup."""

    name: str
    title: str
    desc: str
    width: float
    height: float
    body: str
    css_class: str = "chart"

    def _svg(self, head: str, extra: str) -> str:
        ident = esc(self.name)
        return (f'<svg{head} class="{self.css_class}" role="img" width="{num(self.width)}" '
                f'height="{num(self.height)}" viewBox="0 0 {num(self.width)} '
                f'{num(self.height)}" aria-labelledby="{ident}-title {ident}-desc">'
                f'<title id="{ident}-title">{esc(self.title)}</title>'
                f'<desc id="{ident}-desc">{esc(self.desc)}</desc>{extra}{self.body}</svg>')

    def inline(self) -> str:
        """The chart for embedding in HTML (no namespace or stylesheet: the page has both)."""
        return self._svg("", "")

    def document(self) -> str:
        """The chart as a stand-alone ``.svg`` file, with its own stylesheet."""
        return ('<?xml version="1.0" encoding="UTF-8"?>\n'
                + self._svg(f' xmlns="{SVG_NS}"', f"<style>{SVG_CSS}</style>") + "\n")

    def write(self, folder: str | Path) -> Path:
        """Write ``folder/<name>.svg`` and return its path."""
        path = Path(folder) / f"{self.name}.svg"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.document(), encoding="utf-8")
        return path


# --------------------------------------------------------------------------- axes

@dataclass
class Axes:
    """The plot rectangle and the data limits it shows (``log_y``: a log10 y axis)."""

    left: float
    top: float
    right: float
    bottom: float
    xlim: tuple[float, float]
    ylim: tuple[float, float]
    log_y: bool = False

    def x(self, value: float) -> float:
        """The horizontal position of data value ``value``."""
        lo, hi = self.xlim
        return self.left + (value - lo) / (hi - lo) * (self.right - self.left)

    def y(self, value: float) -> float:
        """The vertical position of data value ``value`` (> 0 on a log axis)."""
        lo, hi = self.ylim
        if self.log_y:
            value, lo, hi = math.log10(value), math.log10(lo), math.log10(hi)
        return self.bottom - (value - lo) / (hi - lo) * (self.bottom - self.top)


TICK = 5


def draw_axes(svg: Svg, axes: Axes, xticks: Sequence[float], xlabels: Sequence[str],
              yticks: Sequence[float], ylabels: Sequence[str], xtitle: str, ytitle: str) -> None:
    """Background, grid lines, the frame, ticks with labels, and both axis titles."""
    a = axes
    svg.rect(a.left, a.top, a.right - a.left, a.bottom - a.top, "bg")
    for value in xticks:
        svg.line(a.x(value), a.top, a.x(value), a.bottom, "grid")
    for value in yticks:
        svg.line(a.left, a.y(value), a.right, a.y(value), "grid")
    svg.add('<g class="tick x">')
    for value, label in zip(xticks, xlabels, strict=True):
        svg.line(a.x(value), a.bottom, a.x(value), a.bottom + TICK, "")
        svg.text(a.x(value), a.bottom + TICK + 12, label)
    svg.add('</g><g class="tick y">')
    for value, label in zip(yticks, ylabels, strict=True):
        svg.line(a.left - TICK, a.y(value), a.left, a.y(value), "")
        svg.text(a.left - TICK - 3, a.y(value) + 4, label, anchor="end")
    svg.add("</g>")
    widest = max((text_width(t, 11) for t in ylabels), default=0.0)
    svg.text((a.left + a.right) / 2, a.bottom + TICK + 32, xtitle, "axis-title")
    y_title_x = a.left - TICK - 3 - widest - 8
    svg.text(y_title_x, (a.top + a.bottom) / 2, ytitle, "axis-title", rotate=-90)


def frame(svg: Svg, axes: Axes) -> None:
    """The axes frame, drawn over the data."""
    svg.rect(axes.left, axes.top, axes.right - axes.left, axes.bottom - axes.top, "frame")


def legend(svg: Svg, x: float, y: float, entries: Sequence[tuple[str, str, str]]) -> None:
    """A boxed legend with its top-left corner at ``(x, y)``; entries are ``(label, css class,
    kind)`` where kind is ``line``, ``dash`` or ``swatch``."""
    width, height = legend_size(entries)
    svg.add('<g class="legend">')
    svg.rect(x, y, width, height, "legend-box", ' rx="3"')
    for k, (label, cls, kind) in enumerate(entries):
        cy = y + 8 + 16 * k + 8
        if kind == "swatch":
            svg.rect(x + 8, cy - 5, 20, 10, f"swatch {cls}")
        else:
            svg.line(x + 8, cy, x + 28, cy, f"{'diagonal' if kind == 'dash' else 'line'} {cls}")
        svg.text(x + 34, cy + 4, label, "legend-label", anchor="start")
    svg.add("</g>")


def legend_size(entries: Sequence[tuple[str, str, str]]) -> tuple[float, float]:
    """Width and height of :func:`legend`'s box."""
    widest = max((text_width(label, 12) for label, _, _ in entries), default=0.0)
    return 34 + widest + 8, 16 * len(entries) + 16
