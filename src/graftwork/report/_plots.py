"""Plots drawn from a run's files: training curves, the confusion matrix, top losses.

Plots are drawn with Pillow on a small supersampled canvas (:mod:`._canvas`) and saved as PNG
files: no matplotlib, whose import alone took longer than drawing every plot now does.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from graftwork.report._canvas import (Canvas, blues, fit_text, nice_ticks, rgb, text_height,
                                      text_width, tick_labels)
from graftwork.report._format import descending, to_float

log = logging.getLogger(__name__)

TRAIN_COLOUR = "#1f77b4"
VAL_COLOUR = "#ff7f0e"
GRID_COLOUR = "#e6e6e6"
PHASE_COLOUR = "#555555"
MUTED_TEXT = "#333333"

PAD = 10  # blank border around every plot, in pixels
TICK = 6  # tick mark length
FRAME = 1.3  # axes frame and tick width


# --------------------------------------------------------------------------- curves

def check_smoothing(factor: float) -> None:
    """Raise ValueError unless ``factor`` is a valid smoothing factor (in ``[0, 1)``)."""
    if not 0.0 <= factor < 1.0:
        raise ValueError(f"smoothing factor must be in [0, 1), got {factor!r}")


def smooth(values: Sequence[float | None], factor: float = 0.8) -> list[float]:
    """Exponential moving average: ``s_0 = x_0``, ``s_i = a * s_{i-1} + (1 - a) * x_i``.

    Missing values (None, NaN, inf) are skipped: the previous smoothed value is carried
    over, and the output is NaN until the first real value. ``factor`` (``a``) must lie in
    ``[0, 1)``; 0 returns the values unchanged.
    """
    check_smoothing(factor)
    out: list[float] = []
    state = math.nan
    for value in values:
        x = to_float(value)
        if math.isfinite(x):
            state = x if math.isnan(state) else factor * state + (1.0 - factor) * x
        out.append(state)
    return out


def phase_segments(history: Sequence[Mapping[str, Any]]) -> list[tuple[str, int, int]]:
    """Consecutive runs of the same phase as ``(phase, start, stop)`` row indices."""
    segments: list[tuple[str, int, int]] = []
    for i, row in enumerate(history):
        phase = str(row.get("phase") or "")
        if segments and segments[-1][0] == phase:
            segments[-1] = (phase, segments[-1][1], i + 1)
        else:
            segments.append((phase, i, i + 1))
    return segments


CURVE_SIZE = (768, 504)


@dataclass
class _Series:
    """One curve: raw values and, per phase segment, its start index and smoothed values."""

    label: str
    colour: str
    raw: list[float]
    smoothed: list[tuple[int, list[float]]]


def _curve_series(history: Sequence[Mapping[str, Any]], metric: str,
                  smoothing: float) -> list[_Series]:
    """Train and validation series of ``metric`` (a series that is all missing is left out)."""
    segments = phase_segments(history)
    series = []
    for key, label, colour in ((metric, "train", TRAIN_COLOUR),
                               (f"val_{metric}", "validation", VAL_COLOUR)):
        values = [to_float(row.get(key)) for row in history]
        if any(math.isfinite(v) for v in values):
            series.append(_Series(label, colour, values,
                                  [(start, smooth(values[start:stop], smoothing))
                                   for _, start, stop in segments]))
    return series


def _finite_runs(points: Iterable[tuple[float, float]]) -> list[list[tuple[float, float]]]:
    """Consecutive points with a finite y, split where y is missing (lines break there)."""
    runs: list[list[tuple[float, float]]] = [[]]
    for x, y in points:
        if math.isfinite(y):
            runs[-1].append((x, y))
        elif runs[-1]:
            runs.append([])
    return [run for run in runs if run]


@dataclass
class _Axes:
    """The plot rectangle in pixels and the data limits it shows."""

    left: float
    top: float
    right: float
    bottom: float
    xlim: tuple[float, float]
    ylim: tuple[float, float]

    def x(self, value: float) -> float:
        lo, hi = self.xlim
        return self.left + (value - lo) / (hi - lo) * (self.right - self.left)

    def y(self, value: float) -> float:
        lo, hi = self.ylim
        return self.bottom - (value - lo) / (hi - lo) * (self.bottom - self.top)


def _value_range(series: Sequence[_Series]) -> tuple[float, float]:
    """Data limits with matplotlib's 5% margins; ``(0, 1)`` without data."""
    values = [v for s in series for v in s.raw if math.isfinite(v)]
    values += [v for s in series for _, line in s.smoothed for v in line if math.isfinite(v)]
    if not values:
        return 0.0, 1.0
    lo, hi = min(values), max(values)
    if hi - lo < 1e-12 * max(1.0, abs(hi)):
        spread = abs(hi) * 0.05 or 0.5
        return lo - spread, hi + spread
    margin = 0.05 * (hi - lo)
    return lo - margin, hi + margin


