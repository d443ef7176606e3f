"""Replacing a finished run (``--overwrite``) never loses it: a wrong DATA, Ctrl-C, SIGTERM or a
crash leaves the old run whole; the new one is swapped in only once complete; a reader sees the
old run or the new one; SIGTERM is Ctrl-C; leftovers of killed runs are cleaned by the next;
``--out`` inside DATA is refused before anything is written; every file has the same mode."""
from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from graftwork.cli import main
from graftwork.rundir import load_config, load_sealed
from graftwork.rundir.staging import commit
from tests.cli_runs import (CLI_TINY, CONFIG, MODEL, interrupt_at, ok, shared_run,
                            slow_cli_script, train_cli)
from tests.conftest import REPO
from tests.test_cli_errors import _friendly_error


pytestmark = pytest.mark.usefixtures("torch_engine")  # eager torch: no ONNX export per test


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return shared_run(tmp_path_factory.mktemp("replace"))


def _copy(shared: dict[str, Path], tmp_path: Path) -> tuple[Path, dict[str, bytes]]:
    import shutil

    run = tmp_path / "run"
    shutil.copytree(shared["run"], run)
    (run / "notes.txt").write_text("mine")
    return run, _files(run)


def _files(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*"))
            if p.is_file()}


def test_a_wrong_data_path_keeps_the_old_run(shared: dict[str, Path], tmp_path: Path) -> None:
    run, before = _copy(shared, tmp_path)
    _friendly_error(train_cli(tmp_path / "no_such_data", run, shared["cache"], "--overwrite"),
                    "no_such_data")
    assert _files(run) == before  # nothing removed, nothing left beside
    empty = tmp_path / "empty"
    empty.mkdir()
    _friendly_error(train_cli(empty, run, shared["cache"], "--overwrite"))
    assert _files(run) == before and not (run / ".graft-new").exists()


