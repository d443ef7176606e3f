"""CSV formula injection: no cell graftwork writes (skipped.csv, predictions, ``predict
--format csv``) starts a formula, whatever the folder, class and file names."""
from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from graftwork.cli import main
from tests.cli_runs import CONFIG, corrupt, ok
from tests.conftest import make_image_folder
from tests.test_cli_errors import TRAIN_TINY


DANGER = "=+-@"


def _cells(text: str) -> list[str]:
    return [cell for row in csv.reader(io.StringIO(text)) for cell in row]


def _all_safe(cells: list[str]) -> int:
    """Assert no cell starts a formula; return how many were defused with a quote."""
    defused = 0
    for cell in cells:
        assert not cell or cell[0] not in DANGER, cell
        if cell[:1] == "'" and cell[1:2] and cell[1] in DANGER:
            defused += 1
    return defused


def test_csv_cells_never_start_a_formula(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    evil = '=HYPERLINK("evil.example","x")'
    data = make_image_folder(Path("=data"), classes=2, counts={"": 6})
    (data / "class_1").rename(data / evil)
    for name in ("+cmd.png", "-x.png", "@x.png"):
        shutil.copy(next((data / "class_0").glob("img_*.png")), data / evil / name)
    corrupt(data / evil / "=bad.png")
    out = tmp_path / "R"
    ok(CliRunner().invoke(main, ["train", str(data), "--out", str(out), "--cache-dir",
                                  str(tmp_path / "cache"), *TRAIN_TINY, "--test-fraction", "0.4"]))
    assert _all_safe(_cells((out / "skipped.csv").read_text())) >= 1
    assert _all_safe(_cells((out / "predictions_test.csv").read_text())) >= 2
    images = ["+cmd.png", "-x.png", "@x.png"]
    for name in images:
        shutil.copy(data / evil / name, Path(name))
    result = ok(CliRunner().invoke(main, ["predict", str(out), "--top-k", "2", "--format",
                                           "csv", "--", *images]))
    assert _all_safe(_cells(result.stdout)) >= 3 + 3  # the paths, and a label per row
    rows = json.loads(ok(CliRunner().invoke(main, ["predict", str(out), "--top-k", "2",
                                                    "--format", "json", "--", *images])).stdout)
    assert [r["path"] for r in rows] == images
    assert all(t["label"] in ("class_0", evil) for r in rows for t in r["top_k"])
    config = json.loads((out / CONFIG).read_text())
    assert evil in config["classes"]  # the class name itself is kept exactly
