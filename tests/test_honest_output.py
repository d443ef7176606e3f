"""What graftwork prints is never wrong (issue 29, part B): no NaN as a result, no exit 0
without one, the real reason for a bad file, held-out accuracy only when it is held out."""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from PIL import Image

from graftwork import ImageClassifier
from graftwork.cli import main
from graftwork.data.discover import discover
from graftwork.errors import DataError
from tests.conftest import TINY, make_image_folder


def _strict_json(text: str) -> Any:
    """JSON as RFC 8259 has it: NaN and Infinity are refused."""
    def refuse(name: str) -> None:
        raise ValueError(f"{name} in JSON output")
    return json.loads(text, parse_constant=refuse)


def _graft(*args: object) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args])


def _error(result: Result, *words: str) -> str:
    """Exit code 2, an Error: and a Fix: line, no traceback, and no NaN anywhere."""
    assert result.exit_code == 2, (result.exit_code, result.output)
    assert isinstance(result.exception, SystemExit), result.exception
    assert "Error: " in result.stderr and "Fix: " in result.stderr, result.output
    assert "nan" not in result.stdout.lower(), result.stdout
    for word in words:
        assert word in result.stderr, (word, result.stderr)
    return result.stderr


def _junk(path: Path, data: bytes = b"junk") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@pytest.fixture(scope="module")
def flat(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(DATA, RUN): a tiny run trained on a flat folder (DATA/<class>/*), split by the run."""
    root = tmp_path_factory.mktemp("flat")
    data = make_image_folder(root / "data", counts={"": 10})
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GRAFT_OFFLINE", "1")
        mp.setenv("HF_HUB_OFFLINE", "1")
        run = ImageClassifier(**TINY, epochs=1, cache_dir=str(root / "cache")).fit(data)
        return data, run.save(root / "run")


@pytest.fixture(scope="module")
def no_test(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(DATA, RUN): DATA has train/ and val/ but no test/; the run holds out no test images."""
    root = tmp_path_factory.mktemp("notest")
    data = make_image_folder(root / "data", counts={"train": 6, "val": 3})
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GRAFT_OFFLINE", "1")
        mp.setenv("HF_HUB_OFFLINE", "1")
        run = ImageClassifier(**TINY, epochs=1, cache_dir=str(root / "cache")).fit(data)
        return data, run.save(root / "run")


# ---------------------------------------------------------------- no NaN, no exit 0 without a result
def test_evaluate_without_a_usable_image_is_an_error_not_nan(flat: tuple[Path, Path],
                                                             tmp_path: Path) -> None:
    _, run = flat
    empty = tmp_path / "empty"
    for c in ("class_0", "class_1"):
        (empty / c).mkdir(parents=True)
    _error(_graft("evaluate", run, empty, "--json"), "no images")
    bad = tmp_path / "bad"
    for c in ("class_0", "class_1", "class_2"):
        _junk(bad / c / "x.png")
    for extra in (["--json"], []):
        _error(_graft("evaluate", run, bad, *extra), "none of the 3 images", "not an image")


def test_doctor_recalibrate_and_baseline_without_a_usable_image(flat: tuple[Path, Path],
                                                                tmp_path: Path) -> None:
    _, run = flat
    bad = tmp_path / "bad"
    for c in ("class_0", "class_1", "class_2"):
        for i in range(3):
            _junk(bad / c / f"x{i}.png")
    model = (run / "model.safetensors").read_bytes()
    _error(_graft("doctor", run, bad, "--json"), "no image in")
    _error(_graft("recalibrate", run, bad), "no image in")
    assert (run / "model.safetensors").read_bytes() == model  # nothing saved
    _error(_graft("baseline", bad), "no image of the train split")


def test_json_outputs_are_strict_json(flat: tuple[Path, Path], no_test: tuple[Path, Path]
                                      ) -> None:
    """A run without a test split has no test accuracy: null in JSON, '-' in tables."""
    data, run = flat
    _, run_no_test = no_test
    ok = _graft("evaluate", run, data, "--json")
    assert ok.exit_code == 0, ok.output
    assert set(_strict_json(ok.stdout)) >= {"accuracy", "loss", "n", "skipped"}
    listing = _graft("runs", run_no_test.parent, "--json")
    assert listing.exit_code == 0, listing.output
    (row,) = _strict_json(listing.stdout)
    assert row["test_accuracy"] is None
    table = _graft("compare", run, run_no_test)
    assert table.exit_code == 0 and "nan" not in table.stdout.lower(), table.stdout
    runs = _graft("runs", run_no_test.parent)
    assert runs.exit_code == 0 and "nan" not in runs.stdout.lower(), runs.stdout


def test_runs_json_never_prints_nan(flat: tuple[Path, Path], tmp_path: Path) -> None:
    """A metrics.json holding NaN or Infinity (hand-edited, or written by another tool) is
    listed with null there: strict JSON, and '-' in the table."""
    _, run = flat
    copy = tmp_path / "runs" / "a"
    shutil.copytree(run, copy)
    metrics = json.loads((copy / "metrics.json").read_text())
    metrics["test"]["accuracy"], metrics["wall_time_s"] = float("nan"), float("inf")
    (copy / "metrics.json").write_text(json.dumps(metrics))
    listing = _graft("runs", tmp_path / "runs", "--json")
    assert listing.exit_code == 0, listing.output
    (row,) = _strict_json(listing.stdout)
    assert row["test_accuracy"] is None and row["wall_time_s"] is None
    table = _graft("runs", tmp_path / "runs")
    assert "nan" not in table.stdout.lower() and "inf" not in table.stdout.lower()


# ---------------------------------------------------------------- predict
def test_predict_on_a_folder_without_images_exits_2(flat: tuple[Path, Path],
                                                    tmp_path: Path) -> None:
    _, run = flat
    (tmp_path / "empty").mkdir()
    _error(_graft("predict", run, tmp_path / "empty"), "no image files")
    _junk(tmp_path / "docs" / "notes.txt")
    _error(_graft("predict", run, tmp_path / "docs"), "no image files", "notes.txt")


def test_predict_rows_give_the_real_reason(flat: tuple[Path, Path], tmp_path: Path) -> None:
    data, run = flat
    good = next((data / "class_0").glob("*.png"))
    png = good.read_bytes()
    files = {"empty.png": b"", "text.jpg": b"hello, not a picture",
             "truncated.png": png[:len(png) // 2]}
    paths = [_junk(tmp_path / name, content) for name, content in files.items()]
    res = _graft("predict", run, good, *paths, "--format", "json")
    assert res.exit_code == 0, res.output
    rows = {Path(r["path"]).name: r for r in _strict_json(res.stdout)}
    assert rows[good.name]["label"].startswith("class_")
    assert rows["empty.png"]["error"] == "empty file"
    assert rows["text.jpg"]["error"].startswith("not an image")
    assert rows["truncated.png"]["error"].startswith(("truncated", "corrupt image"))
    # nothing predicted at all: the rows say why, and the exit code says it failed
    res = _graft("predict", run, *paths, "--format", "csv")
    _error(res, "none of the 3 files")
    assert "empty file" in res.stdout


# ---------------------------------------------------------------- held-out accuracy
def test_evaluate_on_the_flat_training_folder_scores_only_its_held_out_split(
        flat: tuple[Path, Path]) -> None:
    data, run = flat
    metrics = json.loads((run / "metrics.json").read_text())
    config = json.loads((run / "config.json").read_text())
    res = _graft("evaluate", run, data, "--json")
    assert res.exit_code == 0, res.output
    result = _strict_json(res.stdout)
    assert result["n"] == config["splits"]["test"] == 6  # not all 30 images
    assert result["accuracy"] == pytest.approx(metrics["test"]["accuracy"], abs=1e-9)
    assert "held-out test split" in result["scored"]
    text = _graft("evaluate", run, data)
    assert text.exit_code == 0 and "held-out test split" in text.stdout


def test_evaluate_on_another_flat_folder_says_it_may_not_be_held_out(
        flat: tuple[Path, Path], tmp_path: Path) -> None:
    _, run = flat
    other = make_image_folder(tmp_path / "other", counts={"": 2}, seed=5)
    result = ImageClassifier.load(run).evaluate(other)
    assert result["n"] == 6 and "not held-out accuracy" in result["scored"]


def test_evaluate_on_train_and_val_without_test_suggests_the_folder(
        no_test: tuple[Path, Path]) -> None:
    data, run = no_test
    text = _error(_graft("evaluate", run, data), "no test/ folder")
    assert str(data / "val") in text.splitlines()[-1]  # the Fix line names the folder to pass


# ---------------------------------------------------------------- split fractions
def test_a_split_error_names_the_images_the_fractions_need(tmp_path: Path) -> None:
    data = make_image_folder(tmp_path / "data", counts={"": 4})
    with pytest.raises(DataError) as err:
        discover(data, val_fraction=0.45, test_fraction=0.45)
    assert "at least 9 images" in err.value.fix
    assert len(discover(make_image_folder(tmp_path / "nine", counts={"": 9}),
                        0.45, 0.45).train) == 3 * 1


@pytest.mark.parametrize("fractions", [(0.2, 0.2), (0.45, 0.45), (0.5, 0.4), (0.9, 0.05),
                                       (0.1, 0.0), (0.0, 0.3), (0.33, 0.33)])
def test_images_needed_is_the_count_from_which_every_split_works(
        fractions: tuple[float, float]) -> None:
    from graftwork.data.discover import _part_sizes, images_needed

    need = images_needed(fractions)
    assert need is not None
    assert all(sum(_part_sizes(fractions, n)) < n for n in range(need, 2000))
    assert need == 1 or sum(_part_sizes(fractions, need - 1)) >= need - 1



def test_extract_without_a_usable_image_exits_2_and_counts_right(tmp_path: Path) -> None:
    """Six files of the same bad bytes: none is "from cache", and nothing extracted is no
    success."""
    bad = tmp_path / "bad"
    for c in ("a", "b"):
        for i in range(3):
            _junk(bad / c / f"x{i}.png", b"the same bad bytes")
    args = ["extract", bad, "--backbone", "test_efficientnet", "--weights", "random",
            "--image-size", "32", "--cache-dir", tmp_path / "cache", "--workers", "0", "-q"]
    _error(_graft(*args), "none of the 6 files", "not an image")
    good = make_image_folder(tmp_path / "good", classes=2, counts={"": 3})
    _junk(good / "class_0" / "bad.png", b"the same bad bytes")
    _junk(good / "class_1" / "bad.png", b"the same bad bytes")
    res = _graft(*[a if a != bad else good for a in args])
    assert res.exit_code == 0, res.output
    assert "6 images, 6 extracted, 0 cached, 2 skipped" in res.stdout, res.stdout


@pytest.mark.parametrize("layout", ["flat", "test"])
def test_evaluate_leaves_out_what_the_run_excluded(layout: str, tmp_path: Path) -> None:
    """A run trained with --exclude: evaluate on its DATA scores the images its test accuracy
    scored (the flat folder is still recognised; DATA/test loses the excluded files)."""
    counts = {"": 10} if layout == "flat" else {"train": 6, "test": 4}
    data = make_image_folder(tmp_path / "data", counts=counts)
    first = sorted((data if layout == "flat" else data / "test").rglob("*.png"))
    listed = tmp_path / "exclude.txt"
    listed.write_text("\n".join(str(p.relative_to(data)) for p in first[::7]) + "\n")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GRAFT_OFFLINE", "1")
        clf = ImageClassifier(**TINY, epochs=1, cache_dir=str(tmp_path / "cache"),
                              exclude=str(listed)).fit(data)
        run = clf.save(tmp_path / "run")
    assert clf.excluded_
    metrics = json.loads((run / "metrics.json").read_text())
    for model in (clf, ImageClassifier.load(run)):
        result = model.evaluate(data)
        assert result["n"] == metrics["test"]["n"]
        assert result["accuracy"] == pytest.approx(metrics["test"]["accuracy"], abs=1e-9)
        assert ("held-out test split" if layout == "flat" else "--exclude left out") \
            in result["scored"]
