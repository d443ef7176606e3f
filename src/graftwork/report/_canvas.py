"""A small raster canvas on Pillow for the report's plots: lines, markers, text, ticks, colours.

Pillow imports in a few milliseconds where matplotlib takes about half a second, which is most
of the cost of a report. Shapes are drawn at ``scale`` times the output size and reduced at the
end (supersampling gives smooth, antialiased lines and dots); text is drawn afterwards at the
output size, where FreeType renders it crisp. All coordinates are in output pixels.
"""
from __future__ import annotations

import functools
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageColor, ImageDraw, ImageFont

log = logging.getLogger(__name__)

Colour = str | tuple[int, ...]
Font = ImageFont.FreeTypeFont | ImageFont.ImageFont

FONT_FILE = "DejaVuSans.ttf"
_SYSTEM_FONT_DIRS = ("/usr/share/fonts/truetype/dejavu", "/usr/share/fonts/dejavu",
                     "/usr/share/fonts/TTF", "/usr/local/share/fonts", "/Library/Fonts",
                     "C:/Windows/Fonts")

#: matplotlib's "Blues" colour map (ColorBrewer, 9 classes), interpolated linearly.
BLUES = ("#f7fbff", "#deebf7", "#c6dbef", "#9ecae1", "#6baed6", "#4292c6", "#2171b5",
         "#08519c", "#08306b")

#: PNG compression: level 6 (Pillow's default) takes ~1.7x as long as 3 for ~8% smaller files.
PNG_OPTIONS = {"compress_level": 3}


# --------------------------------------------------------------------------- fonts

@functools.cache
def _font_file() -> str | None:
    """DejaVu Sans (matplotlib's default face) where the system has it."""
    folders = [Path(p) for p in _SYSTEM_FONT_DIRS]
    for folder in folders:
        if (folder / FONT_FILE).is_file():
            return str(folder / FONT_FILE)
    log.info("%s not found; plots use Pillow's default font", FONT_FILE)
    return None


@functools.cache
def font(size: int) -> Font:
    """A sans-serif font ``size`` pixels tall (cached)."""
    path = _font_file()
    if path is not None:
        try:
            return ImageFont.truetype(path, size)
        except OSError as exc:
            log.warning("cannot load %s: %s; using Pillow's default font", path, exc)
    return ImageFont.load_default(size)  # Pillow >= 10.1: a scalable face


def text_width(text: str, size: int) -> float:
    """Advance width of ``text`` in pixels."""
    return float(font(size).getlength(text))


def text_height(size: int) -> int:
    """Line height (ascent + descent) in pixels."""
    ascent, descent = _metrics(size)
    return ascent + descent


def _metrics(size: int) -> tuple[int, int]:
    """Ascent and descent of the font at ``size`` pixels."""
    selected = font(size)
    if isinstance(selected, ImageFont.FreeTypeFont):
        return selected.getmetrics()
    box = selected.getbbox("Ag")
    return int(box[3]), 0


def fit_text(text: str, size: int, max_width: float, min_size: int = 9) -> tuple[str, int]:
    """``text`` and a font size at most ``size`` at which it fits ``max_width`` pixels; when even
    ``min_size`` is too wide, the text is cut with an ellipsis."""
    while size > min_size and text_width(text, size) > max_width:
        size -= 1
    while len(text) > 1 and text_width(text, size) > max_width:
        text = text[:-2] + "\u2026"
    return text, size


# --------------------------------------------------------------------------- colours and ticks

def rgb(colour: Colour, alpha: float | None = None) -> tuple[int, ...]:
    """``colour`` as an RGB tuple, or RGBA when ``alpha`` (0 to 1) is given."""
    value = ImageColor.getrgb(colour) if isinstance(colour, str) else tuple(colour)
    if alpha is None:
        return value[:3]
    return (*value[:3], round(255 * alpha))


@functools.cache
def _blues_rgb() -> tuple[tuple[int, int, int], ...]:
    return tuple(ImageColor.getrgb(c)[:3] for c in BLUES)  # type: ignore[misc]


def blues(fraction: float) -> tuple[int, int, int]:
    """The "Blues" colour map at ``fraction`` (clipped to ``[0, 1]``)."""
    stops = _blues_rgb()
    t = min(max(fraction, 0.0), 1.0) * (len(stops) - 1) if math.isfinite(fraction) else 0.0
    i = min(int(t), len(stops) - 2)
    f = t - i
    (r0, g0, b0), (r1, g1, b1) = stops[i], stops[i + 1]
    return round(r0 + (r1 - r0) * f), round(g0 + (g1 - g0) * f), round(b0 + (b1 - b0) * f)


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


# --------------------------------------------------------------------------- the canvas

@dataclass
class _Text:
    """A queued text item, drawn after the shapes are reduced to output size."""

    x: float
    y: float
    text: str
    size: int
    colour: Colour
    ha: str
    va: str
    angle: float


_HA = {"left": "l", "center": "m", "right": "r"}
_VA = {"top": "a", "middle": "m", "bottom": "d", "baseline": "s"}


