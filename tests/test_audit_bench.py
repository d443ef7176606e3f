"""bench/audit/compare.py and score.py: every tool scored the same way, a check a peer lacks
reads "-", and a peer that fails gets a row saying so (the run goes on)."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench" / "audit"))
score = pytest.importorskip("score")
compare = pytest.importorskip("compare")

TRUTH = {"flips": [{"path": "train/a/f1.png"}, {"path": "train/a/f2.png"}],
         "exact": [{"path": "train/a/e1.png", "source": "test/a/s1.png", "kind": "bytes"},
                   {"path": "train/b/e2.bmp", "source": "test/b/s2.png", "kind": "pixels-bmp"}],
         "near": [{"path": "train/a/n1.jpg", "source": "test/a/s3.png", "ops": ["jpeg70"]},
                  {"path": "train/b/n2.png", "source": "test/b/s4.png", "ops": ["crop2"]}],
         "outliers": [{"path": "train/a/o1.png", "source": "photo"}]}


@pytest.fixture()
def planted(tmp_path: Path) -> Path:
    root = tmp_path / "set-s0"
    root.mkdir()
    (root / "truth.json").write_text(json.dumps(TRUTH))
    return root


def test_score_counts_copies_only_grouped_with_their_source(planted: Path) -> None:
    found = {"labels": ["train/a/f1.png", "train/b/x.png"],
             "groups": [{"paths": ["train/a/e1.png", "test/a/s1.png"], "kind": "exact"},
                        {"paths": ["train/b/e2.bmp", "test/b/s2.png"], "kind": "exact"},
                        {"paths": ["train/a/n1.jpg", "test/b/s4.png"], "kind": "near"}],
             "outliers": ["train/a/o1.png", "train/a/f2.png"]}
    row = score.score(planted, found)
    assert (row["label_recall"], row["label_precision"], row["flagged"]) == (0.5, 0.5, 2)
    assert (row["exact_found"], row["exact_pixels_found"]) == ("2/2", "1/1")
    assert row["near_found"] == "0/2"  # n1 sits with another image's source, not its own
    assert (row["groups"], row["near_groups"], row["largest_group"]) == (3, 1, 2)
    assert row["copies_in_largest"] == 1  # ties: the first of the largest groups
    assert (row["outliers_in_list"], row["outlier_list"]) == ("1/1", 2)


def test_a_check_the_tool_lacks_reads_dash(planted: Path) -> None:
    row = {"tool": "peer 1", **score.score(planted, {"labels": None, "outliers": None,
                                                      "groups": []})}
    table = score.markdown([row])
    cells = table.splitlines()[2].strip("| ").split(" | ")
    values = dict(zip(score.COLUMNS, cells))
    assert values["label_recall"] == values["outlier_list"] == "-"
    assert values["near_found"] == "0/2"


def _failing_python(tmp_path: Path) -> str:
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\necho 'ImportError: no fastdup here' >&2\nexit 3\n")
    fake.chmod(0o755)
    return str(fake)


def test_failed_peer_and_failed_install_get_rows(planted: Path, tmp_path: Path) -> None:
    ran = compare.run_peer("fastdup", {"python": _failing_python(tmp_path)}, planted,
                           tmp_path / "work")
    assert ran["error"].startswith("exit 3: ImportError: no fastdup here")
    skipped = compare.run_peer("datalab", {"pins": [], "error": "pip: no matching dist\n..."},
                               planted, tmp_path / "work")
    assert skipped["error"] == "install failed: pip: no matching dist"
    meta: dict[str, Any] = {
        "machine": {"cpu": "cpu", "cores": 2, "platform": "linux", "graftwork_commit": "abc"},
        "load_start": [1.0, 1.0, 1.0], "load_end": [2.0, 2.0, 2.0], "graftwork": "0.1.0",
        "venvs": {"datalab": {"error": "pip: no matching dist"},
                  "fastdup": {"versions": {"fastdup": "2.54"}}}}
    page = compare.report([ran, skipped], meta)
    assert "- fastdup: **failed**: exit 3" in page
    assert "- datalab: not installed: pip: no matching dist" in page
    assert "at start [1.0, 1.0, 1.0], before the first tool None, at end [2.0, 2.0, 2.0]" in page
