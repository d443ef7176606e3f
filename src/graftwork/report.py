"""Run reports: training curves, test evaluation, a self-contained HTML page, run listings.

Everything here reads the files a training run leaves in its directory (``config.json``,
``metrics.json``, ``history.csv``, ``predictions_test.csv``, ``summary.txt``); it never imports
torch, so reporting, listing and comparing runs stay fast and work on any machine.

Plots are drawn on :class:`matplotlib.figure.Figure` objects directly (no pyplot, no global
state) and embedded into ``report.html`` as base64 data URIs, so the page can be moved or
mailed on its own: no JavaScript, no external URLs.
"""
from __future__ import annotations

import base64
import csv
import html
import json
import logging
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from PIL import Image

from graftwork.errors import RunDirError

__all__ = [
    "Run", "load_run", "read_config", "read_metrics", "read_history", "read_predictions",
    "smooth", "plot_curves",
    "confusion_matrix", "per_class_metrics", "plot_confusion", "top_losses", "plot_top_losses",
    "Evaluation", "evaluate", "build_report", "render_html",
    "list_runs", "format_table", "compare_runs", "format_compare",
]

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.json"
HISTORY_FILE = "history.csv"
PREDICTIONS_FILE = "predictions_test.csv"
SUMMARY_FILE = "summary.txt"
REPORT_FILE = "report.html"
PLOTS_DIR = "plots"
PLOT_FILES = ("curves_accuracy.png", "curves_loss.png", "confusion_matrix.png", "top_losses.png")

TRAIN_COLOUR = "#1f77b4"
VAL_COLOUR = "#ff7f0e"


# --------------------------------------------------------------------------- reading a run

@dataclass
class Run:
    """Everything a run directory holds; optional files are empty when absent."""

    path: Path
    config: dict[str, Any]
    metrics: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    predictions: list[dict[str, Any]] = field(default_factory=list)
    summary: str = ""

    @property
    def name(self) -> str:
        """The run directory's name."""
        return self.path.name

    @property
    def classes(self) -> list[str]:
        """Class names in training order (``config["classes"]``)."""
        classes = self.config.get("classes")
        return [str(c) for c in classes] if isinstance(classes, list) else []


def _read_json(path: Path) -> Any:
    with path.open(encoding="utf-8") as fh:
        return json.load(fh)


def read_config(run_dir: str | Path) -> dict[str, Any]:
    """Read ``config.json``; raise :class:`RunDirError` when the folder is not a run."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunDirError(f"run directory {run_dir} does not exist",
                          "pass the folder that `graft train` wrote (see `graft runs`)")
    path = run_dir / CONFIG_FILE
    if not path.is_file():
        raise RunDirError(f"{run_dir} is not a run directory: it has no {CONFIG_FILE}",
                          "pass the folder that `graft train` wrote (see `graft runs`)")
    try:
        config = _read_json(path)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RunDirError(f"cannot read {path}: {exc}",
                          "the run is damaged; train it again") from exc
    if not isinstance(config, dict):
        raise RunDirError(f"{path} does not hold a JSON object",
                          "the run is damaged; train it again")
    return config


def read_metrics(run_dir: str | Path) -> dict[str, Any]:
    """Read ``metrics.json``; ``{}`` when it is missing or unreadable (with a warning)."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return {}
    try:
        metrics = _read_json(path)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        log.warning("ignoring unreadable %s: %s", path, exc)
        return {}
    return metrics if isinstance(metrics, dict) else {}


