"""Plots drawn from a run's files: training curves, the confusion matrix, top losses.

Figures are :class:`matplotlib.figure.Figure` objects drawn directly (no pyplot, no global
state) and saved as PNG files.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from PIL import Image

from graftwork.report._format import descending, to_float

log = logging.getLogger(__name__)

TRAIN_COLOUR = "#1f77b4"
VAL_COLOUR = "#ff7f0e"


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


def _plot_series(ax: Any, history: Sequence[Mapping[str, Any]], key: str, label: str,
                 colour: str, smoothing: float) -> bool:
    """Draw raw points and a per-phase smoothed line; False when the series is all missing."""
    values = [to_float(row.get(key)) for row in history]
    if not any(math.isfinite(v) for v in values):
        return False
    x = np.arange(1, len(values) + 1)
    ax.plot(x, values, linestyle="none", marker="o", markersize=3.5, alpha=0.35, color=colour)
    ax.plot([], [], color=colour, linewidth=2, label=label)  # legend entry: a plain line
    for _, start, stop in phase_segments(history):
        ax.plot(x[start:stop], smooth(values[start:stop], smoothing), color=colour,
                linewidth=2, marker="o" if stop - start == 1 else None, markersize=5)
    return True


def _mark_phases(ax: Any, history: Sequence[Mapping[str, Any]]) -> bool:
    """Dashed vertical lines between phases and each phase's name along the top.

    Names are staggered on two levels when a phase is too short for its label; returns
    whether they were.
    """
    segments = phase_segments(history)
    shortest = min(stop - start for _, start, stop in segments)
    stagger = len(segments) > 1 and shortest < 0.15 * len(history)
    for n, (phase, start, stop) in enumerate(segments):
        if n > 0:
            ax.axvline(start + 0.5, color="#555555", linestyle="--", linewidth=1)
        y = 1.01 + (0.065 if stagger and n % 2 else 0.0)
        ax.text((start + stop + 1) / 2, y, phase or "?", transform=ax.get_xaxis_transform(),
                ha="center", va="bottom", fontsize=9.5, color="#333333", parse_math=False)
    return stagger


def _curve_figure(history: Sequence[Mapping[str, Any]], metric: str, smoothing: float) -> Figure:
    fig = Figure(figsize=(6.4, 4.2), dpi=120, layout="constrained")
    ax = fig.add_subplot()
    drawn = [_plot_series(ax, history, metric, "train", TRAIN_COLOUR, smoothing),
             _plot_series(ax, history, f"val_{metric}", "validation", VAL_COLOUR, smoothing)]
    staggered = _mark_phases(ax, history)
    ax.set_xlim(0.5, len(history) + 0.5)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.tick_params(labelsize=10)
    ax.set_xlabel("epoch (all phases, in training order)", fontsize=11)
    ax.set_ylabel(metric, fontsize=11)
    ax.set_title(f"{metric} (dots: raw, lines: smoothed {smoothing:g})",
                 pad=34 if staggered else 20, fontsize=12)
    ax.grid(alpha=0.3)
    if any(drawn):
        ax.legend(loc="best", frameon=False, fontsize=10)
    return fig


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
    written = []
    for metric in ("accuracy", "loss"):
        path = out_dir / f"curves_{metric}.png"
        _curve_figure(history, metric, smoothing).savefig(path)
        written.append(path)
    return written


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
    n = len(names)
    row_sums = matrix.sum(axis=1, keepdims=True)
    fraction = np.divide(matrix, row_sums, out=np.zeros(matrix.shape), where=row_sums > 0)

    side = min(max(4.0, 0.42 * n + 2.6), 14.0)
    fig = Figure(figsize=(side + 1.0, side), dpi=110, layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(fraction, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, shrink=0.7, label="fraction of the true class")
    fontsize = 10 if n <= 12 else max(5, 10 - (n - 12) // 3)
    for (i, j), count in np.ndenumerate(matrix):
        if count:
            ax.text(j, i, str(count), ha="center", va="center", fontsize=fontsize,
                    color="white" if fraction[i, j] > 0.55 else "#222222")
    ticks = np.arange(n)
    ax.set_xticks(ticks, names, rotation=45, ha="right", rotation_mode="anchor",
                  fontsize=fontsize, parse_math=False)
    ax.set_yticks(ticks, names, fontsize=fontsize, parse_math=False)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(f"Confusion matrix ({int(matrix.sum())} test images)")
    path = _output_file(out, "confusion_matrix.png")
    fig.savefig(path)
    return path


def top_losses(rows: Sequence[Mapping[str, Any]], n: int = 16) -> list[Mapping[str, Any]]:
    """The ``n`` most confidently wrong predictions: wrong rows sorted by ``prob`` (the
    predicted class's probability) descending, ties broken by ``loss`` descending."""
    wrong = [row for row in rows if str(row.get("label")) != str(row.get("pred"))]
    ranked = sorted(wrong, key=lambda r: (descending(r.get("prob")), descending(r.get("loss"))))
    return ranked[: max(n, 0)]


def _thumbnail(path: str, base_dir: Path | None, size: int = 160) -> np.ndarray | None:
    """The image as an RGB array no larger than ``size``, or None when it cannot be read."""
    candidates = [Path(path)]
    if base_dir is not None and not Path(path).is_absolute():
        candidates.append(base_dir / path)
    for candidate in candidates:
        try:
            if not candidate.is_file():
                continue
            with Image.open(candidate) as opened:
                opened.draft("RGB", (size, size))  # JPEG: decode at reduced scale, much faster
                rgb = opened.convert("RGB")
            rgb.thumbnail((size, size))
            return np.asarray(rgb)
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
    cols = min(4, len(worst))
    nrows = math.ceil(len(worst) / cols)
    fig = Figure(figsize=(2.5 * cols, 2.75 * nrows), dpi=110, layout="constrained")
    base = Path(base_dir) if base_dir is not None else None
    for i, row in enumerate(worst):
        ax = fig.add_subplot(nrows, cols, i + 1)
        _draw_tile(ax, row, _thumbnail(str(row.get("path", "")), base))
    fig.suptitle("Most confidently wrong test images (true / predicted / p)", fontsize=11)
    path = _output_file(out, "top_losses.png")
    fig.savefig(path)
    return path


def _draw_tile(ax: Any, row: Mapping[str, Any], image: np.ndarray | None) -> None:
    if image is None:
        ax.imshow(np.full((8, 8, 3), 0.75))
        ax.text(3.5, 3.5, "image not\navailable", ha="center", va="center", fontsize=8,
                color="#333333")
    else:
        tiny = max(image.shape[:2]) < 64  # keep small images crisp instead of blurring them
        ax.imshow(image, interpolation="nearest" if tiny else "antialiased")
    prob = to_float(row.get("prob"))
    p_text = f"p={prob:.2f}" if math.isfinite(prob) else "p=?"
    ax.set_title(f"{_short(str(row.get('label')), 16)} / {_short(str(row.get('pred')), 16)}"
                 f" / {p_text}", fontsize=9, parse_math=False)
    ax.set_xticks([])
    ax.set_yticks([])
