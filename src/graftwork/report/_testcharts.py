"""Charts of the test split: the confusion matrix as an SVG heat-map, and the top losses as an
HTML grid of small embedded thumbnails (:func:`graftwork.report.kit.thumbnail`)."""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from graftwork.report._format import descending, to_float
from graftwork.report._svg import BLUES, Chart, Svg, blues, esc, fit, num, text_width
from graftwork.report.kit import thumbnail


# --------------------------------------------------------------------------- confusion matrix

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


LABEL_MAX = 190.0  # widest class name on an axis, in px; longer ones are cut (full on hover)


def confusion_chart(labels: Sequence[str], preds: Sequence[str],
                    classes: Sequence[str]) -> Chart:
    """``confusion_matrix``: counts in cells coloured by the fraction of the true class, class
    names on both axes (x names turned when they do not fit a cell), and a colour bar."""
    matrix = confusion_matrix(labels, preds, classes)
    names = all_classes(labels, preds, classes)
    row_sums = matrix.sum(axis=1, keepdims=True)
    fraction = np.divide(matrix, row_sums, out=np.zeros(matrix.shape), where=row_sums > 0)
    n = max(len(names), 1)
    cell = float(max(16, min(56, round(560 / n))))
    font = max(8.0, min(12.0, cell * 0.5))
    shown = [fit(name, font, LABEL_MAX) for name in names]
    widest = max((text_width(s, font) for s in shown), default=0.0)
    turned = widest > cell - 6
    left = 14 + 18 + widest + 10
    top = 46.0
    grid = n * cell
    below = (widest * math.sqrt(0.5) + font if turned else font) + 14
    bar_left = left + grid + 22
    width = bar_left + 14 + 8 + 30 + 24
    height = top + grid + below + 30
    if turned:  # names turned 45 degrees reach down-left of their cell: keep the first inside
        left = max(left, max((text_width(s, font) * math.sqrt(0.5) + 6 - (i + 0.5) * cell
                              for i, s in enumerate(shown)), default=0.0))
        bar_left = left + grid + 22
        width = bar_left + 14 + 8 + 30 + 24

    svg = Svg(width, height)
    svg.add('<g class="cells">')
    for (i, j), count in np.ndenumerate(matrix):
        x, y = left + j * cell, top + i * cell
        tip = f"true {names[i]}, predicted {names[j]}: {count} ({fraction[i, j]:.0%} of the row)"
        svg.rect(x, y, cell, cell, "cell", f' fill="{blues(float(fraction[i, j]))}" '
                 f'data-row="{i}" data-col="{j}" data-count="{count}"', tooltip=tip)
    for (i, j), count in np.ndenumerate(matrix):
        if count:
            tone = " dark" if fraction[i, j] > 0.55 else ""
            svg.text(left + (j + 0.5) * cell, top + (i + 0.5) * cell + font * 0.36, str(count),
                     "count" + tone, extra=_size(font))
    svg.add("</g>")
    svg.rect(left, top, grid, grid, "frame")
    svg.add('<g class="tick names">')
    for k, (name, label) in enumerate(zip(names, shown, strict=True)):
        centre = (k + 0.5) * cell
        svg.text(left - 6, top + centre + font * 0.36, label, "tick row-label", anchor="end",
                 tooltip=name if label != name else None, extra=_size(font))
        if turned:
            x, y = left + centre + font * 0.3, top + grid + 8
            svg.text(x, y, label, "tick col-label", anchor="end", rotate=-45,
                     tooltip=name if label != name else None, extra=_size(font))
        else:
            svg.text(left + centre, top + grid + 6 + font, label, "tick col-label",
                     tooltip=name if label != name else None, extra=_size(font))
    svg.add("</g>")
    _colour_bar(svg, bar_left, top, max(grid, 120.0))
    svg.text(left + grid / 2, height - 10, "predicted class", "axis-title")
    svg.text(16, top + grid / 2, "true class", "axis-title", rotate=-90)
    svg.text(left + grid / 2, 24, f"Confusion matrix ({int(matrix.sum())} test images)", "title")
    desc = (f"{len(names)} classes; rows are true classes, columns predicted classes; "
            f"{int(np.trace(matrix))} of {int(matrix.sum())} images on the diagonal.")
    return Chart("confusion_matrix", "Confusion matrix", desc, width, height, "".join(svg.parts))