def _section_of(mapping: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    """``mapping[key]`` when it is a dict, else ``{}`` (optional JSON sections)."""
    value = mapping.get(key)
    return value if isinstance(value, Mapping) else {}


def _to_float(value: Any) -> float:
    """``float(value)``, or NaN for None, empty strings and anything unparsable."""
    if value is None or value == "":
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _descending(value: Any) -> float:
    """Sort key putting large numbers first and missing ones (None, NaN) last."""
    number = _to_float(value)
    return -number if math.isfinite(number) else math.inf


def _to_int(value: Any) -> int | None:
    number = _to_float(value)
    return int(number) if math.isfinite(number) else None


def _read_csv(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    try:
        with path.open(encoding="utf-8", newline="") as fh:
            return list(csv.DictReader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        log.warning("ignoring unreadable %s: %s", path, exc)
        return []


def read_history(run_dir: str | Path) -> list[dict[str, Any]]:
    """Read ``history.csv`` as one dict per epoch; numbers are floats (NaN when empty).

    Keys: ``phase`` (str), ``epoch`` (int or None), ``loss``, ``accuracy``, ``val_loss``,
    ``val_accuracy``, ``lr``. ``[]`` when the file is missing.
    """
    rows = []
    for raw in _read_csv(Path(run_dir) / HISTORY_FILE):
        row: dict[str, Any] = {"phase": (raw.get("phase") or "").strip(),
                               "epoch": _to_int(raw.get("epoch"))}
        for key in ("loss", "accuracy", "val_loss", "val_accuracy", "lr"):
            row[key] = _to_float(raw.get(key))
        rows.append(row)
    return rows


def read_predictions(run_dir: str | Path) -> list[dict[str, Any]]:
    """Read ``predictions_test.csv``: ``path``, ``label``, ``pred`` (str), ``prob``,
    ``prob_true``, ``loss`` (float, NaN when unparsable). ``[]`` when the file is missing."""
    rows = []
    for raw in _read_csv(Path(run_dir) / PREDICTIONS_FILE):
        row: dict[str, Any] = {key: raw.get(key) or "" for key in ("path", "label", "pred")}
        for key in ("prob", "prob_true", "loss"):
            row[key] = _to_float(raw.get(key))
        rows.append(row)
    return rows


def _read_summary(run_dir: Path) -> str:
    path = run_dir / SUMMARY_FILE
    if not path.is_file():
        return ""
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        log.warning("ignoring unreadable %s: %s", path, exc)
        return ""


def load_run(run_dir: str | Path) -> Run:
    """Read every file of a run directory (config required, the rest optional)."""
    run_dir = Path(run_dir)
    config = read_config(run_dir)
    if "classes" not in config:
        log.warning("%s has no 'classes'; class names are taken from the predictions",
                    run_dir / CONFIG_FILE)
    return Run(path=run_dir, config=config, metrics=read_metrics(run_dir),
               history=read_history(run_dir), predictions=read_predictions(run_dir),
               summary=_read_summary(run_dir))


# --------------------------------------------------------------------------- curves

def smooth(values: Sequence[float | None], factor: float = 0.8) -> list[float]:
    """Exponential moving average: ``s_0 = x_0``, ``s_i = a * s_{i-1} + (1 - a) * x_i``.

    Missing values (None, NaN, inf) are skipped: the previous smoothed value is carried
    over, and the output is NaN until the first real value. ``factor`` (``a``) must lie in
    ``[0, 1)``; 0 returns the values unchanged.
    """
    if not 0.0 <= factor < 1.0:
        raise ValueError(f"smoothing factor must be in [0, 1), got {factor!r}")
    out: list[float] = []
    state = math.nan
    for value in values:
        x = _to_float(value)
        if math.isfinite(x):
            state = x if math.isnan(state) else factor * state + (1.0 - factor) * x
        out.append(state)
    return out


def _phase_segments(history: Sequence[Mapping[str, Any]]) -> list[tuple[str, int, int]]:
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
    values = [_to_float(row.get(key)) for row in history]
    if not any(math.isfinite(v) for v in values):
        return False
    x = np.arange(1, len(values) + 1)
    ax.plot(x, values, linestyle="none", marker="o", markersize=3.5, alpha=0.35, color=colour)
    ax.plot([], [], color=colour, linewidth=2, label=label)  # legend entry: a plain line
    for _, start, stop in _phase_segments(history):
        ax.plot(x[start:stop], smooth(values[start:stop], smoothing), color=colour,
                linewidth=2, marker="o" if stop - start == 1 else None, markersize=5)
    return True


def _mark_phases(ax: Any, history: Sequence[Mapping[str, Any]]) -> bool:
    """Dashed vertical lines between phases and each phase's name along the top.

    Names are staggered on two levels when a phase is too short for its label; returns
    whether they were.
    """
    segments = _phase_segments(history)
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
    if not 0.0 <= smoothing < 1.0:
        raise ValueError(f"smoothing factor must be in [0, 1), got {smoothing!r}")
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


# --------------------------------------------------------------------------- test evaluation

def _all_classes(labels: Iterable[str], preds: Iterable[str], classes: Sequence[str]) -> list[str]:
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
    names = _all_classes(labels, preds, classes)
    index = {name: i for i, name in enumerate(names)}
    matrix = np.zeros((len(names), len(names)), dtype=np.int64)
    for true, pred in zip(labels, preds, strict=True):
        matrix[index[true], index[pred]] += 1
    return matrix


def _ratio(num: float, den: float) -> float:
    return float(num) / float(den) if den else 0.0


def per_class_metrics(labels: Sequence[str], preds: Sequence[str],
                      classes: Sequence[str]) -> dict[str, Any]:
    """Precision, recall, F1 and support per class, plus accuracy and macro averages.

    Returns ``{"classes": {name: {"precision", "recall", "f1", "support"}}, "accuracy",
    "macro": {"precision", "recall", "f1"}, "support"}``. Divisions by zero give 0.0; the
    macro average is over every class (as scikit-learn does), including unseen ones.
    """
    matrix = confusion_matrix(labels, preds, classes)
    names = _all_classes(labels, preds, classes)
    true_pos = np.diag(matrix)
    per_class: dict[str, dict[str, float | int]] = {}
    for i, name in enumerate(names):
        precision = _ratio(true_pos[i], matrix[:, i].sum())
        recall = _ratio(true_pos[i], matrix[i, :].sum())
        per_class[name] = {"precision": precision, "recall": recall,
                           "f1": _ratio(2 * precision * recall, precision + recall),
                           "support": int(matrix[i, :].sum())}
    macro = {key: (float(np.mean([m[key] for m in per_class.values()])) if per_class else 0.0)
             for key in ("precision", "recall", "f1")}
    return {"classes": per_class, "accuracy": _ratio(true_pos.sum(), matrix.sum()),
            "macro": macro, "support": int(matrix.sum())}


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
    names = [_short(n) for n in _all_classes(labels, preds, classes)]
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
    ranked = sorted(wrong, key=lambda r: (_descending(r.get("prob")), _descending(r.get("loss"))))
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
    prob = _to_float(row.get("prob"))
    p_text = f"p={prob:.2f}" if math.isfinite(prob) else "p=?"
    ax.set_title(f"{_short(str(row.get('label')), 16)} / {_short(str(row.get('pred')), 16)}"
                 f" / {p_text}", fontsize=9, parse_math=False)
    ax.set_xticks([])
    ax.set_yticks([])


@dataclass
class Evaluation:
    """Test-split results computed from ``predictions_test.csv``."""

    metrics: dict[str, Any]
    mean_loss: float
    n_wrong: int
    confusion_png: Path
    top_losses_png: Path | None


def evaluate(run: Run, plots_dir: str | Path) -> Evaluation:
    """Score ``run.predictions`` and draw the confusion matrix and top losses into ``plots_dir``."""
    plots_dir = Path(plots_dir)
    labels = [str(r["label"]) for r in run.predictions]
    preds = [str(r["pred"]) for r in run.predictions]
    losses = [r["loss"] for r in run.predictions if math.isfinite(r["loss"])]
    return Evaluation(
        metrics=per_class_metrics(labels, preds, run.classes),
        mean_loss=float(np.mean(losses)) if losses else math.nan,
        n_wrong=sum(t != p for t, p in zip(labels, preds, strict=True)),
        confusion_png=plot_confusion(labels, preds, run.classes, plots_dir),
        top_losses_png=plot_top_losses(run.predictions, plots_dir, base_dir=run.path),
    )


# --------------------------------------------------------------------------- formatting

def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and not math.isfinite(value))


def _fmt(value: Any) -> str:
    """Plain-text cell: floats as 0.xxxx, None/NaN as '-', bools as yes/no."""
    if _is_missing(value):
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.3g}" if 0 < abs(value) < 1e-3 else f"{value:.4f}"
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True)
    return str(value)