def _legend(canvas: Canvas, axes: _Axes, series: Sequence[_Series], size: int) -> None:
    """A frameless legend (a line and a name per series) in the corner with least data."""
    if not series:
        return
    handle, gap, row = 34.0, 10.0, text_height(size) * 1.35
    width = handle + gap + max(text_width(s.label, size) for s in series)
    height = row * len(series)
    inset = 10.0
    left, right = axes.left + inset, axes.right - inset - width
    top, bottom = axes.top + inset, axes.bottom - inset - height
    mid_x, mid_y = (axes.left + axes.right - width) / 2, (axes.top + axes.bottom - height) / 2
    # matplotlib's order for loc="best"
    corners = [(right, top), (left, top), (left, bottom), (right, bottom), (right, mid_y),
               (left, mid_y), (mid_x, bottom), (mid_x, top), (mid_x, mid_y)]
    points = [(axes.x(i + 1), axes.y(v)) for s in series for i, v in enumerate(s.raw)
              if math.isfinite(v)]
    for s in series:
        for start, line in s.smoothed:
            for run in _finite_runs((start + i + 1, v) for i, v in enumerate(line)):
                pixels = [(axes.x(x), axes.y(y)) for x, y in run]
                for (x0, y0), (x1, y1) in zip(pixels, pixels[1:]):
                    points += [(x0 + (x1 - x0) * t / 8, y0 + (y1 - y0) * t / 8) for t in range(8)]
                points += pixels[-1:]

    def overlap(corner: tuple[float, float]) -> int:
        x0, y0 = corner
        return sum(x0 - 4 <= x <= x0 + width + 4 and y0 - 4 <= y <= y0 + height + 4
                   for x, y in points)

    x0, y0 = min(corners, key=overlap)
    for n, s in enumerate(series):
        y = y0 + row * (n + 0.5)
        canvas.line([(x0, y), (x0 + handle, y)], s.colour, width=3.3)
        canvas.text(x0 + handle + gap, y, s.label, size, ha="left", va="middle")


CURVE_FONTS = {"title": 20, "label": 18, "tick": 16, "phase": 16}


