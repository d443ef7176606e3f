"""Run directories written by older graftwork versions still load, predict and report."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from graftwork import ImageClassifier
from graftwork.cli import main

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture()
def old_run(tmp_path: Path) -> Path:
    """The tiny finetune run saved by commit 2a89f13 (format 1: no integrity section)."""
    return Path(shutil.copytree(FIXTURES / "run-2a89f13", tmp_path / "run"))


def test_run_of_2a89f13_loads_and_predicts_the_same(old_run: Path) -> None:
    expected = json.loads((FIXTURES / "run-2a89f13-expected.json").read_text())
    clf = ImageClassifier.load(old_run)
    assert clf.classes_ == ["class_0", "class_1", "class_2"]
    got = clf.predict([FIXTURES / "run-2a89f13-images"], top_k=3)
    assert len(got) == len(expected["predictions"])
    for g, e in zip(got, expected["predictions"]):
        assert Path(g["path"]).relative_to(FIXTURES).as_posix() == e["path"]
        assert g["label"] == e["label"]
        assert [t["label"] for t in g["top_k"]] == [t["label"] for t in e["top_k"]]
        np.testing.assert_allclose([t["prob"] for t in g["top_k"]],
                                   [t["prob"] for t in e["top_k"]], atol=1e-6)
    result = clf.evaluate(FIXTURES / "run-2a89f13-images")
    assert result["accuracy"] == pytest.approx(expected["evaluate"]["accuracy"])
    assert result["loss"] == pytest.approx(expected["evaluate"]["loss"], abs=1e-5)
    proba = clf.predict_proba(FIXTURES / "run-2a89f13-images")
    assert proba.shape == (6, 3) and np.allclose(proba.sum(1), 1, atol=1e-5)


def test_old_run_through_the_cli(old_run: Path) -> None:
    images = FIXTURES / "run-2a89f13-images"
    for args in (["predict", str(old_run), str(images), "--format", "json"],
                 ["evaluate", str(old_run), str(images), "--json"],
                 ["report", str(old_run)], ["runs", str(old_run.parent)],
                 ["compare", str(old_run), str(old_run)]):
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 0, (args, result.output)
    html = (old_run / "report.html").read_text()
    assert html.count("<svg") >= 4