def _fmt_int(value: Any) -> str:
    number = _to_int(value)
    return "-" if number is None else f"{number:,}"


def _fmt_seconds(value: Any) -> str:
    seconds = _to_float(value)
    if not math.isfinite(seconds):
        return "-"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m {secs:02d}s" if hours else f"{minutes}m {secs:02d}s"


def _fmt_acc(value: Any) -> str:
    number = _to_float(value)
    return "-" if not math.isfinite(number) else f"{number:.4f}"


def _fmt_share(share: float) -> str:
    """A fraction as a percentage that stays informative for tiny shares (0.05%)."""
    return f"{share:.1%}" if share == 0 or share >= 0.01 else f"{share:.2%}"


def _pretty(key: str) -> str:
    """A metrics key as a column heading: ``wall_time_s`` -> ``wall time``."""
    words = key.replace("_", " ")
    return words[:-2] if words.endswith(" s") else words


def _fmt_cell(key: str, value: Any) -> str:
    """Format a value by what its key says it is (accuracy, seconds, parameter count)."""
    if _is_missing(value):
        return "-"
    if key.endswith("_s") or key.endswith("time"):
        return _fmt_seconds(value)
    if key.endswith(("params", "buffers")) or key in ("support", "skipped"):
        return _fmt_int(value)
    return _fmt(value)


