"""Every unusable input to ``graft`` is one ``Error:`` line and one ``Fix:`` line, exit code 2."""
from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner, Result
from PIL import Image

from graftwork import ImageClassifier
from graftwork.cli import main
from tests.conftest import TINY, EvilPickle, make_image_folder

TRAIN_TINY = ["--backbone", "test_efficientnet", "--weights", "random", "--image-size", "32",
              "--workers", "0", "-q", "--no-report", "--epochs", "1"]


def _friendly_error(result: Result, *words: str) -> str:
    """Assert exit code 2 with exactly one ``Error:`` line and a ``Fix:`` line; return both."""
    assert result.exit_code == 2, (result.exit_code, result.output)
    assert "Traceback" not in result.output and isinstance(result.exception, SystemExit)
    lines = result.stderr.splitlines()
    errors = [i for i, line in enumerate(lines) if line.startswith("Error: ")]
    assert len(errors) == 1, lines
    i = errors[0]
    assert i + 1 < len(lines) and lines[i + 1].startswith("Fix: ") and len(lines[i + 1]) > 6
    text = "\n".join(lines[i:i + 2])
    for word in words:
        assert word in text, (word, text)
    return text


def _train(data: Path, tmp_path: Path, *extra: str) -> Result:
    return CliRunner().invoke(main, ["train", str(data), "--out", str(tmp_path / "run"),
                                     "--cache-dir", str(tmp_path / "cache"), *TRAIN_TINY, *extra])


def _noise_png(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (10, 200, 30)).save(path)


def _missing(tmp: Path) -> Path:
    return tmp / "no_such_folder"


def _a_file(tmp: Path) -> Path:
    _noise_png(tmp / "one.png")
    return tmp / "one.png"


def _no_classes(tmp: Path) -> Path:
    for i in range(3):
        _noise_png(tmp / "flat" / f"{i}.png")
    return tmp / "flat"


def _one_class(tmp: Path) -> Path:
    return make_image_folder(tmp / "d", classes=1, counts={"": 5})


def _empty_class(tmp: Path) -> Path:
    root = make_image_folder(tmp / "d", classes=2, counts={"": 5})
    (root / "class_2").mkdir()
    return root


def _only_junk_class(tmp: Path) -> Path:
    root = make_image_folder(tmp / "d", classes=2, counts={"": 5})
    (root / "class_2").mkdir()
    (root / "class_2" / "notes.txt").write_text("x")
    (root / "class_2" / ".DS_Store").write_bytes(b"\0")
    return root


def _class_sets_differ(tmp: Path) -> Path:
    root = make_image_folder(tmp / "d", classes=3, counts={"train": 3, "val": 2, "test": 2})
    shutil.rmtree(root / "test" / "class_1")
    return root


def _too_few(tmp: Path) -> Path:
    return make_image_folder(tmp / "d", classes=2, counts={"": 2})


FOLDER_CASES: dict[str, tuple[Callable[[Path], Path], tuple[str, ...]]] = {
    "missing path": (_missing, ("does not exist", "check the path")),
    "file not folder": (_a_file, ("is a file, not a folder", "one sub-folder per class")),
    "no class folders": (_no_classes, ("no class folders", "one sub-folder per class")),
    "one class only": (_one_class, ("only one class", "at least two")),
    "empty class": (_empty_class, ("class_2'", "has no images", "add images")),
    "class of non-images": (_only_junk_class, ("class_2'", "has no images")),
    "class sets differ": (_class_sets_differ, ("test/ classes differ", "missing: ['class_1']",
                                               "same class folders")),
    "too few for split": (_too_few, ("has 2 images, too few", "at least 3 images")),
}


@pytest.mark.parametrize("case", list(FOLDER_CASES))
def test_train_on_a_bad_folder(tmp_path: Path, case: str) -> None:
    make, words = FOLDER_CASES[case]
    _friendly_error(_train(make(tmp_path), tmp_path), *words)
    assert not (tmp_path / "run" / "model.safetensors").exists()


