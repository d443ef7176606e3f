"""Bad input files: every kind of bad image is skipped and listed (or, with ``--strict``, one
error), links to folders, identical bad files, a folder without one usable image."""
from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from graftwork import ImageClassifier
from graftwork.cli import main
from graftwork.errors import BadImageError
from tests.cli_runs import CLI_TINY, CONFIG, MODEL, corrupt, ok, train_cli
from tests.conftest import TINY, make_image_folder
from tests.test_cli_errors import _friendly_error
from tests.test_data import bad_files, odd_good_files


pytestmark = pytest.mark.usefixtures("torch_engine")  # eager torch: no ONNX export per test


def messy_folder(root: Path) -> tuple[Path, dict[str, str]]:
    """Good images plus every kind of bad file; returns the root and {bad file: reason word}."""
    make_image_folder(root, classes=3, counts={"train": 6, "val": 3, "test": 3}, size=16)
    expected: dict[str, str] = {}
    bad = bad_files()
    where = ["train/class_0", "train/class_1", "train/class_2", "val/class_0", "test/class_1",
             "train/class_0", "val/class_2"]
    for (name, content), folder in zip(sorted(bad.items()), where):
        (root / folder / name).write_bytes(content)
        expected[f"{folder}/{name}"] = {"zero": "empty file", "trun": "truncated",
                                        "text": "not an image", "html": "not an image",
                                        "bomb": "too many pixels"}[name[:4]]
    for i, (name, content) in enumerate(sorted(odd_good_files().items())):  # usable: not skipped
        (root / "train" / f"class_{i % 3}" / name).write_bytes(content)
    (root / "train" / "class_0" / "notes.txt").write_text("not an image")
    expected["train/class_0/notes.txt"] = "not an image file"
    (root / "train" / "class_1" / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0")
    expected["train/class_1/Thumbs.db"] = "system file"
    (root / "train" / "class_2" / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")  # ignored
    (root / "train" / "class_2" / ".cache").mkdir()  # hidden folder: ignored
    (root / "train" / "class_2" / ".cache" / "junk.png").write_bytes(b"junk")
    os.symlink(root / "train" / "class_1", root / "train" / "class_1" / "loop")
    expected["train/class_1/loop"] = "symlink loop"
    os.symlink(root / "gone.png", root / "test" / "class_0" / "dangling.png")
    expected["test/class_0/dangling.png"] = "broken symlink"
    return root, expected


def _skipped_rows(run: Path) -> dict[str, str]:
    with open(run / "skipped.csv", newline="", encoding="utf-8") as fh:
        return {row["path"]: row["reason"] for row in csv.DictReader(fh)}


def _check_skipped(rows: dict[str, str], root: Path, expected: dict[str, str]) -> None:
    got = {os.path.relpath(p, root): r for p, r in rows.items()}
    assert set(got) == set(expected), set(got) ^ set(expected)
    for rel, word in expected.items():
        assert word in got[rel], (rel, got[rel])


def test_cli_run_completes_on_good_images_and_lists_bad_ones(tmp_path: Path) -> None:
    root, expected = messy_folder(tmp_path / "data")
    run = tmp_path / "run"
    result = CliRunner().invoke(main, ["train", str(root), "--out", str(run), "--epochs", "3",
                                       "--cache-dir", str(tmp_path / "cache"), *CLI_TINY])
    assert result.exit_code == 0, result.output
    _check_skipped(_skipped_rows(run), root, expected)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["skipped"] == len(expected)
    assert f"skipped {len(expected)} bad files" in result.stdout
    config = json.loads((run / "config.json").read_text())
    good_train = 3 * 6 + len(odd_good_files())
    assert config["splits"]["train"] == good_train + 4  # + the 4 bad images put in train/
    assert metrics["test"]["n"] == 3 * 3  # the dangling link and the bad test file left out


def test_frozen_run_skips_bad_images_in_augmented_batches(tmp_path: Path) -> None:
    root, expected = messy_folder(tmp_path / "data")
    clf = ImageClassifier(**TINY, strategy="frozen", epochs=1, batch_size=8,
                          cache_dir=str(tmp_path / "cache")).fit(root)
    run = clf.save(tmp_path / "run")
    _check_skipped(_skipped_rows(run), root, expected)
    assert clf.metrics_["skipped"] == len(expected)


def test_strict_makes_a_bad_image_an_error(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "data", counts={"train": 4, "val": 2, "test": 2})
    (root / "test" / "class_2" / "broken.jpg").write_bytes(b"")  # only in test: still caught
    for strategy in ("extract", "frozen"):
        with pytest.raises(BadImageError, match="broken.jpg: empty file"):
            ImageClassifier(**TINY, strategy=strategy, epochs=1, strict=True,
                            cache_dir=str(tmp_path / "cache")).fit(root)
    result = CliRunner().invoke(main, ["train", str(root), "--out", str(tmp_path / "run"),
                                       "--epochs", "1", "--strict",
                                       "--cache-dir", str(tmp_path / "cache"), *CLI_TINY])
    assert result.exit_code == 2
    assert result.stderr.splitlines()[-2:] == [
        f"Error: {root / 'test' / 'class_2' / 'broken.jpg'}: empty file",
        "Fix: fix or remove the file, or run without --strict"]
    assert "Traceback" not in result.output


def test_non_images_are_not_errors_in_strict_mode(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "data", counts={"train": 4, "val": 2})
    (root / "train" / "class_0" / "notes.txt").write_text("x")
    clf = ImageClassifier(**TINY, epochs=1, strict=True, cache_dir=str(tmp_path / "c")).fit(root)
    assert clf.metrics_["skipped"] == 1


def test_a_link_to_the_data_folder_itself_is_skipped_once(tmp_path: Path) -> None:
    data = make_image_folder(tmp_path / "data", classes=2, counts={"": 6})
    (data / "zself").symlink_to(".")
    out = tmp_path / "R"
    ok(train_cli(data, out, tmp_path / "cache"))
    assert json.loads((out / CONFIG).read_text())["classes"] == ["class_0", "class_1"]
    with open(out / "skipped.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["path"] for r in rows if "zself" in r["path"]] == [str(data / "zself")], rows


def test_every_training_imagecorrupt(tmp_path: Path) -> None:
    data = tmp_path / "data"
    for c in range(2):
        for i in range(4):
            corrupt(data / f"class_{c}" / f"{i}.png", b"\x89PNG junk %d %d" % (c, i))
    out = tmp_path / "R"
    _friendly_error(train_cli(data, out, tmp_path / "cache"), "was skipped", "fix or replace")
    assert not (out / MODEL).exists() and not (out / CONFIG).exists()


def test_every_identical_bad_file_is_listed(tmp_path: Path) -> None:
    data = make_image_folder(tmp_path / "data", classes=2, counts={"": 6})
    for i in range(3):
        corrupt(data / "class_1" / f"same_{i}.png")
    out = tmp_path / "R"
    result = ok(train_cli(data, out, tmp_path / "cache"))
    with open(out / "skipped.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert sorted(r["path"] for r in rows) == [str(data / "class_1" / f"same_{i}.png")
                                               for i in range(3)]
    assert json.loads((out / "metrics.json").read_text())["skipped"] == 3
    assert "skipped 3 bad files" in result.stdout
    assert not math.isnan(json.loads((out / "metrics.json").read_text())["val"]["accuracy"])
