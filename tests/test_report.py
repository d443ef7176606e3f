"""Tests for graftwork.report: smoothing, metrics, plots, the HTML report, listing and comparing."""
from __future__ import annotations

import ast
import csv
import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from graftwork import report
from graftwork.errors import RunDirError
from graftwork.report import _canvas

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
    only graftwork.errors from the rest of the package (the package's own __init__ is outside
    this guarantee), and never torch."""
    modules = sorted(Path(report.__file__).parent.glob("*.py"))
    assert {m.name for m in modules} >= {"__init__.py", "_run.py", "_html.py"}
    imported: set[str] = set()
    for module in modules:
        imported |= _absolute_imports(module, report.__name__)
    assert not any(name.split(".")[0] == "torch" for name in imported)
    outside = {name for name in imported if name.split(".")[0] == "graftwork"
               and name != report.__name__ and not name.startswith(report.__name__ + ".")}
    assert outside == {"graftwork.errors"}


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


# --------------------------------------------------------------------------- top losses

def _rows() -> list[dict[str, Any]]:
    return [{"path": f"p{i}.png", "label": t, "pred": p, "prob": prob, "loss": 1.0}
            for i, (t, p, prob) in enumerate(PREDICTIONS)]


def test_top_losses_most_confidently_wrong_first() -> None:
    worst = report.top_losses(_rows(), n=16)
    assert [r["prob"] for r in worst] == [0.95, 0.80, 0.55]
    assert all(r["label"] != r["pred"] for r in worst)
    assert [r["prob"] for r in report.top_losses(_rows(), n=2)] == [0.95, 0.80]


def test_plot_top_losses_none_when_all_right(tmp_path: Path) -> None:
    rows = [r for r in _rows() if r["label"] == r["pred"]]
    assert report.plot_top_losses(rows, tmp_path) is None
    assert not list(tmp_path.iterdir())


def test_plot_top_losses_survives_unreadable_images(tmp_path: Path) -> None:
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png at all")
    rows = [{"path": str(broken), "label": "a", "pred": "b", "prob": 0.9, "loss": 2.0},
            {"path": str(tmp_path / "missing.png"), "label": "a", "pred": "b", "prob": 0.8,
             "loss": 1.5},
            {"path": "", "label": "$x^2$", "pred": "b", "prob": math.nan, "loss": math.nan}]
    out = report.plot_top_losses(rows, tmp_path / "grid.png", n=4)
    assert out == tmp_path / "grid.png"
    with Image.open(out) as img:
        assert img.size[0] > 100


def test_plot_confusion_ten_classes(tmp_path: Path) -> None:
    classes = [f"class_{i}_with_a_long_name" for i in range(10)]
    labels = [c for c in classes for _ in range(3)]
    preds = [classes[(i + (k == 2)) % 10] for i in range(10) for k in range(3)]
    out = report.plot_confusion(labels, preds, classes, tmp_path)
    assert out.name == "confusion_matrix.png"
    with Image.open(out) as img:
        assert min(img.size) > 500


def test_plot_confusion_many_classes_grows(tmp_path: Path) -> None:
    small = report.plot_confusion(["a", "b"], ["a", "a"], ["a", "b"], tmp_path / "small.png")
    names = [f"c{i}" for i in range(40)]
    big = report.plot_confusion(names, names[1:] + names[:1], names, tmp_path / "big.png")
    with Image.open(small) as s_img, Image.open(big) as b_img:
        assert b_img.size[0] > s_img.size[0] and b_img.size[1] > s_img.size[1]
        # a full row of the darkest colour: every class was predicted as another one
        assert _canvas.blues(1.0) in {rgb for _, rgb in b_img.convert("RGB").getcolors(1 << 20)}


def test_plot_top_losses_shows_the_images(tmp_path: Path) -> None:
    colours = [(200, 30, 30), (30, 160, 40)]
    rows = []
    for i, colour in enumerate(colours):
        path = tmp_path / f"img{i}.jpg"
        Image.new("RGB", (400, 300), colour).save(path, quality=95)
        rows.append({"path": str(path), "label": "a" * 40, "pred": "b", "prob": 0.9 - i / 10,
                     "loss": 1.0})
    out = report.plot_top_losses(rows, tmp_path)
    assert out is not None
    with Image.open(out) as img:
        pixels = img.convert("RGB")
        width = pixels.size[0]
        found = {rgb for _, rgb in pixels.getcolors(1 << 20)}
    assert width > 400
    for colour in colours:  # each image is in the grid, scaled but not recoloured
        assert any(max(abs(a - b) for a, b in zip(rgb, colour, strict=True)) <= 3
                   for rgb in found), colour


# --------------------------------------------------------------------------- history and curves

def test_read_history_and_curves(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    history = report.read_history(run)
    assert len(history) == 7
    assert [r["phase"] for r in history[2:4]] == ["extract", "finetune"]
    assert history[3]["epoch"] == 1
    assert math.isnan(history[4]["val_accuracy"])
    paths = report.plot_curves(history, tmp_path / "plots", smoothing=0.6)
    assert [p.name for p in paths] == ["curves_accuracy.png", "curves_loss.png"]
    for path in paths:
        with Image.open(path) as img:
            assert img.format == "PNG"
    assert report.plot_curves([], tmp_path / "empty") == []


def test_curves_draw_both_series(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    accuracy, _ = report.plot_curves(report.read_history(run), tmp_path / "plots")
    with Image.open(accuracy) as img:
        assert img.size == (768, 504)
        counts = {rgb: n for n, rgb in img.convert("RGB").getcolors(1 << 20)}
    for colour in ("#1f77b4", "#ff7f0e"):  # the smoothed train and validation lines
        assert counts.get(_canvas.rgb(colour), 0) > 200, colour


def test_nice_ticks_and_labels() -> None:
    assert _canvas.nice_ticks(0.05, 1.05, 8) == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])
    assert _canvas.nice_ticks(0.5, 23.5, 11, integer=True) == [2, 4, 6, 8, 10, 12, 14, 16, 18,
                                                               20, 22]
    assert _canvas.nice_ticks(1, 1, 5) == []
    assert _canvas.tick_labels([0.2, 0.4]) == ["0.2", "0.4"]
    assert _canvas.tick_labels([-0.25, 0.0, 0.25]) == ["-0.25", "0.00", "0.25"]
    assert _canvas.tick_labels([5.0, 10.0]) == ["5", "10"]
    assert _canvas.blues(0.0) == (247, 251, 255) and _canvas.blues(1.0) == (8, 48, 107)
    assert _canvas.blues(math.nan) == _canvas.blues(0.0)


def test_curves_without_validation_column(tmp_path: Path) -> None:
    history = [{"phase": "frozen", "epoch": i, "loss": 1.0 / i, "accuracy": 0.1 * i,
                "val_loss": math.nan, "val_accuracy": math.nan} for i in range(1, 4)]
    assert len(report.plot_curves(history, tmp_path)) == 2


# --------------------------------------------------------------------------- the HTML report

def test_build_report_writes_html_and_plots(built: tuple[Path, str]) -> None:
    run, page = built
    assert (run / "report.html").is_file()
    for name in ("curves_accuracy.png", "curves_loss.png", "confusion_matrix.png",
                 "top_losses.png"):
        assert (run / "plots" / name).is_file(), name
    assert page.count("data:image/png;base64,") == 4
    for section in ("Strategy ladder", "Parameters per phase", "BatchNorm", "Training curves",
                    "Test evaluation", "Configuration", "Model summary"):
        assert section in page, section
    assert "cat" in page and "dog" in page
    assert "resnet18" in page and "mystery_key" in page
    assert "BN statistics mismatch" in page and "use --bn recalibrate" in page
    assert "11,178,051" in page  # trainable params of the finetune phase


def test_build_report_does_not_import_matplotlib(tmp_path: Path) -> None:
    """A report is written after every `graft train`: importing matplotlib alone would take
    longer than drawing every plot with Pillow does."""
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


def test_report_is_self_contained(built: tuple[Path, str]) -> None:
    _, page = built
    for attribute in re.findall(r'(?:src|href)\s*=\s*"([^"]*)"', page):
        assert attribute.startswith(("data:image/png;base64,", "#")), attribute
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


def test_build_report_with_only_history(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    for name in ("metrics.json", "predictions_test.csv", "summary.txt"):
        (run / name).unlink()
    (run / "config.json").write_text(json.dumps({"classes": ["a", "b"]}), encoding="utf-8")
    page = report.build_report(run, smoothing=0.0).read_text(encoding="utf-8")
    assert 'id="curves"' in page and 'id="test"' not in page
    assert not (run / "plots" / "confusion_matrix.png").exists()


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