# --------------------------------------------------------------------------- HTML

def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


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
        flex: 1 1 110px; }
.card .label { color: #5b6573; font-size: 0.8em; text-transform: uppercase; letter-spacing: .04em; }
.card .value { font-size: 1.35em; font-weight: 600; word-break: break-word; }
table { border-collapse: collapse; margin: 6px 0 10px; font-size: 0.93em; }
th, td { border: 1px solid #dde1e7; padding: 5px 10px; text-align: left; vertical-align: top; }
th { background: #eef1f5; font-weight: 600; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.best td { font-weight: 700; background: #eef7ee; }
.verdict { font-weight: 700; }
.verdict.bad { color: #b42318; } .verdict.ok { color: #1e7b34; }
img { max-width: 100%; height: auto; border: 1px solid #eef1f5; }
.plots { display: grid; grid-template-columns: repeat(auto-fit, minmax(440px, 1fr)); gap: 12px; }
.plots img { width: 100%; }
img.confusion { max-width: 820px; }
pre, code { font-family: "DejaVu Sans Mono", Menlo, Consolas, "Liberation Mono", monospace; }
pre { background: #f3f4f6; border: 1px solid #dde1e7; padding: 10px; overflow-x: auto;
      font-size: 0.8em; line-height: 1.35; white-space: pre; }
code { font-size: 0.85em; word-break: break-word; }
img.wide { max-width: 900px; }
details summary { cursor: pointer; color: #2459a6; margin: 6px 0; }
.muted { color: #5b6573; }
"""


def _table(header: Sequence[str], rows: Iterable[Sequence[str]], numeric: Sequence[bool] = (),
           row_classes: Sequence[str] = ()) -> str:
    """An HTML table; cells must already be escaped."""
    head = "".join(f"<th>{h}</th>" for h in header)
    body = []
    for r, row in enumerate(rows):
        cls = f' class="{row_classes[r]}"' if r < len(row_classes) and row_classes[r] else ""
        cells = "".join(
            f'<td class="num">{c}</td>' if i < len(numeric) and numeric[i] else f"<td>{c}</td>"
            for i, c in enumerate(row))
        body.append(f"<tr{cls}>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _kv_value(key: str, value: Any) -> str:
    if isinstance(value, (dict, list)):
        return f"<code>{_e(json.dumps(value, sort_keys=True))}</code>"
    return _e(_fmt_cell(key, value))


def _kv_table(mapping: Mapping[str, Any], raw: bool = False) -> str:
    """A field/value table; ``raw`` shows values exactly as stored (for configuration)."""
    def cell(key: str, value: Any) -> str:
        if raw and not isinstance(value, (dict, list)):
            return _e(value if isinstance(value, str) else json.dumps(value))
        return _kv_value(key, value)

    return _table(["field", "value"], ([_e(k), cell(str(k), v)] for k, v in mapping.items()))


def _section(anchor: str, title: str, body: str) -> str:
    return f'<section id="{anchor}"><h2>{_e(title)}</h2>{body}</section>'


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _img(path: Path, alt: str, css_class: str = "") -> str:
    cls = f' class="{css_class}"' if css_class else ""
    return f'<img{cls} src="{_data_uri(path)}" alt="{_e(alt)}">'


def _backbone_name(config: Mapping[str, Any]) -> str | None:
    backbone = config.get("backbone")
    if isinstance(backbone, Mapping):
        return str(backbone["name"]) if backbone.get("name") else None
    return str(backbone) if backbone else None


def _card(label: str, value: str) -> str:
    return (f'<div class="card"><div class="label">{_e(label)}</div>'
            f'<div class="value">{_e(value)}</div></div>')


def _header(run: Run, evaluation: Evaluation | None) -> str:
    metrics, config = run.metrics, run.config
    val, test = _section_of(metrics, "val"), _section_of(metrics, "test")
    test_acc = test.get("accuracy", evaluation.metrics["accuracy"] if evaluation else None)
    cards = [("backbone", _backbone_name(config) or "-"),
             ("strategy", str(config.get("strategy") or "-")),
             ("val accuracy", _fmt_acc(val.get("accuracy"))),
             ("test accuracy", _fmt_acc(test_acc)),
             ("wall time", _fmt_seconds(metrics.get("wall_time_s"))),
             ("classes", str(len(run.classes)) if run.classes else "-")]
    if metrics.get("skipped"):
        cards.append(("skipped images", _fmt_int(metrics["skipped"])))
    created = f" &middot; created {_e(config['created'])}" if config.get("created") else ""
    return (f"<header><h1>graftwork run: {_e(run.name)}</h1>"
            f'<p class="subtitle">{_e(run.path.resolve())}{created}</p>'
            f'<div class="cards">{"".join(_card(k, v) for k, v in cards)}</div></header>')


def _ladder_section(run: Run) -> str:
    phases = [p for p in run.metrics.get("phases") or [] if isinstance(p, Mapping)]
    if not phases:
        return ""
    known = ["phase", "best_val_accuracy", "test_accuracy", "wall_time_s", "trainable_params"]
    extra = [k for p in phases for k in p if k not in known]
    columns = [k for k in known if any(k in p for p in phases)] + list(dict.fromkeys(extra))
    best = min(range(len(phases)), key=lambda i: _descending(phases[i].get("best_val_accuracy")))
    rows = [[_kv_value(c, p.get(c)) for c in columns] for p in phases]
    numeric = [c != "phase" for c in columns]
    table = _table([_e(_pretty(c)) for c in columns], rows, numeric,
                   ["best" if i == best else "" for i in range(len(phases))])
    note = ('<p class="muted">One row per training phase; the best validation accuracy is '
            "highlighted.</p>")
    is_ladder = run.config.get("strategy") == "ladder" or len(phases) > 1
    return _section("ladder", "Strategy ladder" if is_ladder else "Phases", note + table)


def _params_section(run: Run) -> str:
    trainable = run.config.get("trainable")
    if not isinstance(trainable, Mapping) or not trainable:
        return ""
    keys = ["trainable_params", "frozen_params", "bn_buffers"]
    rows = []
    for phase, counts in trainable.items():
        counts = counts if isinstance(counts, Mapping) else {}
        total = sum(_to_int(counts.get(k)) or 0 for k in keys[:2])
        share = _ratio(_to_int(counts.get("trainable_params")) or 0, total)
        rows.append([_e(phase), *(_e(_fmt_int(counts.get(k))) for k in keys),
                     _e(_fmt_share(share) if total else "-")])
    header = ["phase", "trainable params", "frozen params", "BN buffers", "trainable share"]
    return _section("params", "Parameters per phase",
                    _table(header, rows, [False, True, True, True, True]))


def _doctor_html(doctor: Mapping[str, Any]) -> str:
    parts = ["<h3>BN doctor: train-mode vs eval-mode</h3>"]
    modes = [(name, doctor.get(key)) for name, key in (("train mode", "train_mode"),
                                                       ("eval mode", "eval_mode"))]
    rows = [[_e(name), _e(_fmt_acc(m.get("accuracy"))), _e(_fmt_acc(m.get("loss")))]
            for name, m in modes if isinstance(m, Mapping)]
    if rows:
        parts.append(_table(["BatchNorm mode", "accuracy", "loss"], rows, [False, True, True]))
    if doctor.get("gap") is not None:
        parts.append(f"<p>Accuracy gap: <b>{_e(_fmt_acc(doctor.get('gap')))}</b></p>")
    if doctor.get("verdict"):
        verdict = str(doctor["verdict"])
        tone = "ok" if verdict.lower().startswith(("ok", "healthy", "fine", "no ")) else "bad"
        parts.append(f'<p>Verdict: <span class="verdict {tone}">{_e(verdict)}</span></p>')
    if doctor.get("fix"):
        parts.append(f"<p>Fix: {_e(doctor['fix'])}</p>")
    layers = [layer for layer in doctor.get("layers") or [] if isinstance(layer, Mapping)]
    if layers:
        layers = sorted(layers, key=lambda layer: _descending(layer.get("distance")))[:10]
        parts.append('<p class="muted">BatchNorm layers whose running statistics are furthest '
                     "from the statistics of this data (top 10):</p>")
        layer_rows = [[_e(layer.get("name")), _e(_fmt(layer.get("distance")))] for layer in layers]
        parts.append(_table(["layer", "distance"], layer_rows, [False, True]))
    known = {"train_mode", "eval_mode", "gap", "verdict", "fix", "layers"}
    others = {k: v for k, v in doctor.items() if k not in known}
    parts.append(_details("Other doctor fields", others))
    return "".join(parts)


def _bn_section(run: Run) -> str:
    doctor, bn = run.metrics.get("doctor"), run.metrics.get("bn")
    parts = []
    if isinstance(doctor, Mapping) and doctor:
        parts.append(_doctor_html(doctor))
    if isinstance(bn, Mapping) and bn:
        parts.append("<h3>BatchNorm recalibration</h3>" + _kv_table(_flatten(bn)))
    if not parts:
        return ""
    return _section("bn", "BatchNorm", "".join(parts))


def _flatten(mapping: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts as one level with dotted keys (lists are kept as values)."""
    flat: dict[str, Any] = {}
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def _details(summary: str, data: Mapping[str, Any]) -> str:
    if not data:
        return ""
    text = json.dumps(data, indent=2, sort_keys=True, default=str)
    return f"<details><summary>{_e(summary)}</summary><pre>{_e(text)}</pre></details>"


def _curves_section(curves: Sequence[Path], run: Run) -> str:
    if not curves:
        return ""
    images = "".join(_img(p, p.stem.replace("_", " ")) for p in curves)
    phases = [name for name, _, _ in _phase_segments(run.history)]
    sequence = " \u2192 ".join(phases)
    note = (f'<p class="muted">{len(run.history)} epochs over {len(phases)} phase(s): '
            f"{_e(sequence)}. Dots are raw values, lines are smoothed per phase; "
            "dashed lines mark phase boundaries.</p>")
    return _section("curves", "Training curves", note + f'<div class="plots">{images}</div>')


def _eval_section(evaluation: Evaluation | None) -> str:
    if evaluation is None:
        return ""
    m = evaluation.metrics
    summary = (f"<p>Test accuracy <b>{_e(_fmt_acc(m['accuracy']))}</b> on {m['support']} images "
               f"({evaluation.n_wrong} wrong), mean loss {_e(_fmt_acc(evaluation.mean_loss))}, "
               f"macro F1 {_e(_fmt_acc(m['macro']['f1']))}.</p>")
    rows = [[_e(name), *(_e(_fmt_acc(c[k])) for k in ("precision", "recall", "f1")),
             _e(c["support"])] for name, c in m["classes"].items()]
    rows.append(["<b>macro average</b>",
                 *(f"<b>{_e(_fmt_acc(m['macro'][k]))}</b>" for k in ("precision", "recall", "f1")),
                 _e(m["support"])])
    table = _table(["class", "precision", "recall", "F1", "support"], rows,
                   [False, True, True, True, True])
    parts = [summary, "<h3>Per-class metrics</h3>", table, "<h3>Confusion matrix</h3>",
             _img(evaluation.confusion_png, "confusion matrix", "confusion")]
    if evaluation.top_losses_png is not None:
        parts += ["<h3>Top losses</h3>", _img(evaluation.top_losses_png, "top losses", "wide")]
    return _section("test", "Test evaluation", "".join(parts))


KNOWN_CONFIG_KEYS = ("backbone", "strategy", "classes", "weights", "preprocessing",
                     "hyperparameters", "bn_policy", "trainable", "versions", "created")


def _config_section(run: Run) -> str:
    config = run.config
    parts = []
    overview = {"backbone": _backbone_name(config), "strategy": config.get("strategy"),
                "created": config.get("created"),
                "classes": ", ".join(run.classes) if run.classes else None}
    parts.append(_kv_table({k: v for k, v in overview.items() if v is not None}, raw=True))
    for key in ("backbone", "weights", "preprocessing", "hyperparameters", "bn_policy", "versions"):
        value = config.get(key)
        if isinstance(value, Mapping) and (key != "backbone" or len(value) > 1):
            parts.append(f"<h3>{_e(key)}</h3>" + _kv_table(value, raw=True))
    parts.append(_details("Other fields",
                          {k: v for k, v in config.items() if k not in KNOWN_CONFIG_KEYS}))
    parts.append(_details("Full config.json", config))
    return _section("config", "Configuration", "".join(parts))


def _summary_section(run: Run) -> str:
    if not run.summary.strip():
        return ""
    return _section("summary", "Model summary", f"<pre>{_e(run.summary.rstrip())}</pre>")


def _nav(links: Sequence[tuple[str, str]]) -> str:
    """In-page links, one per ``(anchor, title)``."""
    return "<nav>" + "".join(f'<a href="#{a}">{_e(t)}</a>' for a, t in links) + "</nav>"


def render_html(run: Run, curves: Sequence[Path] = (), evaluation: Evaluation | None = None) -> str:
    """The report page for ``run``; ``curves`` and ``evaluation`` supply the plots."""
    sections = [("ladder", "Ladder", _ladder_section(run)),
                ("params", "Parameters", _params_section(run)),
                ("bn", "BatchNorm", _bn_section(run)),
                ("curves", "Curves", _curves_section(curves, run)),
                ("test", "Test evaluation", _eval_section(evaluation)),
                ("config", "Configuration", _config_section(run)),
                ("summary", "Model summary", _summary_section(run))]
    present = [(anchor, title, html_) for anchor, title, html_ in sections if html_]
    body = (_header(run, evaluation) + _nav([(a, t) for a, t, _ in present])
            + "".join(html_ for _, _, html_ in present))
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>graftwork report: {_e(run.name)}</title><style>{CSS}</style></head>"
            f"<body><main>{body}</main></body></html>\n")


def build_report(run_dir: str | Path, smoothing: float = 0.8) -> Path:
    """Write ``plots/*.png`` and a self-contained ``report.html`` into ``run_dir``.

    Optional files that are missing simply leave their section out. Raises
    :class:`RunDirError` when ``run_dir`` is not a run directory.
    """
    if not 0.0 <= smoothing < 1.0:
        raise ValueError(f"smoothing factor must be in [0, 1), got {smoothing!r}")
    run = load_run(run_dir)
    plots_dir = run.path / PLOTS_DIR
    plots_dir.mkdir(exist_ok=True)
    for name in PLOT_FILES:  # a plot this run no longer warrants must not linger from a rebuild
        (plots_dir / name).unlink(missing_ok=True)
    curves = plot_curves(run.history, plots_dir, smoothing)
    evaluation = evaluate(run, plots_dir) if run.predictions else None
    out = run.path / REPORT_FILE
    out.write_text(render_html(run, curves, evaluation), encoding="utf-8")
    log.info("wrote %s", out)
    return out


# --------------------------------------------------------------------------- listing and comparing

def _find_run_dirs(root: Path, max_depth: int) -> list[Path]:
    """Folders holding ``config.json`` at most ``max_depth`` levels below ``root``; a run's
    own sub-folders are not searched, nor are hidden folders."""
    found, level = [], [root]
    for depth in range(max_depth + 1):
        next_level = []
        for folder in level:
            if (folder / CONFIG_FILE).is_file():
                found.append(folder)
            elif depth < max_depth:
                try:
                    next_level += sorted(p for p in folder.iterdir()
                                         if p.is_dir() and not p.name.startswith("."))
                except OSError as exc:
                    log.warning("cannot list %s: %s", folder, exc)
        level = next_level
    return found


def list_runs(root: str | Path, max_depth: int = 3) -> list[dict[str, Any]]:
    """One dict per run directory under ``root`` (``path``, ``backbone``, ``strategy``,
    ``val_accuracy``, ``test_accuracy``, ``wall_time_s``, ``created``), oldest first.

    Runs whose ``config.json`` cannot be read are skipped with a warning.
    """
    root = Path(root)
    if not root.is_dir():
        raise RunDirError(f"{root} does not exist", "pass the folder that holds your runs")
    runs = []
    for folder in _find_run_dirs(root, max_depth):
        try:
            config = read_config(folder)
        except RunDirError as exc:
            log.warning("skipping %s", exc)
            continue
        metrics = read_metrics(folder)
        runs.append({"path": str(folder), "backbone": _backbone_name(config),
                     "strategy": config.get("strategy"),
                     "val_accuracy": _section_of(metrics, "val").get("accuracy"),
                     "test_accuracy": _section_of(metrics, "test").get("accuracy"),
                     "wall_time_s": metrics.get("wall_time_s"),
                     "created": config.get("created")})
    return sorted(runs, key=lambda r: (str(r["created"] or ""), r["path"]))


def _align(header: Sequence[str], rows: Sequence[Sequence[str]],
           right: Sequence[bool] = ()) -> str:
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(header)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.rjust(w) if i < len(right) and right[i] else c.ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths, strict=True))).rstrip()

    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


def format_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    """Plain-text table of ``rows`` (floats as 0.xxxx, None as '-'); numbers right-aligned."""
    def numeric(value: Any) -> bool:
        return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))

    cells = [[_fmt(row.get(c)) for c in columns] for row in rows]
    right = [bool(rows) and all(numeric(r.get(c)) for r in rows) for c in columns]
    return _align(list(columns), cells, right)


def _first(mapping: Mapping[str, Any], *keys: str) -> Any:
    for key in keys:
        if mapping.get(key) is not None:
            return mapping[key]
    return None


def _image_size(config: Mapping[str, Any]) -> Any:
    size = _first(_section_of(config, "preprocessing"), "image_size", "input_size", "size",
                  "crop_size", "resize")
    if isinstance(size, (list, tuple)):
        return "x".join(str(s) for s in size[-2:])
    return size


def _bn_before_after(bn: Mapping[str, Any]) -> tuple[Any, Any]:
    """Accuracy before and after BN recalibration, whatever the key layout."""
    for before_key, after_key in (("val_before", "val_after"), ("train_before", "train_after"),
                                  ("before_accuracy", "after_accuracy"),
                                  ("accuracy_before", "accuracy_after"), ("before", "after")):
        before, after = bn.get(before_key), bn.get(after_key)
        if isinstance(before, Mapping):
            before = before.get("accuracy")
        if isinstance(after, Mapping):
            after = after.get("accuracy")
        if before is not None or after is not None:
            return before, after
    return None, None


def _recalibrated(run: Run) -> str:
    bn = _section_of(run.metrics, "bn")
    if not bn:
        return "no"
    before, after = _bn_before_after(bn)
    if before is None and after is None:
        return "yes"
    return f"yes ({_fmt_acc(before)} -> {_fmt_acc(after)})"


def _per_phase(run: Run, key: str) -> str:
    trainable = _section_of(run.config, "trainable")
    counts = {str(p): _section_of(trainable, p).get(key) for p in trainable}
    counts = {p: v for p, v in counts.items() if v is not None}
    if len(counts) <= 1:
        return _fmt(next(iter(counts.values()), None))
    return ", ".join(f"{p}={_fmt(v)}" for p, v in counts.items())


COMPARE_FIELDS: list[tuple[str, Callable[[Run], Any]]] = [
    ("backbone", lambda r: _backbone_name(r.config)),
    ("strategy", lambda r: r.config.get("strategy")),
    ("weights source", lambda r: _section_of(r.config, "weights").get("source")),
    ("weights digest", lambda r: str(_section_of(r.config, "weights").get("digest") or "")[:12]
     or None),
    ("image size", lambda r: _image_size(r.config)),
    ("classes", lambda r: len(r.classes) or None),
    ("epochs", lambda r: _section_of(r.config, "hyperparameters").get("epochs")),
    ("epochs run", lambda r: len(r.history) or None),
    ("learning rate",
     lambda r: _first(_section_of(r.config, "hyperparameters"), "lr", "learning_rate")),
    ("batch size", lambda r: _section_of(r.config, "hyperparameters").get("batch_size")),
    ("val accuracy", lambda r: _section_of(r.metrics, "val").get("accuracy")),
    ("val loss", lambda r: _section_of(r.metrics, "val").get("loss")),
    ("test accuracy", lambda r: _section_of(r.metrics, "test").get("accuracy")),
    ("test loss", lambda r: _section_of(r.metrics, "test").get("loss")),
    ("wall time", lambda r: _fmt_seconds(r.metrics.get("wall_time_s"))),
    ("trainable params", lambda r: _per_phase(r, "trainable_params")),
    ("frozen params", lambda r: _per_phase(r, "frozen_params")),
    ("recalibrated", _recalibrated),
    ("BN doctor", lambda r: _section_of(r.metrics, "doctor").get("verdict")),
    ("created", lambda r: r.config.get("created")),
]


def _run_labels(paths: Sequence[Path]) -> list[str]:
    """Folder names, or full paths where two runs share a name."""
    names = [p.name or str(p) for p in paths]
    return [str(p) if names.count(n) > 1 else n for p, n in zip(paths, names, strict=True)]


def compare_runs(paths: Sequence[str | Path]) -> tuple[list[str], list[list[str]]]:
    """Side-by-side comparison: ``(header, rows)`` where the header is ``["field", run...]``
    and each row is a field followed by its formatted value in every run.

    Raises :class:`RunDirError` for a path that is not a run directory.
    """
    runs = [Run(path=Path(p), config=read_config(p), metrics=read_metrics(p),
                history=read_history(p)) for p in paths]
    header = ["field", *_run_labels([r.path for r in runs])]
    rows = [[label, *(_fmt(getter(run)) for run in runs)] for label, getter in COMPARE_FIELDS]
    return header, rows


def format_compare(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Plain-text rendering of :func:`compare_runs`'s table."""
    return _align(header, rows)
