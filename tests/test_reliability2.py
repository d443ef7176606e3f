"""Run-directory reliability through the ``graft`` CLI: resume fingerprints, the ``--out``
policy and its lock, symbolic links, numeric flag ranges, unwritable cache and run folders,
edited run files, CSV formula injection and duplicate bad files. Each case failed on 2a89f13."""
from __future__ import annotations

import csv
import io
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from graftwork.cli import main
from tests.conftest import REPO, make_image_folder
from tests.test_cli_errors import TRAIN_TINY, _friendly_error
from tests.test_reliability import _interrupt_at

MODEL, CONFIG = "model.safetensors", "config.json"


def _train(data: Path, out: Path, cache: Path, *extra: str) -> Result:
    return CliRunner().invoke(main, ["train", str(data), "--out", str(out),
                                     "--cache-dir", str(cache), *TRAIN_TINY, *extra])


def _ok(result: Result) -> Result:
    assert result.exit_code == 0, (result.exit_code, result.output, result.exception)
    return result


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One tiny data set, one shared feature cache and one finished run for the module."""
    tmp = tmp_path_factory.mktemp("rel2")
    data = make_image_folder(tmp / "data", classes=2, counts={"": 6})
    cache = tmp / "cache"
    run = tmp / "run"
    _ok(_train(data, run, cache))
    return {"tmp": tmp, "data": data, "cache": cache, "run": run}


def _copy_run(shared: dict[str, Path], tmp_path: Path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(shared["run"], run)
    return run


def _corrupt(path: Path, content: bytes = b"\x89PNG\r\n\x1a\n not really") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)


# ---------------------------------------------------------------- 1. resume fingerprints
def test_resume_refuses_a_checkpoint_of_other_data(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    data_a = make_image_folder(tmp_path / "a", classes=2, counts={"": 6}, seed=0)
    data_b = make_image_folder(tmp_path / "b", classes=3, counts={"": 6}, seed=1)
    data_c = make_image_folder(tmp_path / "c", classes=2, counts={"": 6}, seed=7)
    out, cache = tmp_path / "R", tmp_path / "cache"
    common = ["--epochs", "3", "--patience", "100"]
    with monkeypatch.context() as m:
        _interrupt_at(m, "extract", 2)
        result = _train(data_a, out, cache, *common)
    assert result.exit_code == 130, result.output
    assert (out / "checkpoints").is_dir() and not (out / MODEL).exists()
    text = _friendly_error(_train(data_b, out, cache, *common, "--resume"),
                           "cannot resume", "classes", "--overwrite")
    assert "class_2" in text
    text = _friendly_error(_train(data_c, out, cache, *common, "--resume"), "cannot resume",
                           "data:")
    assert not (out / MODEL).exists()
    _ok(_train(data_a, out, cache, *common, "--resume"))  # the same data resumes
    assert json.loads((out / CONFIG).read_text())["classes"] == ["class_0", "class_1"]


# ---------------------------------------------------------------- 2. --out policy and lock
def test_a_finished_run_is_not_replaced_without_overwrite(tmp_path: Path) -> None:
    data_bad = make_image_folder(tmp_path / "d1", classes=2, counts={"": 6})
    _corrupt(data_bad / "class_0" / "broken.png")
    out, cache = tmp_path / "R", tmp_path / "cache"
    _ok(_train(data_bad, out, cache))
    assert (out / "skipped.csv").is_file() and (out / "predictions_test.csv").is_file()
    before = (out / MODEL).read_bytes()
    data_good = make_image_folder(tmp_path / "d2", classes=2, counts={"": 6}, seed=3)
    _friendly_error(_train(data_good, out, cache), "already holds a finished run", "--overwrite")
    assert (out / MODEL).read_bytes() == before
    _ok(_train(data_good, out, cache, "--overwrite", "--test-fraction", "0"))
    assert not (out / "skipped.csv").exists()  # never mixed with the old run's files
    assert not (out / "predictions_test.csv").exists()
    assert (out / MODEL).read_bytes() != before
    assert not (out / ".graft.lock").exists()


def _hold_lock(out: Path) -> subprocess.Popen[str]:
    code = ("import sys, time\nfrom graftwork.rundir import RunLock\n"
            "with RunLock(sys.argv[1]):\n    print('locked', flush=True)\n    time.sleep(60)\n")
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.Popen([sys.executable, "-c", code, str(out)], stdout=subprocess.PIPE,
                            text=True, env=env)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
    return proc


def test_a_second_writer_fails_fast_and_a_stale_lock_is_taken_over(shared: dict[str, Path],
                                                                    tmp_path: Path) -> None:
    out = tmp_path / "R"
    proc = _hold_lock(out)
    try:
        t0 = time.perf_counter()
        text = _friendly_error(_train(shared["data"], out, shared["cache"]),
                               f"process {proc.pid}", "wait for it to finish")
        assert time.perf_counter() - t0 < 30, text
        assert not (out / MODEL).exists()
    finally:
        proc.kill()
        proc.wait()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    pid = int(dead.stdout)
    (out / ".graft.lock").write_text(json.dumps({"pid": pid, "host": os.uname().nodename,
                                                 "started": "earlier"}))
    result = _ok(_train(shared["data"], out, shared["cache"]))
    assert "stale lock" in result.stderr and f"process {pid} is gone" in result.stderr
    assert (out / MODEL).is_file() and not (out / ".graft.lock").exists()


# ---------------------------------------------------------------- 3. symbolic links
def test_a_link_to_the_data_folder_itself_is_skipped_once(tmp_path: Path) -> None:
    data = make_image_folder(tmp_path / "data", classes=2, counts={"": 6})
    (data / "zself").symlink_to(".")
    out = tmp_path / "R"
    _ok(_train(data, out, tmp_path / "cache"))
    assert json.loads((out / CONFIG).read_text())["classes"] == ["class_0", "class_1"]
    with open(out / "skipped.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["path"] for r in rows if "zself" in r["path"]] == [str(data / "zself")], rows


# ---------------------------------------------------------------- 4. numeric flags
BAD_FLAGS = [
    (["--epochs", "0"], "--epochs"), (["--epochs", "-1"], "--epochs"),
    (["--image-size", "100000"], "--image-size"), (["--batch-size", "0"], "--batch-size"),
    (["--lr", "-1"], "--lr"), (["--image-size", "0"], "--image-size"),
    (["--image-size", "7"], "--image-size"), (["--val-fraction", "1.5"], "--val-fraction"),
    (["--hidden", "0"], "--hidden"), (["--dropout", "1.5"], "--dropout"),
    (["--lr", "nan"], "--lr"), (["--lr", "inf"], "--lr"), (["--workers", "-2"], "--workers"),
]


@pytest.mark.parametrize("args,flag", BAD_FLAGS, ids=[" ".join(a) for a, _ in BAD_FLAGS])
def test_an_out_of_range_flag_is_one_error(shared: dict[str, Path], tmp_path: Path,
                                           args: list[str], flag: str) -> None:
    out = tmp_path / "R"
    result = _train(shared["data"], out, shared["cache"], *args)
    text = _friendly_error(result, flag)
    assert any(w in text for w in ("range", "at least", "at most", "between", "finite")), text
    assert not out.exists()


def test_predict_top_k_zero(shared: dict[str, Path], tmp_path: Path) -> None:
    _friendly_error(CliRunner().invoke(main, ["predict", str(shared["run"]),
                                              str(shared["data"]), "--top-k", "0"]), "--top-k")


def test_every_training_image_corrupt(tmp_path: Path) -> None:
    data = tmp_path / "data"
    for c in range(2):
        for i in range(4):
            _corrupt(data / f"class_{c}" / f"{i}.png", b"\x89PNG junk %d %d" % (c, i))
    out = tmp_path / "R"
    _friendly_error(_train(data, out, tmp_path / "cache"), "was skipped", "fix or replace")
    assert not (out / MODEL).exists() and not (out / CONFIG).exists()


NUMERIC = {"--epochs": "1", "--batch-size": "8", "--lr": "0.01", "--image-size": "32",
           "--hidden": "8", "--dropout": "0.1", "--patience": "1", "--lr-decay": "0.5",
           "--val-fraction": "0.2", "--test-fraction": "0.2", "--seed": "0",
           "--label-smoothing": "0", "--workers": "0"}
_values = st.one_of(
    st.integers(min_value=-10**12, max_value=10**12).map(str),
    st.integers(min_value=-3, max_value=40).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.floats(min_value=-2, max_value=2).map(str),
    st.sampled_from(["nan", "inf", "-inf", "1e308", "1e-320", "", " ", "abc", "0x10", "1_0"]))


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture,
                                 HealthCheck.too_slow])
@given(flag=st.sampled_from(sorted(NUMERIC)), value=_values)
def test_any_numeric_flag_value_trains_or_is_one_error(shared: dict[str, Path], flag: str,
                                                       value: str) -> None:
    if flag == "--epochs" and value.lstrip("+").isdigit() and int(value) > 2:
        value = "2"  # valid but slow: the range itself is covered above
    if flag == "--image-size" and value.isdigit() and 64 < int(value) <= 1024:
        value = "64"
    if flag == "--patience" and value.isdigit() and int(value) > 1:
        value = "1"
    opts = {**NUMERIC, flag: value}
    out = shared["tmp"] / f"prop-{time.time_ns()}"
    args = ["train", str(shared["data"]), "--out", str(out), "--cache-dir", str(shared["cache"]),
            "--backbone", "test_efficientnet", "--weights", "random", "--strategy", "extract",
            "-q", "--no-report"]
    for k, v in opts.items():
        args += [f"{k}={v}"]
    result = CliRunner().invoke(main, args)
    if result.exit_code == 0:
        assert (out / MODEL).is_file(), result.output
    else:
        _friendly_error(result)
    shutil.rmtree(out, ignore_errors=True)


# ---------------------------------------------------------------- 5. unwritable cache and out
def test_an_unwritable_cache_warns_once_and_trains_in_memory(shared: dict[str, Path],
                                                             tmp_path: Path) -> None:
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a file")
    result = _ok(_train(shared["data"], tmp_path / "R", blocker / "cache"))
    assert (tmp_path / "R" / MODEL).is_file()
    assert result.stderr.count("cannot be written") == 1, result.stderr
    assert "Traceback" not in result.output


def test_an_unwritable_out_is_one_error_and_keeps_the_old_run(shared: dict[str, Path],
                                                              tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch
                                                              ) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    _friendly_error(_train(shared["data"], blocker / "R", shared["cache"]), "--out")
    run = _copy_run(shared, tmp_path)
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    real = os.access

    def access(path: Any, mode: int, *a: Any, **k: Any) -> bool:  # root ignores permissions
        return False if Path(path) == run and mode & os.W_OK else real(path, mode, *a, **k)

    monkeypatch.setattr(os, "access", access)
    _friendly_error(_train(shared["data"], run, shared["cache"], "--overwrite"),
                    "cannot write", "permissions")
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before


# ---------------------------------------------------------------- 6. edited run files
def _edit(run: Path, change: Any) -> None:
    cfg = json.loads((run / CONFIG).read_text())
    change(cfg)
    (run / CONFIG).write_text(json.dumps(cfg))


EDITS: dict[str, tuple[Any, tuple[str, ...]]] = {
    "unknown hyperparameter": (lambda c: c["hyperparameters"].update(warp_factor=9),
                               ("hyperparameters.warp_factor", "not a parameter")),
    "no bn_policy": (lambda c: c.pop("bn_policy"), ("bn_policy", "present")),
    "huge image size": (lambda c: c["preprocessing"].update(image_size=100000),
                        ("preprocessing.image_size", "100000")),
    "classes reordered": (lambda c: c["classes"].reverse(), ("was modified", "config.json")),
}


@pytest.mark.parametrize("case", list(EDITS))
def test_an_edited_config_is_one_error(shared: dict[str, Path], tmp_path: Path,
                                       case: str) -> None:
    run = _copy_run(shared, tmp_path)
    change, words = EDITS[case]
    _edit(run, change)
    image = next((shared["data"] / "class_0").iterdir())
    _friendly_error(CliRunner().invoke(main, ["predict", str(run), str(image)]), *words,
                    "re-train")
    _friendly_error(CliRunner().invoke(main, ["evaluate", str(run), str(shared["data"])]),
                    *words)


def test_a_corrupt_metrics_file_does_not_stop_predict(shared: dict[str, Path],
                                                      tmp_path: Path) -> None:
    run = _copy_run(shared, tmp_path)
    (run / "metrics.json").write_text("{not json")
    image = next((shared["data"] / "class_0").iterdir())
    result = _ok(CliRunner().invoke(main, ["predict", str(run), str(image)]))
    assert "no metrics" in result.stderr and "class_" in result.stdout
    _ok(CliRunner().invoke(main, ["evaluate", str(run), str(shared["data"])]))


# ---------------------------------------------------------------- 7. CSV formula injection
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
    _corrupt(data / evil / "=bad.png")
    out = tmp_path / "R"
    _ok(CliRunner().invoke(main, ["train", str(data), "--out", str(out), "--cache-dir",
                                  str(tmp_path / "cache"), *TRAIN_TINY, "--test-fraction", "0.4"]))
    assert _all_safe(_cells((out / "skipped.csv").read_text())) >= 1
    assert _all_safe(_cells((out / "predictions_test.csv").read_text())) >= 2
    images = ["+cmd.png", "-x.png", "@x.png"]
    for name in images:
        shutil.copy(data / evil / name, Path(name))
    result = _ok(CliRunner().invoke(main, ["predict", str(out), "--top-k", "2", "--format",
                                           "csv", "--", *images]))
    assert _all_safe(_cells(result.stdout)) >= 3 + 3  # the paths, and a label per row
    rows = json.loads(_ok(CliRunner().invoke(main, ["predict", str(out), "--top-k", "2",
                                                    "--format", "json", "--", *images])).stdout)
    assert [r["path"] for r in rows] == images
    assert all(t["label"] in ("class_0", evil) for r in rows for t in r["top_k"])
    config = json.loads((out / CONFIG).read_text())
    assert evil in config["classes"]  # the class name itself is kept exactly


# ---------------------------------------------------------------- 8. identical bad files
def test_every_identical_bad_file_is_listed(tmp_path: Path) -> None:
    data = make_image_folder(tmp_path / "data", classes=2, counts={"": 6})
    for i in range(3):
        _corrupt(data / "class_1" / f"same_{i}.png")
    out = tmp_path / "R"
    result = _ok(_train(data, out, tmp_path / "cache"))
    with open(out / "skipped.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert sorted(r["path"] for r in rows) == [str(data / "class_1" / f"same_{i}.png")
                                               for i in range(3)]
    assert json.loads((out / "metrics.json").read_text())["skipped"] == 3
    assert "skipped 3 bad files" in result.stdout
    assert not math.isnan(json.loads((out / "metrics.json").read_text())["val"]["accuracy"])