def test_an_interrupted_overwrite_keeps_the_old_run_and_resumes(
        shared: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run, before = _copy(shared, tmp_path)
    common = ["--epochs", "3", "--patience", "100", "--overwrite"]
    with monkeypatch.context() as m:
        interrupt_at(m, "extract", 2)
        result = train_cli(shared["data"], run, shared["cache"], *common)
    assert result.exit_code == 130, result.output
    assert "still holds the previous run" in result.stderr and "--resume" in result.stderr
    assert {k: v for k, v in _files(run).items() if not k.startswith(".graft-new")} == before
    image = next((shared["data"] / "class_0").iterdir())
    ok(CliRunner().invoke(main, ["predict", str(run), str(image)]))  # the old run still works
    _friendly_error(train_cli(shared["data"], run, shared["cache"], "--resume"),
                    "nothing to resume", "--overwrite --resume")
    ok(train_cli(shared["data"], run, shared["cache"], *common, "--resume"))
    after = _files(run)
    assert after[MODEL] != before[MODEL] and after["notes.txt"] == b"mine"
    assert not any(k.startswith(".graft-new") for k in after)
    load_config(run)  # the seal verifies after the swap
    assert not (run / "skipped.csv").exists()  # never mixed with the old run's files


def test_the_swap_is_finished_by_the_next_run_and_readers_never_load_a_mix(
        shared: dict[str, Path], tmp_path: Path) -> None:
    import shutil

    run, before = _copy(shared, tmp_path)
    new = tmp_path / "new"
    ok(train_cli(shared["data"], new, shared["cache"], "--seed", "7"))
    staging = run / ".graft-new"
    shutil.copytree(new, staging)
    (staging / ".complete").write_text(json.dumps({"pid": 1, "remove": []}))
    os.replace(staging / MODEL, run / MODEL)  # killed between the model and its config
    with pytest.raises(Exception, match="half-replaced") as info:
        load_sealed(run, wait_s=0.2)
    assert "graft train" in info.value.fix  # type: ignore[attr-defined]
    image = next((shared["data"] / "class_0").iterdir())
    _friendly_error(CliRunner().invoke(main, ["predict", str(run), str(image)]), "half-replaced")
    result = train_cli(shared["data"], run, shared["cache"])  # the next writer finishes it
    _friendly_error(result, "already holds a finished run")
    assert "finishing the replacement" in result.stderr
    assert (run / MODEL).read_bytes() == (new / MODEL).read_bytes()
    assert (run / CONFIG).read_bytes() == (new / CONFIG).read_bytes()
    assert not staging.exists() and (run / "notes.txt").read_text() == "mine"
    ok(CliRunner().invoke(main, ["predict", str(run), str(image)]))


def test_a_save_over_a_saved_run_is_swapped_in(shared: dict[str, Path], tmp_path: Path) -> None:
    """``recalibrate`` (a save over a saved run) writes beside it and swaps: its own files are
    replaced, the report and the user's files kept, no staging folder left."""
    run, before = _copy(shared, tmp_path)
    ok(CliRunner().invoke(main, ["recalibrate", str(run), str(shared["data"])]))
    assert (run / "notes.txt").read_text() == "mine"
    assert not list(run.glob(".graft-new*"))
    load_config(run)


def test_commit_order_model_then_config(tmp_path: Path) -> None:
    """Moves the model before its config: a reader never sees a config sealing a model that is
    not there yet; folders are replaced whole."""
    run, staging = tmp_path / "run", tmp_path / "run" / ".graft-new"
    (staging / "plots").mkdir(parents=True)
    (run / "plots").mkdir()
    (run / "plots" / "old.svg").write_text("old")
    (staging / "plots" / "new.svg").write_text("new")
    for name in ("history.csv", CONFIG, MODEL):
        (staging / name).write_text(name)
    order: list[str] = []
    real = os.replace

    def spy(src: object, dst: object) -> None:
        order.append(Path(str(dst)).name)
        real(src, dst)

    with pytest.MonkeyPatch.context() as m:
        m.setattr(os, "replace", spy)
        commit(run, staging)
    moved = [n for n in order if n in (MODEL, CONFIG)]
    assert moved == [MODEL, CONFIG]
    assert [p.name for p in (run / "plots").iterdir()] == ["new.svg"]
    assert not staging.exists()


_SLOW = slow_cli_script(0.3)


def test_sigterm_is_handled_like_ctrl_c(shared: dict[str, Path], tmp_path: Path) -> None:
    run, before = _copy(shared, tmp_path)
    args = ["train", str(shared["data"]), "--out", str(run), "--overwrite", "--epochs", "30",
            "--patience", "100", "--cache-dir", str(shared["cache"]), *CLI_TINY]
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "GRAFT_ENGINE": "torch"}
    proc = subprocess.Popen([sys.executable, "-c", _SLOW, *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    ck = run / ".graft-new" / "checkpoints" / "checkpoint-extract.pt"
    deadline = time.monotonic() + 120
    while not ck.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert "Terminated" in err and "--resume" in err and "Traceback" not in err
    assert {k: v for k, v in _files(run).items() if not k.startswith(".graft-new")} == before
    assert ck.is_file() and not (run / ".graft.lock").exists()
    # a temp file of a checkpoint write the kill cut short: removed by the next run
    partial = ck.parent / f".{ck.name}.999999.0123abcd.tmp"
    partial.write_bytes(b"partial")
    ok(train_cli(shared["data"], run, shared["cache"], "--overwrite", "--resume", "--epochs",
                 "30", "--patience", "100"))
    assert not partial.exists() and not list(run.rglob("*.tmp"))
    load_config(run)


@pytest.mark.parametrize("where", ["out", "cache"])
def test_out_inside_data_is_refused_and_data_is_untouched(shared: dict[str, Path],
                                                          tmp_path: Path, where: str) -> None:
    import shutil

    data = tmp_path / "data"
    shutil.copytree(shared["data"], data)
    listing = sorted(str(p) for p in data.rglob("*"))
    out = data / "runs" / "r1" if where == "out" else tmp_path / "run"
    cache = data / "cache" if where == "cache" else shared["cache"]
    for _ in range(2):  # the second run is refused the same way: nothing was left behind
        _friendly_error(train_cli(data, out, cache), "inside DATA",
                        "--out" if where == "out" else "--cache-dir")
    assert sorted(str(p) for p in data.rglob("*")) == listing


def test_every_run_and_cache_file_has_the_same_mode(shared: dict[str, Path],
                                                    tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        out, cache = tmp_path / "run", tmp_path / "cache"
        ok(CliRunner().invoke(main, ["train", str(shared["data"]), "--out", str(out),
                                     "--cache-dir", str(cache), *CLI_TINY, "--epochs", "1"]))
    finally:
        os.umask(old)
    modes = {str(p): stat.S_IMODE(p.stat().st_mode) for root in (out, cache)
             for p in root.rglob("*") if p.is_file()}
    assert any(p.endswith(MODEL) for p in modes) and any("shard-" in p for p in modes)
    assert set(modes.values()) == {0o644}, modes
