"""Tests for graftwork.report: smoothing, metrics, SVG charts, the HTML report, listing and
comparing."""
from __future__ import annotations

import ast
import base64
import csv
import io
import json
import math
import re
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from graftwork import report
from graftwork.errors import RunDirError
from graftwork.report import _svg

CLASSES = ["cat", "dog", "<b>x</b>"]

# (label, pred, prob): three wrong ones, with confidences 0.95, 0.80 and 0.55.
PREDICTIONS = [
    ("cat", "cat", 0.90),
    ("cat", "dog", 0.80),
    ("dog", "dog", 0.70),
    ("dog", "dog", 0.60),
    ("dog", "<b>x</b>", 0.95),
    ("<b>x</b>", "<b>x</b>", 0.99),
    ("<b>x</b>", "cat", 0.55),
    ("cat", "cat", 0.85),
]


def _write_csv(path: Path, header: list[str], rows: list[list[Any]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)


def _history_rows() -> list[list[Any]]:
    rows: list[list[Any]] = []
    for epoch in range(1, 4):
        rows.append(["extract", epoch, 1.0 / epoch, 0.5 + 0.1 * epoch, 1.1 / epoch,
                     0.45 + 0.1 * epoch, 0.01])
    for epoch in range(1, 5):
        val_loss, val_acc = ("", "") if epoch == 2 else (0.3 / epoch, 0.8 + 0.03 * epoch)
        rows.append(["finetune", epoch, 0.4 / epoch, 0.8 + 0.04 * epoch, val_loss, val_acc, 0.001])
    return rows


def _write_images(folder: Path) -> list[str]:
    """One tiny PNG per prediction; the last wrong one points to a missing file."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, _ in enumerate(PREDICTIONS):
        path = folder / f"img_{i}.png"
        colour = (40 * i % 256, 255 - 30 * i, 120)
        Image.new("RGB", (24, 24), colour).save(path)
        paths.append(str(path))
    paths[6] = str(folder / "does_not_exist.png")
    return paths


def make_run(root: Path, name: str = "run1", *, created: str = "2024-05-01T10:00:00",
             strategy: str = "ladder", backbone: str = "resnet18", val_acc: float = 0.875,
             test_acc: float | None = 0.625, optional: bool = True) -> Path:
    """Write a synthetic run directory; ``optional=False`` writes only config.json."""
    run = root / name
    run.mkdir(parents=True)
    config = {
        "backbone": {"name": backbone, "family": "resnet"},
        "strategy": strategy,
        "classes": CLASSES,
        "weights": {"source": "torchvision", "digest": "abcdef0123456789"},
        "preprocessing": {"image_size": 224, "mean": [0.485, 0.456, 0.406]},
        "hyperparameters": {"epochs": 4, "lr": 0.001, "batch_size": 32},
        "bn_policy": {"mode": "frozen", "recalibrate": True},
        "trainable": {"extract": {"trainable_params": 1539, "frozen_params": 11176512,
                                  "bn_buffers": 9600},
                      "finetune": {"trainable_params": 11178051, "frozen_params": 0,
                                   "bn_buffers": 9600}},
        "versions": {"graftwork": "0.1.0", "torch": "2.3.0"},
        "created": created,
        "mystery_key": {"nested": [1, 2, 3]},
    }
    (run / "config.json").write_text(json.dumps(config), encoding="utf-8")
    if not optional:
        return run
    metrics: dict[str, Any] = {
        "val": {"accuracy": val_acc, "loss": 0.31},
        "phases": [
            {"phase": "extract", "best_val_accuracy": 0.75, "test_accuracy": 0.5,
             "wall_time_s": 12.5, "trainable_params": 1539},
            {"phase": "finetune", "best_val_accuracy": val_acc, "test_accuracy": test_acc,
             "wall_time_s": 80.25, "trainable_params": 11178051},
        ],
        "bn": {"recalibrated": True, "val_before": {"accuracy": 0.70}, "val_after": {"accuracy": 0.86}},
        "doctor": {"train_mode": {"accuracy": 0.85, "loss": 0.4},
                   "eval_mode": {"accuracy": 0.30, "loss": 2.1}, "gap": 0.55,
                   "verdict": "BN statistics mismatch", "fix": "use --bn recalibrate",
                   "layers": [{"name": "layer1.0.bn1", "distance": 0.2},
                              {"name": "bn1", "distance": 3.5}]},
        "wall_time_s": 92.75,
        "skipped": 1,
        "skipped_phases": {"frozen": "200 <i>training</i> images per class"},
    }
    if test_acc is not None:
        metrics["test"] = {"accuracy": test_acc, "loss": 0.9}
    (run / "metrics.json").write_text(json.dumps(metrics), encoding="utf-8")
    _write_csv(run / "history.csv",
               ["phase", "epoch", "loss", "accuracy", "val_loss", "val_accuracy", "lr"],
               _history_rows())
    paths = _write_images(run / "images")
    rows = []
    for path, (label, pred, prob) in zip(paths, PREDICTIONS, strict=True):
        prob_true = prob if label == pred else 0.05
        rows.append([path, label, pred, prob, prob_true, -math.log(prob_true)])
    _write_csv(run / "predictions_test.csv",
               ["path", "label", "pred", "prob", "prob_true", "loss"], rows)
    summary = "layer        params\nconv1 <Conv2d>  9408\n"
    (run / "summary.txt").write_text(summary, encoding="utf-8")
    return run


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A full run with its report already built (shared by the tests that only read it)."""
    run = make_run(tmp_path_factory.mktemp("runs"))
    out = report.build_report(run)
    return run, out.read_text(encoding="utf-8")


def _absolute_imports(path: Path, package: str) -> set[str]:
    """Every module ``path`` imports, relative imports resolved against ``package``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                imported.add(f"{base}.{node.module}" if node.module else base)
            else:
                imported.add(node.module or "")
    return imported


def test_report_package_never_imports_torch() -> None:
    """graftwork.report must stay usable without torch: across all of its modules it imports
    only the torch-free graftwork.errors and graftwork.rundir (the run-directory schema, which
    imports graftwork.params) from the rest of the package, and never torch."""
    modules = sorted(Path(report.__file__).parent.glob("*.py"))
    assert {m.name for m in modules} >= {"__init__.py", "_html.py"}
    imported: set[str] = set()
    for module in modules:
        imported |= _absolute_imports(module, report.__name__)
    assert not any(name.split(".")[0] == "torch" for name in imported)
    outside = {name for name in imported if name.split(".")[0] == "graftwork"
               and name != report.__name__ and not name.startswith(report.__name__ + ".")}
    assert {n for n in outside if not n.startswith("graftwork.rundir.")} <= {
        "graftwork.errors", "graftwork.rundir"}
    root = Path(report.__file__).parent.parent
    for path in [*sorted((root / "rundir").glob("*.py")), root / "params.py"]:
        package = "graftwork.rundir" if path.parent.name == "rundir" else "graftwork"
        deps = _absolute_imports(path, package)
        assert not any(d.split(".")[0] in ("torch", "numpy") for d in deps), path
        assert {d for d in deps if d.startswith("graftwork.")} <= {
            "graftwork.errors", "graftwork.params", "graftwork.registry",
            *(f"graftwork.rundir.{p.stem}" for p in (root / "rundir").glob("*.py"))}, path


# --------------------------------------------------------------------------- smoothing

def test_smooth_formula() -> None:
    assert report.smooth([1, 0, 0], 0.5) == [1.0, 0.5, 0.25]
    assert report.smooth([2.0, 4.0], 0.0) == [2.0, 4.0]
    assert report.smooth([], 0.9) == []
    assert report.smooth([3.0, 1.0], 0.75) == pytest.approx([3.0, 2.5])


def test_smooth_skips_missing_values() -> None:
    out = report.smooth([math.nan, 2.0, None, math.nan, 4.0], 0.5)  # type: ignore[list-item]
    assert math.isnan(out[0])
    assert out[1:] == [2.0, 2.0, 2.0, 3.0]
    assert all(math.isnan(v) for v in report.smooth([math.nan, math.nan]))


@pytest.mark.parametrize("factor", [-0.1, 1.0, 1.5, math.nan])
def test_smooth_rejects_bad_factor(factor: float) -> None:
    with pytest.raises(ValueError):
        report.smooth([1.0], factor)


# --------------------------------------------------------------------------- metrics

def test_per_class_metrics_by_hand() -> None:
    labels = ["a", "a", "a", "b", "b", "c"]
    preds = ["a", "a", "b", "b", "c", "c"]
    m = report.per_class_metrics(labels, preds, ["a", "b", "c", "d"])
    got = {k: tuple(m["classes"][k][f] for f in ("precision", "recall", "f1", "support"))
           for k in "abcd"}
    assert got["a"] == pytest.approx((1.0, 2 / 3, 0.8, 3))
    assert got["b"] == pytest.approx((0.5, 0.5, 0.5, 2))
    assert got["c"] == pytest.approx((0.5, 1.0, 2 / 3, 1))
    assert got["d"] == (0.0, 0.0, 0.0, 0)
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["support"] == 6
    assert m["macro"]["precision"] == pytest.approx(0.5)
    assert m["macro"]["recall"] == pytest.approx((2 / 3 + 0.5 + 1.0) / 4)
    assert m["macro"]["f1"] == pytest.approx((0.8 + 0.5 + 2 / 3) / 4)


def test_per_class_metrics_edge_cases() -> None:
    empty = report.per_class_metrics([], [], ["a"])
    assert empty["accuracy"] == 0.0 and empty["classes"]["a"]["f1"] == 0.0
    # A label the config does not list is appended rather than crashing.
    m = report.per_class_metrics(["a", "zz"], ["a", "a"], ["a"])
    assert list(m["classes"]) == ["a", "zz"]
    assert m["classes"]["a"]["precision"] == 0.5
    with pytest.raises(ValueError):
        report.per_class_metrics(["a"], [], ["a"])


def test_confusion_matrix_rows_are_true_classes() -> None:
    matrix = report.confusion_matrix(["a", "a", "b"], ["a", "b", "b"], ["a", "b"])
    assert matrix.tolist() == [[1, 1], [0, 1]]


# --------------------------------------------------------------------------- SVG helpers

def _parse(markup: str) -> ET.Element:
    """An SVG document or inline SVG parsed as XML (fails unless it is well-formed)."""
    return ET.fromstring(markup.split("?>", 1)[-1] if markup.startswith("<?xml") else markup)


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _find(root: ET.Element, tag: str, cls: str | None = None) -> list[ET.Element]:
    """Elements named ``tag`` (any namespace) whose class list holds every word of ``cls``."""
    want = set(cls.split()) if cls else set()
    return [el for el in root.iter() if _local(el.tag) == tag
            and want <= set((el.get("class") or "").split())]


def _texts(root: ET.Element, cls: str | None = None) -> list[str]:
    return [el.text or "" for el in _find(root, "text", cls)]


def _inline_svgs(page: str) -> list[ET.Element]:
    return [_parse(m) for m in re.findall(r"<svg\b.*?</svg>", page, flags=re.S)]


def _check_accessible(root: ET.Element) -> None:
    titles = [el for el in root if _local(el.tag) == "title"]
    descs = [el for el in root if _local(el.tag) == "desc"]
    assert titles and titles[0].text and descs and descs[0].text
    assert root.get("role") == "img" and root.get("viewBox")


# --------------------------------------------------------------------------- top losses

def _rows() -> list[dict[str, Any]]:
    return [{"path": f"p{i}.png", "label": t, "pred": p, "prob": prob, "loss": 1.0}
            for i, (t, p, prob) in enumerate(PREDICTIONS)]


def test_top_losses_most_confidently_wrong_first() -> None:
    worst = report.top_losses(_rows(), n=16)
    assert [r["prob"] for r in worst] == [0.95, 0.80, 0.55]
    assert all(r["label"] != r["pred"] for r in worst)
    assert [r["prob"] for r in report.top_losses(_rows(), n=2)] == [0.95, 0.80]


def test_top_losses_grid_none_when_all_right() -> None:
    rows = [r for r in _rows() if r["label"] == r["pred"]]
    assert report.top_losses_grid(rows) is None


def test_top_losses_grid_survives_unreadable_images(tmp_path: Path) -> None:
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png at all")
    rows = [{"path": str(broken), "label": "a", "pred": "b", "prob": 0.9, "loss": 2.0},
            {"path": str(tmp_path / "missing.png"), "label": "a", "pred": "b", "prob": 0.8,
             "loss": 1.5},
            {"path": "", "label": "<script>x</script>", "pred": "b", "prob": math.nan,
             "loss": math.nan}]
    grid = report.top_losses_grid(rows, n=4)
    assert grid is not None
    assert grid.count('<figure class="loss">') == 3
    assert grid.count('class="missing"') == 3 and "image not available" in grid
    assert "<img" not in grid
    assert "<script>" not in grid and "&lt;script&gt;x&lt;/script&gt;" in grid
    assert "p = ?" in grid and "p = 0.90" in grid


def test_top_losses_grid_shows_the_images(tmp_path: Path) -> None:
    colours = [(200, 30, 30), (30, 160, 40)]
    rows = []
    for i, colour in enumerate(colours):
        path = tmp_path / f"img{i}.jpg"
        Image.new("RGB", (400, 300), colour).save(path, quality=95)
        rows.append({"path": path.name, "label": "a" * 40, "pred": "b", "prob": 0.9 - i / 10,
                     "loss": 1.0})
    grid = report.top_losses_grid(rows, base_dir=tmp_path)  # paths relative to the run
    assert grid is not None
    uris = re.findall(r'src="data:image/jpeg;base64,([^"]+)"', grid)
    assert len(uris) == 2
    for uri, colour in zip(uris, colours, strict=True):
        with Image.open(io.BytesIO(base64.b64decode(uri))) as img:
            assert max(img.size) <= 160 and img.size[0] > img.size[1]  # thumbnail, same shape
            found = img.convert("RGB").getpixel((img.size[0] // 2, img.size[1] // 2))
        assert max(abs(a - b) for a, b in zip(found, colour, strict=True)) <= 6, colour
    assert "true: <b>" + "a" * 40 + "</b>" in grid and "p = 0.90" in grid and "p = 0.80" in grid


# --------------------------------------------------------------------------- confusion matrix

def test_plot_confusion_ten_classes(tmp_path: Path) -> None:
    classes = [f"class_{i}_with_a_long_name" for i in range(10)]
    labels = [c for c in classes for _ in range(3)]
    preds = [classes[(i + (k == 2)) % 10] for i in range(10) for k in range(3)]
    out = report.plot_confusion(labels, preds, classes, tmp_path)
    assert out.name == "confusion_matrix.svg"
    root = _parse(out.read_text(encoding="utf-8"))
    _check_accessible(root)
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    assert any(_local(el.tag) == "style" for el in root)  # a stand-alone file styles itself
    cells = _find(root, "rect", "cell")
    assert len(cells) == 100
    expected = report.confusion_matrix(labels, preds, classes)
    for cell in cells:
        i, j = int(cell.get("data-row")), int(cell.get("data-col"))  # type: ignore[arg-type]
        assert int(cell.get("data-count")) == expected[i, j]  # type: ignore[arg-type]
    assert sorted(_texts(root, "count")) == sorted(["2"] * 10 + ["1"] * 10)
    assert _texts(root, "row-label") == classes
    cols = _find(root, "text", "col-label")
    assert [c.text for c in cols] == classes
    assert all("rotate(-45" in (c.get("transform") or "") for c in cols)  # long names turn
    assert _find(root, "rect", "colorbar") and _find(root, "linearGradient")
    assert "1.0" in _texts(root) and "0.0" in _texts(root)
    assert float(root.get("width")) > 500  # type: ignore[arg-type]


def test_plot_confusion_many_classes_grows(tmp_path: Path) -> None:
    small = report.plot_confusion(["a", "b"], ["a", "a"], ["a", "b"], tmp_path / "small.svg")
    names = [f"c{i}" for i in range(40)]
    big = report.plot_confusion(names, names[1:] + names[:1], names, tmp_path / "big.svg")
    s_root, b_root = (_parse(p.read_text(encoding="utf-8")) for p in (small, big))
    for attr in ("width", "height"):
        assert float(b_root.get(attr)) > float(s_root.get(attr))  # type: ignore[arg-type]
    assert len(_find(b_root, "rect", "cell")) == 1600
    # every class was predicted as another one: one darkest cell per row, off the diagonal
    darkest = [c for c in _find(b_root, "rect", "cell") if c.get("fill") == _svg.blues(1.0)]
    assert len(darkest) == 40 and all(c.get("data-row") != c.get("data-col") for c in darkest)
    short = [c for c in _find(s_root, "text", "col-label")]
    assert [c.text for c in short] == ["a", "b"] and not short[0].get("transform")


def test_confusion_escapes_hostile_class_names() -> None:
    hostile = ["<script>x</script>", '=HYPERLINK("x")', "a & b \x01"]
    chart = report.confusion_chart(hostile, hostile[1:] + hostile[:1], hostile)
    markup = chart.inline()
    assert "<script" not in markup and "&lt;script&gt;x&lt;/script&gt;" in markup
    root = _parse(markup)  # well-formed: the control character XML forbids is dropped
    assert _texts(root, "row-label") == ["<script>x</script>", '=HYPERLINK("x")', "a & b "]
    assert _texts(root, "col-label") == _texts(root, "row-label")
    tips = [el.text or "" for cell in _find(root, "rect", "cell") for el in cell]
    assert "true <script>x</script>, predicted =HYPERLINK(\"x\"): 1 (100% of the row)" in tips


# --------------------------------------------------------------------------- history and curves

def test_read_history_and_curves(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    history = report.read_history(run)
    assert len(history) == 7
    assert [r["phase"] for r in history[2:4]] == ["extract", "finetune"]
    assert history[3]["epoch"] == 1
    assert math.isnan(history[4]["val_accuracy"])
    paths = report.plot_curves(history, tmp_path / "plots", smoothing=0.6)
    assert [p.name for p in paths] == ["curves_accuracy.svg", "curves_loss.svg",
                                       "learning_rate.svg"]
    for path in paths:
        _check_accessible(_parse(path.read_text(encoding="utf-8")))
    assert report.plot_curves([], tmp_path / "empty") == []


def test_curves_draw_both_series(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    history = report.read_history(run)
    root = _parse(report.curve_chart(history, "accuracy", 0.6).document())
    _check_accessible(root)
    # raw values as dots: 7 train values, 6 validation values (one is missing)
    assert len(_find(root, "circle", "raw train")) == 7
    assert len(_find(root, "circle", "raw val")) == 6
    # smoothed lines per phase; validation breaks where its value is missing
    train_lines = _find(root, "path", "line train")
    assert len(train_lines) == 2
    assert [d.count("L") + 1 for d in (p.get("d") or "" for p in train_lines)] == [3, 4]
    assert len(_find(root, "path", "line val")) == 2  # smoothing carries over the gap
    assert len(_find(root, "line", "phase-boundary")) == 1
    assert _texts(root, "phase-label") == ["extract", "finetune"]
    legend = [t for g in _find(root, "g", "legend") for t in _texts(g)]
    assert legend == ["train", "validation"]
    x_ticks = [t for g in _find(root, "g", "tick x") for t in _texts(g)]
    y_ticks = [t for g in _find(root, "g", "tick y") for t in _texts(g)]
    assert x_ticks == ["1", "2", "3", "4", "5", "6", "7"]
    assert y_ticks and all(0.5 <= float(t) <= 1.0 for t in y_ticks)
    assert "epoch (all phases, in training order)" in _texts(root, "axis-title")
    assert any("smoothed 0.6" in t for t in _texts(root, "title"))


def test_lr_chart_scales(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    history = report.read_history(run)  # 0.01 then 0.001: one decade, linear
    linear = report.lr_chart(history)
    assert linear is not None and "linear" in linear.title
    history[-1]["lr"] = 1e-5  # now three decades: log scale, ticks at powers of ten
    log_chart = report.lr_chart(history)
    assert log_chart is not None and "log" in log_chart.title
    root = _parse(log_chart.inline())
    y_ticks = [t for g in _find(root, "g", "tick y") for t in _texts(g)]
    assert y_ticks == ["1e-5", "1e-4", "1e-3", "1e-2"]
    assert len(_find(root, "path", "line lr")) == 2
    assert report.lr_chart([{"phase": "a", "lr": math.nan}]) is None


def test_nice_ticks_and_labels() -> None:
    assert _svg.nice_ticks(0.05, 1.05, 8) == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])
    assert _svg.nice_ticks(0.5, 23.5, 11, integer=True) == [2, 4, 6, 8, 10, 12, 14, 16, 18,
                                                            20, 22]
    assert _svg.nice_ticks(1, 1, 5) == []
    assert _svg.tick_labels([0.2, 0.4]) == ["0.2", "0.4"]
    assert _svg.tick_labels([-0.25, 0.0, 0.25]) == ["-0.25", "0.00", "0.25"]
    assert _svg.tick_labels([5.0, 10.0]) == ["5", "10"]
    assert _svg.blues(0.0) == "#f7fbff" and _svg.blues(1.0) == "#08306b"
    assert _svg.blues(math.nan) == _svg.blues(0.0)
    assert _svg.log_ticks(2e-5, 0.03)[1] == ["1e-4", "1e-3", "1e-2"]
    assert _svg.log_ticks(2e-3, 3.0)[1] == ["0.01", "0.1", "1"]


def test_curves_without_validation_column(tmp_path: Path) -> None:
    history = [{"phase": "frozen", "epoch": i, "loss": 1.0 / i, "accuracy": 0.1 * i,
                "val_loss": math.nan, "val_accuracy": math.nan} for i in range(1, 4)]
    assert len(report.plot_curves(history, tmp_path)) == 2
    root = _parse((tmp_path / "curves_loss.svg").read_text(encoding="utf-8"))
    assert not _find(root, "circle", "raw val") and not _find(root, "line", "phase-boundary")


# --------------------------------------------------------------------------- calibration

CALIBRATION = {
    "temperature": 1.5, "ece_before": 0.125, "ece_after": 0.0312,
    "bins": [{"lower": 0.5, "upper": 0.75, "confidence": 0.6, "accuracy": 0.4, "count": 10},
             {"lower": 0.75, "upper": 1.0, "confidence": 0.9, "accuracy": 0.7, "count": 20},
             {"lower": 0.0, "upper": 0.5, "confidence": 0.0, "accuracy": 0.0, "count": 0}],
    "bins_after": [{"lower": 0.5, "upper": 0.75, "confidence": 0.55, "accuracy": 0.5,
                    "count": 12},
                   {"lower": 0.75, "upper": 1.0, "confidence": 0.8, "accuracy": 0.78,
                    "count": 18}],
}


def test_reliability_chart() -> None:
    chart = report.reliability_chart(CALIBRATION)
    assert chart is not None and chart.name == "reliability"
    root = _parse(chart.inline())
    _check_accessible(root)
    assert len(_find(root, "rect", "bar before")) == 2  # the empty bin has no bar
    assert len(_find(root, "rect", "bar after")) == 2
    assert len(_find(root, "line", "diagonal")) == 2  # the diagonal and its legend key
    legend = [t for g in _find(root, "g", "legend") for t in _texts(g)]
    assert legend == ["before, ECE 0.125", "after (T=1.50), ECE 0.031", "perfect calibration"]
    assert report.reliability_chart({"bins": []}) is None


def test_report_with_calibration(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    metrics = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
    metrics["calibration"] = CALIBRATION
    (run / "metrics.json").write_text(json.dumps(metrics), encoding="utf-8")
    page = report.build_report(run).read_text(encoding="utf-8")
    assert 'id="calibration"' in page and 'id="chart-reliability"' in page
    section = page.split('id="calibration"')[1].split("</section>")[0]
    assert "0.1250" in section and "0.0312" in section and "1.5000" in section
    assert "0.125 \u2192 0.031" in page  # the header card
    assert (run / "plots" / "reliability.svg").is_file()
    assert len(_inline_svgs(page)) == 5
    del metrics["calibration"]  # a rebuild without calibration drops chart and file
    (run / "metrics.json").write_text(json.dumps(metrics), encoding="utf-8")
    page = report.build_report(run).read_text(encoding="utf-8")
    assert 'id="calibration"' not in page and "reliability" not in page
    assert not (run / "plots" / "reliability.svg").exists()


# --------------------------------------------------------------------------- the HTML report

def test_build_report_writes_html_and_plots(built: tuple[Path, str]) -> None:
    run, page = built
    assert (run / "report.html").is_file()
    for name in ("curves_accuracy.svg", "curves_loss.svg", "learning_rate.svg",
                 "confusion_matrix.svg"):
        assert (run / "plots" / name).is_file(), name
        _check_accessible(_parse((run / "plots" / name).read_text(encoding="utf-8")))
    assert sorted(p.name for p in (run / "plots").iterdir()) == [
        "confusion_matrix.svg", "curves_accuracy.svg", "curves_loss.svg", "learning_rate.svg"]
    svgs = _inline_svgs(page)
    assert len(svgs) >= 4 and page.count("<svg") == len(svgs) == 4
    for root in svgs:
        _check_accessible(root)
    names = [t for root in svgs for t in _texts(root, "row-label")]
    assert names == CLASSES  # the confusion matrix, hostile name included, parsed back
    assert 'id="chart-reliability"' not in page and 'id="calibration"' not in page
    assert page.count('<figure class="loss">') == 3  # the three wrong predictions
    assert page.count("image not available") == 1  # one points to a missing file
    assert page.count("data:image/png;base64,") == 2
    for section in ("Strategy ladder", "Parameters per phase", "BatchNorm", "Training curves",
                    "Test evaluation", "Configuration", "Model summary"):
        assert section in page, section
    assert "cat" in page and "dog" in page
    assert "resnet18" in page and "mystery_key" in page
    assert "BN statistics mismatch" in page and "use --bn recalibrate" in page
    assert "11,178,051" in page  # trainable params of the finetune phase


def test_build_report_does_not_import_matplotlib(tmp_path: Path) -> None:
    """A report is written after every `graft train`: importing matplotlib alone would take
    longer than building every chart as SVG does."""
    run = make_run(tmp_path)
    code = ("import sys; from graftwork.report import build_report; build_report(sys.argv[1]); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('matplotlib', 'torch')))")
    proc = subprocess.run([sys.executable, "-c", code, str(run)], capture_output=True, text=True,
                          timeout=120, check=True)
    assert proc.stdout.strip() == "[]"
    assert (run / "report.html").is_file()


def test_report_ladder_table(built: tuple[Path, str]) -> None:
    _, page = built
    ladder = page.split('id="ladder"')[1].split("</section>")[0]
    assert "best val accuracy" in ladder and "wall time" in ladder
    assert ladder.index("extract") < ladder.index("finetune")
    assert '<tr class="best"><td>finetune</td>' in ladder
    assert "0.8750" in ladder and "1m 20s" in ladder
    assert "frozen skipped: 200 &lt;i&gt;training&lt;/i&gt; images per class." in ladder


def test_report_is_self_contained(built: tuple[Path, str]) -> None:
    _, page = built
    for attribute in re.findall(r'(?:src|href)\s*=\s*"([^"]*)"', page):
        assert attribute.startswith(("data:image/png;base64,", "data:image/jpeg;base64,",
                                     "#")), attribute
    assert "http://" not in page and "https://" not in page
    assert "<script" not in page.lower()


def test_report_escapes_file_contents(built: tuple[Path, str]) -> None:
    _, page = built
    assert "<b>x</b>" not in page
    assert "&lt;b&gt;x&lt;/b&gt;" in page
    assert "conv1 &lt;Conv2d&gt;" in page


def test_report_test_accuracy_from_predictions(built: tuple[Path, str]) -> None:
    _, page = built
    assert "Test accuracy <b>0.6250</b> on 8 images (3 wrong)" in page


def test_build_report_without_optional_files(tmp_path: Path) -> None:
    run = make_run(tmp_path, optional=False)
    page = report.build_report(run).read_text(encoding="utf-8")
    assert "Configuration" in page
    for absent in ('id="ladder"', 'id="curves"', 'id="test"', 'id="bn"', 'id="summary"'):
        assert absent not in page
    assert "data:image/png" not in page
    assert "<svg" not in page and not list((run / "plots").glob("*.svg"))


def test_build_report_with_only_history(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    for name in ("metrics.json", "predictions_test.csv", "summary.txt"):
        (run / name).unlink()
    (run / "config.json").write_text(json.dumps({"classes": ["a", "b"]}), encoding="utf-8")
    page = report.build_report(run, smoothing=0.0).read_text(encoding="utf-8")
    assert 'id="curves"' in page and 'id="test"' not in page
    assert not (run / "plots" / "confusion_matrix.png").exists()
    assert not (run / "plots" / "confusion_matrix.svg").exists()
    assert len(_inline_svgs(page)) == 3  # accuracy, loss, learning rate


def test_build_report_removes_stale_plots(tmp_path: Path) -> None:
    """PNG plots of older versions, and charts a run no longer warrants, do not linger."""
    run = make_run(tmp_path)
    plots = run / "plots"
    plots.mkdir()
    for name in ("curves_accuracy.png", "curves_loss.png", "confusion_matrix.png",
                 "top_losses.png", "reliability.svg"):
        (plots / name).write_bytes(b"old")
    report.build_report(run)
    assert not list(plots.glob("*.png")) and not (plots / "reliability.svg").exists()
    (run / "predictions_test.csv").unlink()
    report.build_report(run)
    assert sorted(p.name for p in plots.iterdir()) == [
        "curves_accuracy.svg", "curves_loss.svg", "learning_rate.svg"]


def _big_run(root: Path) -> Path:
    """A 3-phase, 60-epoch run with 10 classes and 200 test predictions (32x32 images)."""
    run = make_run(root)
    classes = [f"class_{i}" for i in range(10)]
    config = json.loads((run / "config.json").read_text(encoding="utf-8"))
    config["classes"] = classes
    (run / "config.json").write_text(json.dumps(config), encoding="utf-8")
    history = [[phase, e, 1.0 / e, 0.5 + e / 200, 1.1 / e, 0.45 + e / 200,
                10.0 ** -(1 + k + e / 20)]
               for k, phase in enumerate(("extract", "frozen", "finetune")) for e in range(1, 21)]
    _write_csv(run / "history.csv",
               ["phase", "epoch", "loss", "accuracy", "val_loss", "val_accuracy", "lr"], history)
    (run / "images").mkdir(exist_ok=True)
    rows = []
    for i in range(200):
        path = run / "images" / f"big_{i}.jpg"
        Image.new("RGB", (96, 96), (i, 255 - i, 90)).save(path)
        label, pred = classes[i % 10], classes[(i + (i % 7 == 0)) % 10]
        rows.append([f"images/{path.name}", label, pred, 0.5 + (i % 50) / 100, 0.3, 1.2])
    _write_csv(run / "predictions_test.csv",
               ["path", "label", "pred", "prob", "prob_true", "loss"], rows)
    return run


def test_build_report_is_fast(tmp_path: Path) -> None:
    run = _big_run(tmp_path)
    report.build_report(run)  # warm caches and imports
    start = time.perf_counter()
    page = report.build_report(run).read_text(encoding="utf-8")
    elapsed = time.perf_counter() - start
    assert elapsed < 0.5, f"report took {elapsed:.3f} s"
    svgs = _inline_svgs(page)
    assert len(svgs) == 4
    assert len(_find(svgs[3], "rect", "cell")) == 100
    assert page.count('<figure class="loss">') == 16
    assert page.count("data:image/jpeg;base64,") == 16  # thumbnails found relative to the run
    lr = svgs[2]
    assert len(_find(lr, "line", "phase-boundary")) == 2 and "log" in (lr[0].text or "")


def test_build_report_errors(tmp_path: Path) -> None:
    with pytest.raises(RunDirError) as info:
        report.build_report(tmp_path / "nope")
    assert info.value.fix
    with pytest.raises(RunDirError, match=r"config\.json"):
        report.build_report(tmp_path)
    (tmp_path / "config.json").write_text("{broken", encoding="utf-8")
    with pytest.raises(RunDirError):
        report.build_report(tmp_path)
    with pytest.raises(ValueError):
        report.build_report(make_run(tmp_path, "ok"), smoothing=1.0)


# --------------------------------------------------------------------------- listing and comparing

def test_list_runs_finds_and_sorts(tmp_path: Path) -> None:
    make_run(tmp_path, "b_run", created="2024-06-01T00:00:00", val_acc=0.9)
    make_run(tmp_path / "group", "a_run", created="2024-01-01T00:00:00", test_acc=None)
    make_run(tmp_path / "x" / "y" / "z", "too_deep")
    (tmp_path / "not_a_run").mkdir()
    runs = report.list_runs(tmp_path)
    assert [Path(r["path"]).name for r in runs] == ["a_run", "b_run"]
    assert runs[0]["test_accuracy"] is None
    assert runs[1] == {"path": str(tmp_path / "b_run"), "backbone": "resnet18",
                       "strategy": "ladder", "val_accuracy": 0.9, "test_accuracy": 0.625,
                       "wall_time_s": 92.75, "created": "2024-06-01T00:00:00"}
    assert len(report.list_runs(tmp_path, max_depth=4)) == 3
    with pytest.raises(RunDirError):
        report.list_runs(tmp_path / "missing")


def test_format_table() -> None:
    rows = [{"name": "a", "acc": 0.9, "n": 3, "t": None},
            {"name": "long_name", "acc": 0.12345, "n": 12, "t": 1.5}]
    lines = report.format_table(rows, ["name", "acc", "n", "t"]).splitlines()
    assert lines[0].split() == ["name", "acc", "n", "t"]
    assert set(lines[1].replace(" ", "")) == {"-"}
    assert lines[2].split() == ["a", "0.9000", "3", "-"]
    assert lines[3].split() == ["long_name", "0.1235", "12", "1.5000"]
    assert len({len(line) for line in lines[:2]}) == 1  # header and rule line up
    assert lines[2].index("0.9000") == lines[3].index("0.1235")


def test_compare_runs(tmp_path: Path) -> None:
    first = make_run(tmp_path, "r1", backbone="resnet18", val_acc=0.8)
    second = make_run(tmp_path, "r2", backbone="efficientnet_b0", strategy="frozen", val_acc=0.9,
                      test_acc=None)
    header, rows = report.compare_runs([first, second])
    assert header == ["field", "r1", "r2"]
    table = {row[0]: row[1:] for row in rows}
    assert table["backbone"] == ["resnet18", "efficientnet_b0"]
    assert table["strategy"] == ["ladder", "frozen"]
    assert table["val accuracy"] == ["0.8000", "0.9000"]
    assert table["test accuracy"] == ["0.6250", "-"]
    assert table["image size"] == ["224", "224"]
    assert table["recalibrated"][0] == "yes (0.7000 -> 0.8600)"
    assert table["wall time"] == ["1m 33s", "1m 33s"]
    text = report.format_compare(header, rows)
    assert "efficientnet_b0" in text and "weights source" in text
    with pytest.raises(RunDirError):
        report.compare_runs([first, tmp_path / "nope"])


# --------------------------------------------------------------------------- real browser

def test_report_renders_in_chromium(built: tuple[Path, str], tmp_path: Path) -> None:
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("chromium is not installed")
    run, _ = built
    shot = tmp_path / "shot.png"
    cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
           "--no-first-run", "--disable-background-networking", "--disable-component-update",
           "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr",
           "--v=0", f"--screenshot={shot}", "--window-size=1280,2400",
           (run / "report.html").resolve().as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    assert shot.is_file(), proc.stderr[-2000:]
    assert shot.stat().st_size > 10_000
    with Image.open(shot) as img:
        extrema = img.convert("RGB").getextrema()
    assert any(lo != hi for lo, hi in extrema), "screenshot is a single colour"
    console_errors = [line for line in proc.stderr.splitlines()
                      if "CONSOLE" in line and ("ERROR" in line or "Uncaught" in line)]
    assert not console_errors, console_errors


def test_report_ignores_a_damaged_skipped_phases_entry(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    metrics = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
    metrics["skipped_phases"] = ["frozen"]  # edited by hand: not a mapping
    (run / "metrics.json").write_text(json.dumps(metrics), encoding="utf-8")
    page = report.build_report(run).read_text(encoding="utf-8")
    ladder = page.split('id="ladder"')[1].split("</section>")[0]
    assert "skipped:" not in ladder and "finetune" in ladder