def _curve_axes(n: int, series: Sequence[_Series], stagger: bool) -> tuple[_Axes, list[float],
                                                                           list[float]]:
    """The plot rectangle for ``n`` epochs, its limits, and the x and y tick values."""
    width, height = CURVE_SIZE
    fonts = CURVE_FONTS
    ylim = _value_range(series)
    levels = 2 if stagger else 1
    top = PAD + text_height(fonts["title"]) + 8 + levels * (text_height(fonts["phase"]) + 2)
    bottom = height - PAD - text_height(fonts["label"]) - 6 - text_height(fonts["tick"]) - 3 - TICK
    yticks = nice_ticks(*ylim, max_ticks=max(3, int(bottom - top) // 55))
    widest = max((text_width(t, fonts["tick"]) for t in tick_labels(yticks)), default=0.0)
    left = PAD + text_height(fonts["label"]) + 8 + widest + 5 + TICK
    right = width - PAD - 8
    xticks = nice_ticks(1, n, max_ticks=max(2, int(right - left) // 60), integer=True) or [1.0]
    return _Axes(left, top, right, bottom, (0.5, n + 0.5), ylim), xticks, yticks


def _draw_curves(history: Sequence[Mapping[str, Any]], metric: str, smoothing: float) -> Canvas:
    """One metric's plot: raw dots, smoothed lines per phase, phase boundaries and names."""
    fonts = CURVE_FONTS
    segments = phase_segments(history)
    shortest = min(stop - start for _, start, stop in segments)
    stagger = len(segments) > 1 and shortest < 0.15 * len(history)
    series = _curve_series(history, metric, smoothing)
    axes, xticks, yticks = _curve_axes(len(history), series, stagger)
    left, top, right, bottom = axes.left, axes.top, axes.right, axes.bottom

    canvas = Canvas(*CURVE_SIZE)
    for value in xticks:
        canvas.line([(axes.x(value), top), (axes.x(value), bottom)], GRID_COLOUR, 1.3)
    for value in yticks:
        canvas.line([(left, axes.y(value)), (right, axes.y(value))], GRID_COLOUR, 1.3)
    for _, start, _ in segments[1:]:
        x = axes.x(start + 0.5)
        canvas.line([(x, top), (x, bottom)], PHASE_COLOUR, 1.6, dash=(6.0, 3.0))
    for s in series:
        for i, value in enumerate(s.raw):
            if math.isfinite(value):
                canvas.dot(axes.x(i + 1), axes.y(value), 7.0, rgb(s.colour, 0.4))
        for start, line in s.smoothed:
            for run in _finite_runs((start + i + 1, v) for i, v in enumerate(line)):
                pixels = [(axes.x(x), axes.y(y)) for x, y in run]
                if len(line) == 1:  # a one-epoch phase: a marker, not an invisible line
                    canvas.dot(*pixels[0], 8.5, s.colour)
                canvas.line(pixels, s.colour, 3.3)
    _frame(canvas, left, top, right, bottom)

    for value, label in zip(xticks, tick_labels(xticks), strict=True):
        canvas.line([(axes.x(value), bottom), (axes.x(value), bottom + TICK)], "black", FRAME)
        canvas.text(axes.x(value), bottom + TICK + 3, label, fonts["tick"], ha="center", va="top")
    for value, label in zip(yticks, tick_labels(yticks), strict=True):
        canvas.line([(left - TICK, axes.y(value)), (left, axes.y(value))], "black", FRAME)
        canvas.text(left - TICK - 4, axes.y(value), label, fonts["tick"], ha="right",
                    va="middle")
    for level, (phase, start, stop) in enumerate(segments):
        y = top - 3 - (text_height(fonts["phase"]) + 2 if stagger and level % 2 else 0)
        canvas.text(axes.x((start + stop + 1) / 2), y, phase or "?", fonts["phase"], MUTED_TEXT,
                    ha="center", va="bottom")
    _legend(canvas, axes, series, fonts["tick"])
    canvas.text((left + right) / 2, PAD, f"{metric} (dots: raw, lines: smoothed {smoothing:g})",
                fonts["title"], ha="center", va="top")
    canvas.text((left + right) / 2, CURVE_SIZE[1] - PAD, "epoch (all phases, in training order)",
                fonts["label"], ha="center", va="bottom")
    canvas.text(PAD, (top + bottom) / 2, metric, fonts["label"], ha="center", va="top", angle=90)
    return canvas


def _frame(canvas: Canvas, left: float, top: float, right: float, bottom: float) -> None:
    """The black axes frame, centred on the plot rectangle's edges."""
    half = FRAME / 2
    canvas.rect(left - half, top - half, right + half, bottom + half, outline="black",
                width=FRAME)


def plot_curves(history: Sequence[Mapping[str, Any]], out_dir: str | Path,
                smoothing: float = 0.8) -> list[Path]:
    """Write ``curves_accuracy.png`` and ``curves_loss.png`` (train vs validation).

    All phases share one global epoch axis; dashed lines and labels mark phase boundaries.
    Returns the files written (``[]`` for an empty history).
    """
    check_smoothing(smoothing)
    if not history:
        return []
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return [_draw_curves(history, metric, smoothing).save(out_dir / f"curves_{metric}.png")
            for metric in ("accuracy", "loss")]


# --------------------------------------------------------------------------- confusion matrix and top losses

def all_classes(labels: Iterable[str], preds: Iterable[str], classes: Sequence[str]) -> list[str]:
    """``classes`` followed by any label or prediction it does not list (in order seen)."""
    ordered = list(dict.fromkeys(str(c) for c in classes))
    known = set(ordered)
    for name in (*labels, *preds):
        if name not in known:
            known.add(name)
            ordered.append(name)
    return ordered


def confusion_matrix(labels: Sequence[str], preds: Sequence[str],
                     classes: Sequence[str]) -> np.ndarray:
    """Counts with true classes as rows and predicted classes as columns, in ``classes``
    order (names missing from ``classes`` are appended)."""
    if len(labels) != len(preds):
        raise ValueError(f"{len(labels)} labels but {len(preds)} predictions")
    names = all_classes(labels, preds, classes)
    index = {name: i for i, name in enumerate(names)}
    matrix = np.zeros((len(names), len(names)), dtype=np.int64)
    for true, pred in zip(labels, preds, strict=True):
        matrix[index[true], index[pred]] += 1
    return matrix


def _output_file(out: str | Path, default_name: str) -> Path:
    """``out`` itself when it names a ``.png`` file, else ``out / default_name``."""
    out = Path(out)
    path = out if out.suffix.lower() == ".png" else out / default_name
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _short(name: str, limit: int = 22) -> str:
    return name if len(name) <= limit else name[: limit - 1] + "\u2026"


def plot_confusion(labels: Sequence[str], preds: Sequence[str], classes: Sequence[str],
                   out: str | Path) -> Path:
    """Write the confusion matrix (``confusion_matrix.png`` under ``out``, or ``out`` itself
    when it ends in ``.png``): counts in cells, colour = fraction of the true class."""
    matrix = confusion_matrix(labels, preds, classes)
    names = [_short(n) for n in all_classes(labels, preds, classes)]
    row_sums = matrix.sum(axis=1, keepdims=True)
    fraction = np.divide(matrix, row_sums, out=np.zeros(matrix.shape), where=row_sums > 0)
    path = _output_file(out, "confusion_matrix.png")
    return _draw_confusion(matrix, fraction, names).save(path)


def _draw_confusion(matrix: np.ndarray, fraction: np.ndarray, names: Sequence[str]) -> Canvas:
    """Cells coloured by ``fraction`` with counts, class names on both axes, a colour bar;
    cells shrink and the image grows with the number of classes."""
    n = len(names)
    cell = max(14, min(100, round(600 / max(n, 1))))
    count_size = min(15, max(6, round(cell * 0.48)))
    tick_size = min(15, max(7, round(cell * 0.55)))
    title_size, label_size = 18, 15
    grid = n * cell
    diagonal = math.sqrt(0.5)  # x labels are turned 45 degrees
    tick_h = text_height(tick_size)
    widths = [text_width(name, tick_size) for name in names]

    left = PAD + text_height(label_size) + 8 + max(widths, default=0) + 5 + TICK
    # rotated x labels end at their tick and reach down-left: keep the first ones in the image
    left = max([left, *(PAD + diagonal * (w + tick_h / 2) - (i + 0.5) * cell
                        for i, w in enumerate(widths))])
    top = PAD + text_height(title_size) + 10
    below = TICK + 2 + diagonal * max((w + tick_h / 2 for w in widths), default=0) + 6
    height = round(top + grid + below + text_height(label_size) + PAD)

    bar_gap = min(40.0, max(16.0, 0.05 * grid))
    bar_h = max(0.7 * grid, 120.0)
    bar_w = max(10.0, bar_h / 20)
    bar_left, bar_top = left + grid + bar_gap, top + (grid - bar_h) / 2
    bar_ticks = [i / 5 for i in range(6)]
    bar_labels = tick_labels(bar_ticks)
    bar_text_right = bar_left + bar_w + TICK + 4 + max(text_width(t, label_size)
                                                        for t in bar_labels)
    width = round(bar_text_right + 10 + text_height(label_size) + PAD)

    canvas = Canvas(width, height, scale=2)
    for (i, j), count in np.ndenumerate(matrix):
        x, y = left + j * cell, top + i * cell
        canvas.rect(x, y, x + cell, y + cell, fill=blues(float(fraction[i, j])))
        if count:
            canvas.text(x + cell / 2, y + cell / 2, str(count), count_size,
                        "white" if fraction[i, j] > 0.55 else "#222222", ha="center", va="middle")
    _frame(canvas, left, top, left + grid, top + grid)
    for k, name in enumerate(names):
        centre = k * cell + cell / 2
        canvas.line([(left + centre, top + grid), (left + centre, top + grid + TICK)], "black",
                    FRAME)
        canvas.text(left + centre, top + grid + TICK + 2 + diagonal * tick_h / 2, name,
                    tick_size, ha="right", va="middle", angle=45)
        canvas.line([(left - TICK, top + centre), (left, top + centre)], "black", FRAME)
        canvas.text(left - TICK - 4, top + centre, name, tick_size, ha="right", va="middle")

    steps = max(1, round(bar_h))
    for k in range(steps):  # the colour bar, dark (1.0) at the top
        y0 = bar_top + bar_h * k / steps
        canvas.rect(bar_left, y0, bar_left + bar_w, y0 + bar_h / steps + 0.5,
                    fill=blues(1.0 - (k + 0.5) / steps))
    _frame(canvas, bar_left, bar_top, bar_left + bar_w, bar_top + bar_h)
    for value, label in zip(bar_ticks, bar_labels, strict=True):
        y = bar_top + bar_h * (1.0 - value)
        canvas.line([(bar_left + bar_w, y), (bar_left + bar_w + TICK, y)], "black", FRAME)
        canvas.text(bar_left + bar_w + TICK + 4, y, label, label_size, ha="left", va="middle")
    canvas.text(bar_text_right + 10, bar_top + bar_h / 2, "fraction of the true class",
                label_size, ha="center", va="top", angle=90)

    centre_x, centre_y = left + grid / 2, top + grid / 2
    canvas.text(centre_x, PAD, f"Confusion matrix ({int(matrix.sum())} test images)",
                title_size, ha="center", va="top")
    canvas.text(centre_x, height - PAD, "predicted class", label_size, ha="center",
                va="bottom")
    canvas.text(PAD, centre_y, "true class", label_size, ha="center", va="top", angle=90)
    return canvas


def top_losses(rows: Sequence[Mapping[str, Any]], n: int = 16) -> list[Mapping[str, Any]]:
    """The ``n`` most confidently wrong predictions: wrong rows sorted by ``prob`` (the
    predicted class's probability) descending, ties broken by ``loss`` descending."""
    wrong = [row for row in rows if str(row.get("label")) != str(row.get("pred"))]
    ranked = sorted(wrong, key=lambda r: (descending(r.get("prob")), descending(r.get("loss"))))
    return ranked[: max(n, 0)]



TILE_WIDTH = 270  # one top-losses tile, in pixels
TILE_IMAGE = 240  # the image box inside it


def _thumbnail(path: str, base_dir: Path | None, size: int = TILE_IMAGE) -> Image.Image | None:
    """The image scaled to fit ``size`` x ``size`` pixels (RGB), or None when it cannot be read.

    JPEGs are decoded at a reduced scale where that still covers ``size``; images smaller than
    64 pixels are enlarged without smoothing so they stay crisp.
    """
    candidates = [Path(path)]
    if base_dir is not None and not Path(path).is_absolute():
        candidates.append(base_dir / path)
    for candidate in candidates:
        try:
            if not candidate.is_file():
                continue
            with Image.open(candidate) as opened:
                opened.draft("RGB", (size, size))  # JPEG: decode at reduced scale, much faster
                rgb_image = opened.convert("RGB")
            width, height = rgb_image.size
            scale = size / max(width, height)
            target = (max(1, round(width * scale)), max(1, round(height * scale)))
            tiny = max(width, height) < 64
            return rgb_image.resize(target, Image.Resampling.NEAREST if tiny
                                    else Image.Resampling.BICUBIC)
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            log.warning("cannot show %s in top losses: %s", candidate, exc)
            return None
    log.warning("cannot show %s in top losses: file not found", path)
    return None


def plot_top_losses(rows: Sequence[Mapping[str, Any]], out: str | Path, n: int = 16,
                    base_dir: str | Path | None = None) -> Path | None:
    """Write a grid of the ``n`` most confidently wrong test images (``top_losses.png``
    under ``out``, or ``out`` itself when it ends in ``.png``).

    Each tile is titled ``true / pred / p=0.93``; images that cannot be opened are shown as a
    grey placeholder. Relative paths are tried against the working directory, then against
    ``base_dir``. Returns None (and writes nothing) when no prediction is wrong.
    """
    worst = top_losses(rows, n)
    if not worst:
        return None
    base = Path(base_dir) if base_dir is not None else None
    cols = min(4, len(worst))
    nrows = math.ceil(len(worst) / cols)
    title_size, caption_size = 17, 14
    caption_h = text_height(caption_size) + 6
    tile_h = caption_h + TILE_IMAGE + 14
    top = PAD + text_height(title_size) + 10
    canvas = Canvas(cols * TILE_WIDTH + 2 * PAD, round(top + nrows * tile_h + PAD - 8), scale=1)
    canvas.text(canvas.width / 2, PAD, "Most confidently wrong test images (true / predicted / p)",
                title_size, ha="center", va="top")
    for i, row in enumerate(worst):
        x = PAD + (i % cols) * TILE_WIDTH
        y = top + (i // cols) * tile_h
        caption, size = fit_text(_caption(row), caption_size, TILE_WIDTH - 8)
        canvas.text(x + TILE_WIDTH / 2, y + caption_h - 4, caption, size, ha="center",
                    va="bottom")
        _draw_tile_image(canvas, _thumbnail(str(row.get("path", "")), base),
                         x + (TILE_WIDTH - TILE_IMAGE) // 2, round(y + caption_h))
    return canvas.save(_output_file(out, "top_losses.png"))


def _caption(row: Mapping[str, Any]) -> str:
    """``true / pred / p=0.93`` for a top-losses tile."""
    prob = to_float(row.get("prob"))
    p_text = f"p={prob:.2f}" if math.isfinite(prob) else "p=?"
    return f"{_short(str(row.get('label')), 16)} / {_short(str(row.get('pred')), 16)} / {p_text}"


def _draw_tile_image(canvas: Canvas, image: Image.Image | None, x: int, y: int) -> None:
    """The image centred in its box with a thin frame, or a grey placeholder."""
    if image is None:
        canvas.rect(x, y, x + TILE_IMAGE, y + TILE_IMAGE, fill="#bfbfbf", outline="black",
                    width=1)
        for k, line in enumerate(("image not", "available")):
            canvas.text(x + TILE_IMAGE / 2, y + TILE_IMAGE / 2 + (k - 0.5) * 15, line, 12,
                        MUTED_TEXT, ha="center", va="middle")
        return
    left = x + (TILE_IMAGE - image.width) // 2
    top = y + (TILE_IMAGE - image.height) // 2
    canvas.rect(left - 1, top - 1, left + image.width + 1, top + image.height + 1,
                outline="black", width=1)
    canvas.paste(image, left, top)