class Canvas:
    """A white image of ``width`` x ``height`` pixels; shapes are supersampled ``scale`` times."""

    def __init__(self, width: int, height: int, scale: int = 3) -> None:
        self.width, self.height, self.scale = int(width), int(height), int(scale)
        self._image = Image.new("RGB", (self.width * self.scale, self.height * self.scale),
                                "white")
        self._draw = ImageDraw.Draw(self._image, "RGBA")
        self._texts: list[_Text] = []
        self._pastes: list[tuple[Image.Image, tuple[int, int]]] = []

    def _px(self, value: float) -> float:
        return value * self.scale

    def _width(self, width: float) -> int:
        return max(1, round(width * self.scale))

    def line(self, points: Sequence[tuple[float, float]], colour: Colour, width: float = 1.0,
             dash: tuple[float, float] | None = None) -> None:
        """A polyline with round joins; ``dash`` is ``(on, off)`` in pixels."""
        if len(points) < 2:
            return
        fill = rgb(colour) if isinstance(colour, str) else colour
        if dash is None:
            scaled = [(self._px(x), self._px(y)) for x, y in points]
            self._draw.line(scaled, fill=fill, width=self._width(width), joint="curve")
            return
        for (x0, y0), (x1, y1) in zip(points, points[1:]):
            length = math.hypot(x1 - x0, y1 - y0)
            pos = 0.0
            while pos < length:
                end = min(pos + dash[0], length)
                a, b = pos / length, end / length
                self._draw.line([(self._px(x0 + (x1 - x0) * a), self._px(y0 + (y1 - y0) * a)),
                                 (self._px(x0 + (x1 - x0) * b), self._px(y0 + (y1 - y0) * b))],
                                fill=fill, width=self._width(width))
                pos = end + dash[1]

    def dot(self, x: float, y: float, diameter: float, colour: Colour) -> None:
        """A filled circle; an RGBA ``colour`` is blended."""
        r = diameter / 2
        self._draw.ellipse([self._px(x - r), self._px(y - r), self._px(x + r), self._px(y + r)],
                           fill=rgb(colour) if isinstance(colour, str) else colour)

    def rect(self, x0: float, y0: float, x1: float, y1: float, fill: Colour | None = None,
             outline: Colour | None = None, width: float = 1.0) -> None:
        """An axis-aligned rectangle; the outline is drawn inside its edges."""
        box = [round(self._px(x0)), round(self._px(y0)), round(self._px(x1)) - 1,
               round(self._px(y1)) - 1]
        self._draw.rectangle(box, fill=rgb(fill) if isinstance(fill, str) else fill,
                             outline=rgb(outline) if isinstance(outline, str) else outline,
                             width=self._width(width) if outline is not None else 0)

    def paste(self, image: Image.Image, x: int, y: int) -> None:
        """Paste ``image`` unscaled with its top-left corner at ``(x, y)`` (after the shapes)."""
        self._pastes.append((image, (int(x), int(y))))

    def text(self, x: float, y: float, text: str, size: int, colour: Colour = "black",
             ha: str = "left", va: str = "baseline", angle: float = 0.0) -> None:
        """Text anchored at ``(x, y)`` by ``ha``/``va``, rotated ``angle`` degrees
        counter-clockwise about that anchor."""
        self._texts.append(_Text(x, y, text, size, colour, ha, va, angle))

    def render(self) -> Image.Image:
        """The finished RGB image at output size."""
        image = self._image.reduce(self.scale) if self.scale > 1 else self._image.copy()
        for pasted, position in self._pastes:
            image.paste(pasted, position)
        draw = ImageDraw.Draw(image)
        for item in self._texts:
            if item.angle % 360 == 0:
                draw.text((item.x, item.y), item.text, fill=rgb(item.colour), font=font(item.size),
                          anchor=_HA[item.ha] + _VA[item.va])
            else:
                _rotated_text(image, item)
        return image

    def save(self, path: str | Path) -> Path:
        """Render and write a PNG file."""
        path = Path(path)
        self.render().save(path, format="PNG", **PNG_OPTIONS)
        return path


def _rotated_text(image: Image.Image, item: _Text) -> None:
    """Draw rotated text by rotating a supersampled mask about its anchor point."""
    s = 3
    selected = font(item.size * s)
    ascent, descent = _metrics(item.size * s)
    width = math.ceil(selected.getlength(item.text)) + 2 * s
    mask = Image.new("L", (width, ascent + descent + 2 * s), 0)
    ImageDraw.Draw(mask).text((s, s), item.text, fill=255, font=selected, anchor="la")
    ax = s + {"left": 0.0, "center": (width - 2 * s) / 2, "right": width - 2 * s}[item.ha]
    ay = s + {"top": 0.0, "middle": (ascent + descent) / 2, "bottom": float(ascent + descent),
              "baseline": float(ascent)}[item.va]
    theta = math.radians(item.angle)
    rotated = mask.rotate(item.angle, resample=Image.Resampling.BICUBIC, expand=True)
    dx, dy = ax - mask.width / 2, ay - mask.height / 2
    px = rotated.width / 2 + math.cos(theta) * dx + math.sin(theta) * dy
    py = rotated.height / 2 - math.sin(theta) * dx + math.cos(theta) * dy
    # shift so the anchor lands on a multiple of s, then reduce the mask to output size
    left, top = item.x * s - px, item.y * s - py
    ox, oy = math.floor(left / s), math.floor(top / s)
    shift_x, shift_y = round(left - ox * s), round(top - oy * s)
    canvas = Image.new("L", (rotated.width + 2 * s, rotated.height + 2 * s), 0)
    canvas.paste(rotated, (shift_x, shift_y))
    pad_w = -canvas.width % s
    pad_h = -canvas.height % s
    if pad_w or pad_h:
        padded = Image.new("L", (canvas.width + pad_w, canvas.height + pad_h), 0)
        padded.paste(canvas, (0, 0))
        canvas = padded
    image.paste(rgb(item.colour), (ox, oy), canvas.reduce(s))
