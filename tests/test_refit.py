"""``refit``: once validation has chosen the model, the same configuration is trained again on
train + val, for the chosen number of epochs (issue 30, item 3)."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from click.testing import CliRunner

from graftwork import ImageClassifier
from graftwork.cli import main as cli
from graftwork.errors import ConfigError
from graftwork.estimator.refit import refit_path
from graftwork.phases.ladder import Climb, Rung
from tests.cli_runs import ok, train_cli
from tests.conftest import TINY, make_image_folder


def _climb(kept: str | None, rows: list[tuple[str, str | None, int]]) -> Climb:
    out = Climb(rows=[{"phase": p, "warm_start": w, "best_epoch": b} for p, w, b in rows])
    out.kept = Rung(kept, 0.5, 0.5, {}, True) if kept else None
    return out


def test_the_refit_path_follows_the_kept_rungs_warm_starts() -> None:
    rows = [("extract", None, 7), ("frozen", "extract", 0), ("finetune", "extract", 3)]
    assert refit_path(_climb("finetune", rows), sequence=True) == ["extract", "finetune"]
    assert refit_path(_climb("extract", rows), sequence=True) == ["extract"]
    rows = [("extract", None, 7), ("frozen", "extract", 2), ("finetune", "frozen", 3)]
    assert refit_path(_climb("finetune", rows), sequence=True) == ["extract", "frozen", "finetune"]
    # outside a sequence the last phase made the model; one that kept its start adds nothing
    assert refit_path(_climb(None, [("extract", None, 5), ("finetune", "extract", 0)]),
                      sequence=False) == ["extract"]


def test_refit_trains_the_chosen_head_on_train_and_val(tiny_data: Path, cache_dir: str,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    plain = ImageClassifier(**TINY, epochs=3, cache_dir=cache_dir).fit(tiny_data)
    with caplog.at_level(logging.INFO):
        clf = ImageClassifier(**TINY, epochs=3, refit=True, cache_dir=cache_dir).fit(tiny_data)
    counts = clf.splits_.counts()
    best = clf.phases_[0]["best_epoch"]
    assert clf.refit_["phases"] == ["extract"] and clf.refit_["epochs"] == {"extract": best}
    assert clf.refit_["train_images"] == counts["train"] + counts["val"]
    assert f"features train: {counts['train'] + counts['val']} images" in caplog.text
    # the validation accuracy is the one measured before the refit (the model it chose)
    assert clf.metrics_["val"] == plain.metrics_["val"] == clf.refit_["val_before_refit"]
    assert clf.metrics_["refit"]["text"].startswith(
        f"refit on train + val ({counts['train'] + counts['val']} images): extract {best} epochs")
    assert clf.history_ == plain.history_  # the curves are the validated run's
    before, after = (m.session_.head.state_dict() for m in (plain, clf))
    assert any(not before[k].equal(after[k]) for k in before)


def test_refit_reruns_fine_tuning_from_pretrained_weights(tiny_data: Path,
                                                          cache_dir: str) -> None:
    clf = ImageClassifier(**TINY, strategy="finetune", epochs=2, refit=True,
                          cache_dir=cache_dir).fit(tiny_data)
    path = clf.refit_["phases"]
    assert path[0] == "extract" and set(path) <= {"extract", "finetune"}
    assert clf.metrics_["test"]["n"] == clf.splits_.counts()["test"]


def test_refit_without_validation_images_is_a_warning(tmp_path: Path, cache_dir: str,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    data = make_image_folder(tmp_path / "data", counts={"train": 8, "test": 4})
    with caplog.at_level(logging.WARNING):
        clf = ImageClassifier(**TINY, epochs=1, refit=True, val_fraction=0.0,
                              cache_dir=cache_dir).fit(data)
    assert clf.refit_ is None and "refit: no validation images" in caplog.text


def test_refit_with_calibrate_is_refused(tiny_data: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="calibrate"):
        ImageClassifier(**TINY, refit=True, calibrate=True).fit(tiny_data)
    res = CliRunner().invoke(cli, ["train", str(tiny_data), "--out", str(tmp_path / "run"),
                                   "--refit", "--calibrate"])
    assert res.exit_code == 2 and not (tmp_path / "run").exists()
    assert res.output.count("Error:") == 1 and "Fix: drop --calibrate or --refit" in res.output


def test_the_run_records_the_refit(tiny_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    res = ok(train_cli(tiny_data, out, tmp_path / "cache", "--refit", "--report"))
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["refit"]["phases"] == ["extract"] and "refit on train + val" in res.output
    config = json.loads((out / "config.json").read_text())
    assert config["hyperparameters"]["refit"] is True
    assert "refit on train + val" in (out / "report.html").read_text()