def _size(font: float) -> str:
    """A ``style`` attribute setting the font size (it overrides the stylesheet's)."""
    return f' style="font-size:{num(font)}px"'


def _colour_bar(svg: Svg, x: float, top: float, height: float) -> None:
    """A vertical colour bar from 0 (bottom) to 1 (top) with ticks and its title."""
    svg.add('<defs><linearGradient id="confusion-blues" x1="0" y1="1" x2="0" y2="0">'
            + "".join(f'<stop offset="{num(k / (len(BLUES) - 1))}" stop-color="{c}"/>'
                      for k, c in enumerate(BLUES))
            + "</linearGradient></defs>")
    svg.rect(x, top, 14, height, "colorbar", ' fill="url(#confusion-blues)"')
    svg.add('<g class="tick colorbar-ticks">')
    for k in range(6):
        y = top + height * (1 - k / 5)
        svg.line(x + 14, y, x + 18, y, "")
        svg.text(x + 21, y + 4, f"{k / 5:.1f}", anchor="start")
    svg.add("</g>")
    svg.text(x + 56, top + height / 2, "fraction of the true class", "axis-title", rotate=90)


def plot_confusion(labels: Sequence[str], preds: Sequence[str], classes: Sequence[str],
                   out: str | Path) -> Path:
    """Write the confusion matrix as ``confusion_matrix.svg`` under ``out``, or as ``out``
    itself when it ends in ``.svg``."""
    chart = confusion_chart(labels, preds, classes)
    out = Path(out)
    if out.suffix.lower() != ".svg":
        return chart.write(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(chart.document(), encoding="utf-8")
    return out


# --------------------------------------------------------------------------- top losses

def top_losses(rows: Sequence[Mapping[str, Any]], n: int = 16) -> list[Mapping[str, Any]]:
    """The ``n`` most confidently wrong predictions: wrong rows sorted by ``prob`` (the
    predicted class's probability) descending, ties broken by ``loss`` descending."""
    wrong = [row for row in rows if str(row.get("label")) != str(row.get("pred"))]
    ranked = sorted(wrong, key=lambda r: (descending(r.get("prob")), descending(r.get("loss"))))
    return ranked[: max(n, 0)]


def top_losses_grid(rows: Sequence[Mapping[str, Any]], n: int = 16,
                    base_dir: str | Path | None = None) -> str | None:
    """An HTML grid of the ``n`` most confidently wrong test images, each with its true label,
    predicted label and probability; images that cannot be read show a placeholder. None when
    no prediction is wrong."""
    worst = top_losses(rows, n)
    if not worst:
        return None
    base = Path(base_dir) if base_dir is not None else None
    tiles = []
    for row in worst:
        path, true, pred = (str(row.get(key) or "") for key in ("path", "label", "pred"))
        prob = to_float(row.get("prob"))
        p_text = f"{prob:.2f}" if math.isfinite(prob) else "?"
        uri = thumbnail(path, base)
        alt = f"true {true}, predicted {pred} (p={p_text})"
        picture = (f'<img src="{uri}" alt="{esc(alt)}" title="{esc(path)}">' if uri else
                   f'<div class="missing" role="img" aria-label="{esc(alt)}" '
                   f'title="{esc(path)}">image not available</div>')
        tiles.append(f'<figure class="loss">{picture}<figcaption>'
                     f'<span class="true" title="{esc(true)}">true: <b>{esc(true)}</b></span>'
                     f'<span class="pred" title="{esc(pred)}">predicted: <b>{esc(pred)}</b>'
                     f'</span><span class="prob">p = {p_text}</span></figcaption></figure>')
    return f'<div class="losses">{"".join(tiles)}</div>'
