"""Charts of a run's training and calibration, built as SVG from the data (:mod:`._svg`).

Training curves (accuracy, loss: raw values as dots, smoothed lines per phase), the learning
rate (log scale when it spans more than a decade) and the reliability diagram of a calibrated
model. Each chart is a :class:`~._svg.Chart`: inlined into ``report.html`` and also written as
``plots/<name>.svg``.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from graftwork.report._format import to_float
from graftwork.report._svg import (Axes, Chart, Svg, draw_axes, esc, fit, frame, legend,
                                   legend_size, log_ticks, nice_ticks, text_width, tick_labels)


# --------------------------------------------------------------------------- smoothing and phases

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


# --------------------------------------------------------------------------- epoch charts

@dataclass
class _Series:
    """One curve: raw values (drawn as dots when ``dots``) and, per phase segment, its start
    index and the values its line follows."""

    label: str
    cls: str
    raw: list[float]
    lines: list[tuple[int, list[float]]]
    dots: bool = True


def _finite_runs(points: Iterable[tuple[float, float]]) -> list[list[tuple[float, float]]]:
    """Consecutive points with a finite y, split where y is missing (lines break there)."""
    runs: list[list[tuple[float, float]]] = [[]]
    for x, y in points:
        if math.isfinite(y):
            runs[-1].append((x, y))
        elif runs[-1]:
            runs.append([])
    return [run for run in runs if run]


def _value_range(values: Sequence[float], log: bool = False) -> tuple[float, float]:
    """Data limits with 5% margins (in log space for ``log``); ``(0, 1)`` without data."""
    values = [v for v in values if math.isfinite(v) and (v > 0 or not log)]
    if not values:
        return 0.0, 1.0
    if log:
        lo, hi = _value_range([math.log10(v) for v in values])
        return 10.0 ** lo, 10.0 ** hi
    lo, hi = min(values), max(values)
    if hi - lo < 1e-12 * max(1.0, abs(hi)):
        spread = abs(hi) * 0.05 or 0.5
        return lo - spread, hi + spread
    margin = 0.05 * (hi - lo)
    return lo - margin, hi + margin


CURVE_SIZE = (520, 340)


def _phase_labels(svg: Svg, axes: Axes, segments: Sequence[tuple[str, int, int]]) -> None:
    """Phase names centred above their epochs (two staggered rows when they are crowded) and
    dashed lines at the boundaries."""
    for _, start, _ in segments[1:]:
        x = axes.x(start + 0.5)
        svg.line(x, axes.top, x, axes.bottom, "phase-boundary")
    spans = [axes.x(stop + 0.5) - axes.x(start + 0.5) for _, start, stop in segments]
    stagger = _staggered(segments, spans)
    for k, ((phase, start, stop), span) in enumerate(zip(segments, spans, strict=True)):
        room = span * (1.9 if stagger else 1.0) - 4
        name = phase or "?"
        y = axes.top - 5 - (14 if stagger and k % 2 else 0)
        svg.text(axes.x((start + stop + 1) / 2), y, fit(name, 11, max(room, 12)), "phase-label",
                 tooltip=name)


def _staggered(segments: Sequence[tuple[str, int, int]], spans: Sequence[float]) -> bool:
    """Whether some phase name is wider than its epochs (names then alternate in two rows)."""
    return any(text_width(phase or "?", 11) > span - 4
               for (phase, _, _), span in zip(segments, spans, strict=True))


def _legend_corner(axes: Axes, size: tuple[float, float],
                   points: Sequence[tuple[float, float]]) -> tuple[float, float]:
    """The inner corner of the plot where a legend of ``size`` covers the fewest points."""
    width, height = size
    inset = 8.0
    left, right = axes.left + inset, axes.right - inset - width
    top, bottom = axes.top + inset, axes.bottom - inset - height
    corners = [(right, top), (left, top), (left, bottom), (right, bottom)]

    def covered(corner: tuple[float, float]) -> int:
        x0, y0 = corner
        return sum(x0 - 4 <= x <= x0 + width + 4 and y0 - 4 <= y <= y0 + height + 4
                   for x, y in points)

    return min(corners, key=covered)


def _epoch_chart(history: Sequence[Mapping[str, Any]], series: Sequence[_Series], name: str,
                 title: str, desc: str, ytitle: str, log_y: bool = False) -> Chart:
    """A chart of per-epoch series on one global epoch axis, with phases marked."""
    width, height = CURVE_SIZE
    segments = phase_segments(history)
    n = len(history)
    values = [v for s in series for v in s.raw] + [v for s in series for _, line in s.lines
                                                    for v in line]
    ylim = _value_range(values, log_y)
    top = 30 + 16
    probe = Axes(60, top, width - 14, height - 50, (0.5, n + 0.5), ylim, log_y)
    if _staggered(segments, [probe.x(stop + 0.5) - probe.x(start + 0.5)
                             for _, start, stop in segments]):
        top += 14
    bottom = height - 50
    if log_y:
        yticks, ylabels = log_ticks(*ylim)
    else:
        yticks = nice_ticks(*ylim, max_ticks=max(3, int(bottom - top) // 38))
        ylabels = tick_labels(yticks)
    left = 12 + 16 + max((text_width(t, 11) for t in ylabels), default=10.0) + 8
    axes = Axes(left, top, width - 14, bottom, (0.5, n + 0.5), ylim, log_y)
    xticks = nice_ticks(1, n, max_ticks=max(2, int(axes.right - left) // 48), integer=True)
    xticks = xticks or [1.0]

    svg = Svg(width, height)
    draw_axes(svg, axes, xticks, tick_labels(xticks), yticks, ylabels,
              "epoch (all phases, in training order)", ytitle)
    _phase_labels(svg, axes, segments)
    points: list[tuple[float, float]] = []
    for s in series:
        svg.add(f'<g class="series {s.cls}" data-label="{esc(s.label)}">')
        if s.dots:
            for i, value in enumerate(s.raw):
                if math.isfinite(value) and (value > 0 or not log_y):
                    xy = (axes.x(i + 1), axes.y(value))
                    svg.circle(*xy, 2.6, f"raw {s.cls}")
                    points.append(xy)
        for start, line in s.lines:
            finite = ((start + i + 1, v) for i, v in enumerate(line) if v > 0 or not log_y)
            for run in _finite_runs(finite):
                pixels = [(axes.x(x), axes.y(y)) for x, y in run]
                if len(pixels) == 1:  # a one-epoch phase: a marker, not an invisible line
                    svg.circle(*pixels[0], 3.6, f"point {s.cls}")
                svg.path(pixels, f"line {s.cls}")
                points += _densify(pixels)
        svg.add("</g>")
    frame(svg, axes)
    entries = [(s.label, s.cls, "line") for s in series]
    if len(entries) > 1:
        legend(svg, *_legend_corner(axes, legend_size(entries), points), entries)
    svg.text((axes.left + axes.right) / 2, 20, title, "title")
    return Chart(name, title, desc, width, height, "".join(svg.parts))


def _densify(pixels: Sequence[tuple[float, float]], steps: int = 4) -> list[tuple[float, float]]:
    """Points along a polyline, so a legend is kept off the lines and not only their corners."""
    out = [(x0 + (x1 - x0) * t / steps, y0 + (y1 - y0) * t / steps)
           for (x0, y0), (x1, y1) in zip(pixels, pixels[1:]) for t in range(steps)]
    return out + list(pixels[-1:])


def curve_chart(history: Sequence[Mapping[str, Any]], metric: str,
                smoothing: float = 0.8) -> Chart:
    """``curves_<metric>``: train and validation ``metric`` per epoch, raw values as dots and
    lines smoothed per phase (a series that is all missing is left out)."""
    check_smoothing(smoothing)
    segments = phase_segments(history)
    series = []
    for key, label, cls in ((metric, "train", "train"), (f"val_{metric}", "validation", "val")):
        values = [to_float(row.get(key)) for row in history]
        if any(math.isfinite(v) for v in values):
            lines = [(start, smooth(values[start:stop], smoothing)) for _, start, stop in segments]
            series.append(_Series(label, cls, values, lines))
    title = f"{metric.capitalize()} (dots: raw, lines: smoothed {smoothing:g})"
    desc = (f"{metric} per epoch for {', '.join(s.label for s in series) or 'no series'} over "
            f"{len(history)} epochs in {len(segments)} phase(s): "
            f"{', '.join(p or '?' for p, _, _ in segments)}.")
    return _epoch_chart(history, series, f"curves_{metric}", title, desc, metric)


def lr_chart(history: Sequence[Mapping[str, Any]]) -> Chart | None:
    """``learning_rate``: the learning rate per epoch, on a log scale when it spans more than a
    decade; None when the history has no learning rate."""
    values = [to_float(row.get("lr")) for row in history]
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return None
    positive = [v for v in finite if v > 0]
    log_y = (len(positive) == len(finite)
             and math.log10(max(positive)) - math.log10(min(positive)) > 1 + 1e-9)
    series = [_Series("learning rate", "lr", values,
                      [(start, values[start:stop]) for _, start, stop in phase_segments(history)],
                      dots=False)]
    scale = "log scale" if log_y else "linear scale"
    desc = (f"Learning rate per epoch ({scale}), from {min(finite):g} to {max(finite):g}.")
    return _epoch_chart(history, series, "learning_rate", f"Learning rate ({scale})", desc,
                        "learning rate", log_y)


def curve_charts(history: Sequence[Mapping[str, Any]], smoothing: float = 0.8) -> list[Chart]:
    """Accuracy, loss and (when recorded) learning-rate charts; ``[]`` for an empty history."""
    check_smoothing(smoothing)
    if not history:
        return []
    charts = [curve_chart(history, metric, smoothing) for metric in ("accuracy", "loss")]
    lr = lr_chart(history)
    return charts + ([lr] if lr is not None else [])


def plot_curves(history: Sequence[Mapping[str, Any]], out_dir: str | Path,
                smoothing: float = 0.8) -> list[Path]:
    """Write ``curves_accuracy.svg``, ``curves_loss.svg`` and ``learning_rate.svg`` (when the
    history records it) into ``out_dir``; returns the files written (``[]`` for no history)."""
    return [chart.write(out_dir) for chart in curve_charts(history, smoothing)]


# --------------------------------------------------------------------------- reliability

_BIN_KEYS = ("lower", "upper", "confidence", "accuracy", "count")


def _bins(raw: Any) -> list[dict[str, float]]:
    """Usable reliability bins: finite edges and accuracy, and images in them."""
    bins = []
    for item in raw if isinstance(raw, list) else []:
        if not isinstance(item, Mapping):
            continue
        b = {key: to_float(item.get(key)) for key in _BIN_KEYS}
        if (all(math.isfinite(b[k]) for k in ("lower", "upper", "accuracy"))
                and b["upper"] > b["lower"] and not b["count"] <= 0):
            bins.append(b)
    return bins


def calibration_of(metrics: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """``metrics["calibration"]`` when it holds at least one usable bin, else None."""
    section = metrics.get("calibration")
    if not isinstance(section, Mapping) or not _bins(section.get("bins")):
        return None
    return section


RELIABILITY_SIZE = (420, 410)


def reliability_chart(calibration: Mapping[str, Any]) -> Chart | None:
    """``reliability``: accuracy per confidence bin as bars against the diagonal of perfect
    calibration, before and (when given) after temperature scaling; None without bins."""
    before, after = _bins(calibration.get("bins")), _bins(calibration.get("bins_after"))
    if not before:
        return None
    width, height = RELIABILITY_SIZE
    axes = Axes(62, 40, width - 20, height - 52, (0.0, 1.0), (0.0, 1.0))
    ticks = [k / 5 for k in range(6)]
    svg = Svg(width, height)
    draw_axes(svg, axes, ticks, tick_labels(ticks), ticks, tick_labels(ticks),
              "confidence (predicted probability)", "accuracy")
    temperature = to_float(calibration.get("temperature"))
    groups = [("before", before, to_float(calibration.get("ece_before")))]
    if after:
        groups.append(("after", after, to_float(calibration.get("ece_after"))))
    entries = []
    for k, (cls, bins, ece) in enumerate(groups):
        svg.add(f'<g class="bars {cls}">')
        for b in bins:
            span = (b["upper"] - b["lower"]) / len(groups)
            x0 = axes.x(b["lower"] + k * span) + (2.0 if k == 0 else 0.4)
            x1 = axes.x(b["lower"] + (k + 1) * span) - (2.0 if k == len(groups) - 1 else 0.4)
            y = axes.y(min(max(b["accuracy"], 0.0), 1.0))
            tip = (f"{cls}: confidence {b['lower']:.2f}-{b['upper']:.2f}, accuracy "
                   f"{b['accuracy']:.3f}, mean confidence {b['confidence']:.3f}, "
                   f"{b['count']:g} images")
            svg.rect(x0, y, x1 - x0, axes.bottom - y, f"bar {cls}", tooltip=tip)
        svg.add("</g>")
        label = "before" if cls == "before" else (
            f"after (T={temperature:.2f})" if math.isfinite(temperature) else "after")
        entries.append((label + (f", ECE {ece:.3f}" if math.isfinite(ece) else ""), cls,
                        "swatch"))
    svg.line(axes.x(0), axes.y(0), axes.x(1), axes.y(1), "diagonal")
    entries.append(("perfect calibration", "", "dash"))
    frame(svg, axes)
    legend(svg, axes.left + 8, axes.top + 8, entries)
    title = "Reliability diagram"
    svg.text((axes.left + axes.right) / 2, 22, title, "title")
    desc = ("Accuracy per confidence bin against the diagonal of perfect calibration: "
            + "; ".join(label for label, _, _ in entries[:-1]) + ".")
    return Chart("reliability", title, desc, width, height, "".join(svg.parts))