@pytest.mark.parametrize("case", ["missing path", "file not folder", "one class only"])
def test_baseline_on_a_bad_folder(tmp_path: Path, case: str) -> None:
    make, words = FOLDER_CASES[case]
    _friendly_error(CliRunner().invoke(main, ["baseline", str(make(tmp_path))]), *words)


def test_train_with_a_weights_file_holding_pickled_code(tiny_data: Path, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    torch.save({"w": EvilPickle(marker)}, tmp_path / "evil.pth")
    args = [a for a in TRAIN_TINY if a != "random"]
    args[args.index("--weights") + 1:args.index("--weights") + 1] = [str(tmp_path / "evil.pth")]
    result = CliRunner().invoke(main, ["train", str(tiny_data), "--out", str(tmp_path / "run"),
                                       "--cache-dir", str(tmp_path / "cache"), *args])
    _friendly_error(result, "cannot read weights file", "safetensors")
    assert not marker.exists()
    result = CliRunner().invoke(main, ["train", str(tiny_data), "--out", str(tmp_path / "run"),
                                       *[a if a != "random" else str(tmp_path / "nope.pt")
                                         for a in TRAIN_TINY]])
    _friendly_error(result, "not found", "--weights")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("cli_errors")
    data = make_image_folder(tmp / "data")
    clf = ImageClassifier(**TINY, epochs=1, cache_dir=str(tmp / "cache")).fit(data)
    return clf.save(tmp / "run")


def test_predict_and_evaluate_with_a_damaged_run(run_dir: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    _noise_png(tmp_path / "x.png")
    model = run / "model.safetensors"
    model.write_bytes(model.read_bytes()[:1000])
    _friendly_error(CliRunner().invoke(main, ["predict", str(run), str(tmp_path / "x.png")]),
                    "corrupt or does not match", "re-train")
    (run / "config.json").write_text("not json")
    _friendly_error(CliRunner().invoke(main, ["evaluate", str(run), str(tmp_path)]),
                    "config.json", "is corrupt")
    _friendly_error(CliRunner().invoke(main, ["predict", str(tmp_path / "nope"),
                                              str(tmp_path / "x.png")]),
                    "not a run directory", "graft train")


def test_evaluate_on_bad_folders(run_dir: Path, tmp_path: Path) -> None:
    _friendly_error(CliRunner().invoke(main, ["evaluate", str(run_dir), str(tmp_path / "nope")]),
                    "does not exist")
    _noise_png(tmp_path / "other" / "dogs" / "a.png")
    _friendly_error(CliRunner().invoke(main, ["evaluate", str(run_dir), str(tmp_path / "other")]),
                    "['dogs']", "the model knows")


def test_predict_on_a_bad_image_reports_it_per_file(run_dir: Path, tmp_path: Path) -> None:
    _noise_png(tmp_path / "good.png")
    (tmp_path / "bad.jpg").write_bytes(b"")
    result = CliRunner().invoke(main, ["predict", str(run_dir), str(tmp_path / "good.png"),
                                       str(tmp_path / "bad.jpg"), "--format", "csv"])
    assert result.exit_code == 0, result.output
    rows = result.stdout.splitlines()
    assert len(rows) == 3 and rows[2].startswith(str(tmp_path / "bad.jpg"))
    assert rows[2].endswith(",empty file")  # the real reason, as skipped.csv gives it
    _friendly_error(CliRunner().invoke(main, ["predict", str(run_dir), str(tmp_path / "no.png")]),
                    "does not exist")


def test_resume_with_a_corrupt_checkpoint(tiny_data: Path, tmp_path: Path) -> None:
    ck = tmp_path / "run" / "checkpoints"
    ck.mkdir(parents=True)
    (ck / "checkpoint-extract.pt").write_bytes(b"PK\x03\x04 truncated zip")
    _friendly_error(_train(tiny_data, tmp_path, "--resume"), "checkpoint", "is corrupt",
                    "--resume")
