"""CSV formula injection: no cell graftwork writes (skipped.csv, predictions, ``predict
--format csv``) starts a formula, whatever the folder, class and file names; cells that cannot
run (numbers, plain words such as ``-x`` or ``+1``) are written unchanged."""
from __future__ import annotations

import csv
import io
import json
import re
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from graftwork.cli import main
from graftwork.rundir.files import csv_safe
from tests.cli_runs import CONFIG, corrupt, ok
from tests.conftest import make_image_folder
from tests.test_cli_errors import TRAIN_TINY


DANGER = "=+-@"
#: A leading + or - followed only by these is a number or a word: it cannot run.
INERT = re.compile(r"[+-][\w .-]*")


def _cells(text: str) -> list[str]:
    return [cell for row in csv.reader(io.StringIO(text)) for cell in row]


def _all_safe(cells: list[str]) -> int:
    """Assert no cell starts a formula; return how many were defused with a quote."""
    defused = 0
    for cell in cells:
        assert not cell or cell[0] not in "=@\t\r", cell
        assert not cell or cell[0] not in "+-" or INERT.fullmatch(cell), cell
        if cell[:1] == "'" and cell[1:2] and cell[1] in DANGER:
            defused += 1
    return defused


GUARDED = ["=SUM(A1:A9)", "=1+1", "@SUM(A1)", "+cmd|' /C calc'!A0", "-2+3+cmd|'/C calc'!A0",
           "+SUM(A1)", "-A1*2", "\tx", "\r=1", '=HYPERLINK("http://evil.example","x")', "-x+y",
           "+1+1", "-(1)", "@x"]
UNCHANGED = ["-1.5", "+1", "-x", "+1e-3", "-2", ".5", "cat", "-x.png", "+cmd.png",
             "-well-known label", "a=b", "x@y", "", "'quoted", "1+1"]


@pytest.mark.parametrize("cell", GUARDED)
def test_a_cell_that_can_run_as_a_formula_is_guarded(cell: str) -> None:
    assert csv_safe(cell) == "'" + cell


@pytest.mark.parametrize("cell", UNCHANGED)
def test_numbers_and_plain_labels_are_written_unchanged(cell: str) -> None:
    assert csv_safe(cell) == cell


def test_csv_cells_never_start_a_formula(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    evil = '=HYPERLINK("evil.example","x")'
    data = make_image_folder(Path("=data"), classes=2, counts={"": 6})
    (data / "class_1").rename(data / evil)
    for name in ("+cmd|x.png", "-x.png", "@x.png", "-1.5.png"):
        shutil.copy(next((data / "class_0").glob("img_*.png")), data / evil / name)
    corrupt(data / evil / "=bad.png")
    out = tmp_path / "R"
    ok(CliRunner().invoke(main, ["train", str(data), "--out", str(out), "--cache-dir",
                                  str(tmp_path / "cache"), *TRAIN_TINY, "--test-fraction", "0.4"]))
    assert _all_safe(_cells((out / "skipped.csv").read_text())) >= 1
    assert _all_safe(_cells((out / "predictions_test.csv").read_text())) >= 2
    images = ["+cmd|x.png", "-x.png", "@x.png", "-1.5.png"]
    for name in images:
        shutil.copy(data / evil / name, Path(name))
    result = ok(CliRunner().invoke(main, ["predict", str(out), "--top-k", "2", "--format",
                                           "csv", "--", *images]))
    cells = _cells(result.stdout)
    assert _all_safe(cells) >= 2 + 4  # two paths, and a label per row
    assert "-x.png" in cells and "-1.5.png" in cells  # a plain name is written as it is
    rows = json.loads(ok(CliRunner().invoke(main, ["predict", str(out), "--top-k", "2",
                                                    "--format", "json", "--", *images])).stdout)
    assert [r["path"] for r in rows] == images
    assert all(t["label"] in ("class_0", evil) for r in rows for t in r["top_k"])
    config = json.loads((out / CONFIG).read_text())
    assert evil in config["classes"]  # the class name itself is kept exactly
