"""The run folder (``--out``): a finished run is not replaced without ``--overwrite``, one
writer at a time, unwritable cache and run folders are one error (or a warning)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.cli_runs import MODEL, copy_run, corrupt, ok, shared_run, train_cli
from tests.conftest import REPO, make_image_folder
from tests.test_cli_errors import _friendly_error


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One tiny data set, one shared feature cache and one finished run for the module."""
    return shared_run(tmp_path_factory.mktemp("shared"))


def test_a_finished_run_is_not_replaced_without_overwrite(tmp_path: Path) -> None:
    data_bad = make_image_folder(tmp_path / "d1", classes=2, counts={"": 6})
    corrupt(data_bad / "class_0" / "broken.png")
    out, cache = tmp_path / "R", tmp_path / "cache"
    ok(train_cli(data_bad, out, cache))
    assert (out / "skipped.csv").is_file() and (out / "predictions_test.csv").is_file()
    before = (out / MODEL).read_bytes()
    data_good = make_image_folder(tmp_path / "d2", classes=2, counts={"": 6}, seed=3)
    _friendly_error(train_cli(data_good, out, cache), "already holds a finished run", "--overwrite")
    assert (out / MODEL).read_bytes() == before
    ok(train_cli(data_good, out, cache, "--overwrite", "--test-fraction", "0"))
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
        text = _friendly_error(train_cli(shared["data"], out, shared["cache"]),
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
    result = ok(train_cli(shared["data"], out, shared["cache"]))
    assert "stale lock" in result.stderr and f"process {pid} is gone" in result.stderr
    assert (out / MODEL).is_file() and not (out / ".graft.lock").exists()


def test_an_unwritable_cache_warns_once_and_trains_in_memory(shared: dict[str, Path],
                                                             tmp_path: Path) -> None:
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a file")
    result = ok(train_cli(shared["data"], tmp_path / "R", blocker / "cache"))
    assert (tmp_path / "R" / MODEL).is_file()
    assert result.stderr.count("cannot be written") == 1, result.stderr
    assert "Traceback" not in result.output


def test_an_unwritable_out_is_one_error_and_keeps_the_old_run(shared: dict[str, Path],
                                                              tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch
                                                              ) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    _friendly_error(train_cli(shared["data"], blocker / "R", shared["cache"]), "--out")
    run = copy_run(shared, tmp_path)
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    real = os.access

    def access(path: Any, mode: int, *a: Any, **k: Any) -> bool:  # root ignores permissions
        return False if Path(path) == run and mode & os.W_OK else real(path, mode, *a, **k)

    monkeypatch.setattr(os, "access", access)
    _friendly_error(train_cli(shared["data"], run, shared["cache"], "--overwrite"),
                    "cannot write", "permissions")
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before
