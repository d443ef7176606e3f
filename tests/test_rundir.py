"""The run directory module: safe files, config validation, integrity, lock, --out policy."""
from __future__ import annotations

import copy
import csv
import inspect
import json
import logging
import math
import multiprocessing
import os
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from graftwork.errors import ConfigError, GraftError, ModelFileError, RunDirError
from graftwork.rundir.files import (CHECKPOINTS_DIR, CONFIG_FILE, FORMAT_VERSION, LOCK_FILE,
                                    MODEL_FILE, PLOTS_DIR, RUN_FILES, STAGING_DIR, atomic_file,
                                    csv_safe, read_csv, read_json, read_metrics, write_csv, write_json)
from graftwork.errors import RunBusyError, RunConfigError, RunExistsError, RunModifiedError
from graftwork.rundir.outdir import RunLock, prepare_out
from graftwork.rundir.staging import commit
from graftwork.rundir.config import (check_integrity, config_digest, load_config, seal,
                                     validate_config, write_config)
from tests.conftest import REPO, train_tiny_run

ENV = {**os.environ, "PYTHONPATH": str(REPO / "src")}


# ---------------------------------------------------------------------- a real run
@pytest.fixture(scope="module")
def real_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run saved by graftwork at commit 2a89f13 (config.json format 1, no integrity
    section), committed under tests/fixtures."""
    import shutil

    root = tmp_path_factory.mktemp("real")
    return Path(shutil.copytree(Path(__file__).parent / "fixtures" / "run-2a89f13", root / "run"))


@pytest.fixture(scope="module")
def new_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run saved by the current code (format 2, sealed)."""
    return train_tiny_run(tmp_path_factory.mktemp("new"))


def test_config_of_the_current_code_is_sealed(new_run: Path) -> None:
    cfg = read_json(new_run / CONFIG_FILE)
    assert cfg["graftwork_format"] == FORMAT_VERSION and cfg["integrity"] == seal(new_run)
    assert load_config(new_run, known_params()) == cfg


def known_params() -> set[str]:
    from graftwork.estimator.classifier import ImageClassifier

    return set(inspect.signature(ImageClassifier.__init__).parameters) - {"self"}


@pytest.fixture()
def cfg(real_run: Path) -> dict[str, Any]:
    return read_json(real_run / CONFIG_FILE)


def test_config_of_the_current_code_passes_unchanged(real_run: Path, cfg: dict[str, Any]) -> None:
    before = copy.deepcopy(cfg)
    assert cfg["graftwork_format"] == 1 and "integrity" not in cfg
    assert validate_config(cfg, real_run / CONFIG_FILE, known_params()) is cfg
    assert cfg == before
    assert load_config(real_run, known_params()) == before  # no seal: an old run still loads


def test_sealed_run_loads_and_detects_changes(real_run: Path, tmp_path: Path) -> None:
    import shutil

    from graftwork.estimator.classifier import ImageClassifier

    run = Path(shutil.copytree(real_run, tmp_path / "run"))
    written = write_config(run, read_json(run / CONFIG_FILE))
    assert written["graftwork_format"] == FORMAT_VERSION == 2
    assert written["integrity"] == seal(run)
    assert load_config(run, known_params()) == written
    ImageClassifier.load(run)  # the classifier ignores the new section
    cfg = read_json(run / CONFIG_FILE)
    cfg["classes"] = list(reversed(cfg["classes"]))
    (run / CONFIG_FILE).write_text(json.dumps(cfg))
    with pytest.raises(RunModifiedError) as info:
        load_config(run)
    assert "config.json changed" in info.value.message and "model" not in info.value.message
    assert "--overwrite" in info.value.fix


# ---------------------------------------------------------------------- validate_config
def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    *parents, last = path.split(".")

    def apply(cfg: dict[str, Any]) -> None:
        for key in parents:
            cfg = cfg[key]
        if value is KeyError:
            del cfg[last]
        else:
            cfg[last] = value
    return apply


BAD_CONFIGS = [
    ("graftwork_format", 0, "graftwork_format"), ("graftwork_format", "1", "graftwork_format"),
    ("graftwork_format", True, "graftwork_format"),
    ("classes", ["only"], "classes"), ("classes", ["a", "a"], "classes"),
    ("classes", ["a", ""], "classes"), ("classes", "ab", "classes"), ("classes", ["a", 1], "classes"),
    ("classes", KeyError, "classes"),
    ("backbone", KeyError, "backbone must be present"), ("backbone", "x", "backbone must be a JSON"),
    ("backbone.name", KeyError, "backbone.name"), ("backbone.name", 5, "backbone.name"),
    ("preprocessing.image_size", 15, "preprocessing.image_size"),
    ("preprocessing.image_size", None, "preprocessing.image_size"),
    ("preprocessing.image_size", "32", "preprocessing.image_size"),
    ("preprocessing.mean", [0.5, 0.5], "preprocessing.mean"),
    ("preprocessing.mean", [0.5, 0.5, math.nan], "preprocessing.mean"),
    ("preprocessing.std", [0.2, 0, 0.2], "preprocessing.std"),
    ("preprocessing.crop_pct", 0, "preprocessing.crop_pct"),
    ("preprocessing.crop_pct", 1.5, "preprocessing.crop_pct"),
    ("preprocessing.interpolation", 3, "preprocessing.interpolation"),
    ("head.kind", KeyError, "head.kind"), ("head.hidden", 0, "head.hidden"),
    ("head.hidden", 2.5, "head.hidden"), ("head.dropout", 1, "head.dropout"),
    ("hyperparameters", [], "hyperparameters must be a JSON object"),
    ("hyperparameters.epochs", 0, "epochs (--epochs) must be an integer from 1 to 10000"),
    ("hyperparameters.lr", -1.0, "lr (--lr)"), ("hyperparameters.batch_size", True, "batch_size"),
    ("hyperparameters.val_fraction", 0.85, "val_fraction + test_fraction"),
    ("hyperparameters.augment", "yes", "hyperparameters.augment"),
    ("hyperparameters.no_such_param", 1, "hyperparameters.no_such_param is not a parameter"),
    ("bn_policy.train_bn", KeyError, "bn_policy.train_bn must be present"),
    ("bn_policy.train_bn", "no", "bn_policy.train_bn"),
    ("weights.digest", KeyError, "weights.digest"), ("weights.source", None, "weights.source"),
]


@pytest.mark.parametrize(("field", "value", "expected"), BAD_CONFIGS,
                         ids=[f"{f}={v!r}" for f, v, _ in BAD_CONFIGS])
def test_bad_fields_are_one_clear_error(cfg: dict[str, Any], tmp_path: Path, field: str,
                                        value: Any, expected: str) -> None:
    _set(field, value)(cfg)
    path = tmp_path / "run" / CONFIG_FILE
    with pytest.raises(RunConfigError) as info:
        validate_config(cfg, path, known_params())
    assert str(path) in info.value.message and expected in info.value.message
    assert info.value.fix
    assert isinstance(info.value, (ModelFileError, RunDirError, GraftError))


def test_format_versions(cfg: dict[str, Any], tmp_path: Path) -> None:
    del cfg["graftwork_format"]
    validate_config(cfg, tmp_path / CONFIG_FILE)  # missing: format 1
    cfg["graftwork_format"] = FORMAT_VERSION
    validate_config(cfg, tmp_path / CONFIG_FILE)
    cfg["graftwork_format"] = FORMAT_VERSION + 1
    with pytest.raises(RunConfigError, match=r"written by a newer graftwork \(format 3") as info:
        validate_config(cfg, tmp_path / CONFIG_FILE)
    assert "upgrade graftwork" in info.value.fix
    with pytest.raises(RunConfigError, match="JSON object"):
        validate_config([1, 2], tmp_path / CONFIG_FILE)


def test_unknown_hyperparameters_pass_without_known_params(cfg: dict[str, Any],
                                                           tmp_path: Path) -> None:
    cfg["hyperparameters"]["from_the_future"] = 3
    validate_config(cfg, tmp_path / CONFIG_FILE)
    with pytest.raises(RunConfigError, match="from_the_future"):
        validate_config(cfg, tmp_path / CONFIG_FILE, known_params())


def test_load_config_errors(tmp_path: Path) -> None:
    with pytest.raises(RunDirError, match="not a run directory"):
        load_config(tmp_path)
    (tmp_path / MODEL_FILE).write_bytes(b"x")
    (tmp_path / CONFIG_FILE).write_text("{ truncated")
    with pytest.raises(RunConfigError, match="config.json.* is corrupt"):
        load_config(tmp_path)


# ---------------------------------------------------------------------- integrity
def fake_run(root: Path, cfg: dict[str, Any] | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / MODEL_FILE).write_bytes(b"weights" * 100)
    write_config(root, cfg or {"classes": ["a", "b"], "score": math.nan, "n": (1, 2)})
    return root


def test_seal_and_check(tmp_path: Path) -> None:
    run = fake_run(tmp_path / "run")
    cfg = read_json(run / CONFIG_FILE)
    assert cfg["score"] is None and cfg["n"] == [1, 2]  # cleaned before sealing
    assert cfg["integrity"] == seal(run)
    assert set(cfg["integrity"]) == {MODEL_FILE, "config"}
    assert len(cfg["integrity"][MODEL_FILE]) == 64
    check_integrity(run, cfg)
    text = json.dumps({k: v for k, v in cfg.items() if k != "integrity"}, sort_keys=True,
                      separators=(",", ":"))
    import hashlib
    assert config_digest(cfg) == hashlib.sha256(text.encode()).hexdigest()
    # the seal survives key order and whitespace
    (run / CONFIG_FILE).write_text(json.dumps(dict(reversed(list(cfg.items())))))
    check_integrity(run, read_json(run / CONFIG_FILE))


def test_each_changed_file_is_named(tmp_path: Path) -> None:
    run = fake_run(tmp_path / "run")
    cfg = read_json(run / CONFIG_FILE)
    (run / MODEL_FILE).write_bytes(b"tampered")
    with pytest.raises(RunModifiedError) as info:
        check_integrity(run, cfg)
    assert info.value.message.endswith("model.safetensors' is corrupt or does not match "
                                       "config.json: it changed after the run was saved")
    assert "restore the run directory, or re-train" in info.value.fix
    cfg["classes"] = ["b", "a"]
    with pytest.raises(RunModifiedError, match="config.json and model.safetensors changed"):
        check_integrity(run, cfg)
    (run / MODEL_FILE).unlink()
    with pytest.raises(RunModifiedError, match="model.safetensors"):
        check_integrity(run, read_json(run / CONFIG_FILE))
    cfg.pop("integrity")
    with pytest.raises(RunModifiedError, match="lost its integrity seal"):
        check_integrity(run, cfg)  # format 2 always has one: not trusted without it
    check_integrity(run, {**cfg, "graftwork_format": 1})  # an old run without a seal
    with pytest.raises(RunModifiedError):
        check_integrity(run, {**cfg, "integrity": "garbage"})


def test_write_config_needs_the_model_first(tmp_path: Path) -> None:
    with pytest.raises(RunDirError, match="model.safetensors is not written yet"):
        write_config(tmp_path, {"classes": ["a", "b"]})
    assert not (tmp_path / CONFIG_FILE).exists()


# ---------------------------------------------------------------------- files
def test_csv_formula_injection_is_neutralised(tmp_path: Path) -> None:
    assert csv_safe("=1+1") == "'=1+1" and csv_safe("@SUM(A1)") == "'@SUM(A1)"
    assert csv_safe("-x+1") == "'-x+1" and csv_safe("+x(") == "'+x("
    assert csv_safe("\tx") == "'\tx" and csv_safe("\rx") == "'\rx"
    assert csv_safe(-0.5) == -0.5 and csv_safe(-3) == -3 and csv_safe("cat") == "cat"
    assert csv_safe("") == "" and csv_safe(None) is None
    path = tmp_path / "p.csv"
    write_csv(path, ("path", "=label", "prob"),
              [{"path": "=HYPERLINK(\"http://x\")", "=label": "-cmd|x", "prob": -0.5},
               {"path": "ok.png", "=label": None, "prob": 1e-9, "extra": "ignored"}, {}])
    with open(path, newline="", encoding="utf-8") as fh:
        raw = list(csv.reader(fh))
    assert raw[0] == ["path", "'=label", "prob"]
    assert raw[1] == ["'=HYPERLINK(\"http://x\")", "'-cmd|x", "-0.5"]
    assert raw[2] == ["ok.png", "", "1e-09"] and raw[3] == ["", "", ""]
    assert read_csv(path)[1]["path"] == "ok.png"


def test_json_and_atomic_writes(tmp_path: Path) -> None:
    write_json(tmp_path / "m.json", {"a": math.inf, "b": [math.nan, 1.5], 3: "x"})
    assert read_json(tmp_path / "m.json") == {"a": None, "b": [None, 1.5], "3": "x"}
    target = tmp_path / "t.txt"
    with pytest.raises(RuntimeError), atomic_file(target) as tmp:
        Path(tmp).write_text("partial")
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == [tmp_path / "m.json"]


def test_read_metrics_never_raises(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="graftwork.rundir"):
        assert read_metrics(tmp_path) == {}
        (tmp_path / "metrics.json").write_text("{ broken")
        assert read_metrics(tmp_path) == {}
        (tmp_path / "metrics.json").write_bytes(b"\xff\xfe")
        assert read_metrics(tmp_path) == {}
        (tmp_path / "metrics.json").write_text("[1]")
        assert read_metrics(tmp_path) == {}
    assert len(caplog.records) == 4
    (tmp_path / "metrics.json").write_text('{"test": {"accuracy": 0.5}}')
    assert read_metrics(tmp_path) == {"test": {"accuracy": 0.5}}


# ---------------------------------------------------------------------- lock
HOLDER = """
import sys
from graftwork.rundir.outdir import RunLock
with RunLock(sys.argv[1]):
    print("locked", flush=True)
    sys.stdin.read()
"""


@pytest.fixture()
def holder(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], Path]]:
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(run)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env=ENV)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
    yield proc, run
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def test_lock_held_by_a_live_process(holder: tuple[subprocess.Popen[str], Path]) -> None:
    proc, run = holder
    with pytest.raises(RunBusyError) as info:
        with RunLock(run):
            pass
    assert f"is being written by process {proc.pid} (since " in info.value.message
    assert info.value.fix.startswith("wait for it to finish, or use another --out")
    assert str(run / LOCK_FILE) in info.value.fix
    assert proc.stdin is not None
    proc.stdin.close()
    assert proc.wait(timeout=30) == 0
    assert not (run / LOCK_FILE).exists()  # released by its owner
    with RunLock(run):
        assert json.loads((run / LOCK_FILE).read_text())["pid"] == os.getpid()


def test_lock_content_and_release_on_error(tmp_path: Path) -> None:
    run = tmp_path / "new" / "run"
    with pytest.raises(ValueError), RunLock(run) as lock:
        owner = json.loads(lock.path.read_text())
        assert owner["pid"] == os.getpid() and owner["host"] == socket.gethostname()
        assert owner["started"]
        with pytest.raises(RunBusyError):  # not re-entrant, even in the same process
            RunLock(run).acquire()
        raise ValueError("training failed")
    assert not (run / LOCK_FILE).exists()


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.mark.parametrize("content", ["dead", "garbage", "empty", "no_pid"])
def test_stale_lock_is_taken_over(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                  content: str) -> None:
    texts = {"dead": json.dumps({"pid": _dead_pid(), "host": socket.gethostname(),
                                 "started": "2020-01-01T00:00:00"}),
             "garbage": "\x00not json", "empty": "", "no_pid": '{"host": "x"}'}
    (tmp_path / LOCK_FILE).write_text(texts[content])
    with caplog.at_level(logging.WARNING, logger="graftwork.rundir"):
        with RunLock(tmp_path):
            assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()
    assert "stale lock" in caplog.text
    assert list(tmp_path.iterdir()) == []


def test_a_record_left_on_another_host_is_replaced(tmp_path: Path,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    """The pid-file lock had to respect a record from another host (it could not tell whether
    that process lived); the file lock itself says whether anyone holds it, from any host."""
    (tmp_path / LOCK_FILE).write_text(json.dumps({"pid": _dead_pid(), "host": "elsewhere",
                                                  "started": "2020-01-01T00:00:00"}))
    with caplog.at_level(logging.WARNING, logger="graftwork.rundir"), RunLock(tmp_path):
        assert json.loads((tmp_path / LOCK_FILE).read_text())["host"] == socket.gethostname()
    assert "on elsewhere is gone" in caplog.text and list(tmp_path.iterdir()) == []


def _context() -> Any:
    """Processes that start at once (fork) where there is fork: they only call graftwork."""
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("fork" if "fork" in methods else "spawn")


def _try_lock(run: str, answers: Any) -> None:
    """In another process: take the lock, or say why not."""
    try:
        with RunLock(run):
            answers.put("locked")
    except RunBusyError as exc:
        answers.put(f"{exc.message} | {exc.fix}")


def _hold_lock(run: str, ready: Any) -> None:
    """In another process: hold the lock until killed."""
    import time

    with RunLock(run):
        ready.set()
        time.sleep(600)


def test_a_second_process_is_refused_while_the_first_holds_the_lock(tmp_path: Path) -> None:
    ctx = _context()
    answers = ctx.Queue()
    run = tmp_path / "run"

    def other_process() -> str:
        proc = ctx.Process(target=_try_lock, args=(str(run), answers))
        proc.start()
        proc.join(timeout=120)
        return str(answers.get(timeout=5))

    with RunLock(run):
        answer = other_process()
    assert f"is being written by process {os.getpid()} (since " in answer
    assert "wait for it to finish" in answer and str(run / LOCK_FILE) in answer
    assert other_process() == "locked" and list(run.iterdir()) == []


def test_a_killed_holders_lock_is_free_at_once(tmp_path: Path,
                                                caplog: pytest.LogCaptureFixture) -> None:
    ctx = _context()
    ready = ctx.Event()
    run = tmp_path / "run"
    holder = ctx.Process(target=_hold_lock, args=(str(run), ready))
    holder.start()
    try:
        assert ready.wait(timeout=120)
        with pytest.raises(RunBusyError, match=f"process {holder.pid} "):
            RunLock(run).acquire()
    finally:
        holder.kill()  # SIGKILL: no clean-up runs in the holder
        holder.join()
    assert (run / LOCK_FILE).exists()  # its record stays, but nobody holds the lock
    with caplog.at_level(logging.WARNING, logger="graftwork.rundir"), RunLock(run):
        assert json.loads((run / LOCK_FILE).read_text())["pid"] == os.getpid()
    assert f"process {holder.pid} is gone" in caplog.text and list(run.iterdir()) == []


def test_release_leaves_someone_elses_lock(tmp_path: Path) -> None:
    lock = RunLock(tmp_path)
    lock.acquire()
    (tmp_path / LOCK_FILE).write_text('{"pid": 1, "host": "other"}')  # taken over meanwhile
    lock.release()
    assert (tmp_path / LOCK_FILE).exists()


# ---------------------------------------------------------------------- --out policy
def finished_run(root: Path) -> Path:
    fake_run(root, {"classes": ["a", "b"], "created": "2024-05-06T07:08:09+00:00",
                    "backbone": {"name": "tinynet"}, "strategy": "extract"})
    write_json(root / "metrics.json", {"test": {"accuracy": 0.875}})
    return root


def test_new_and_user_folders_are_fine(tmp_path: Path) -> None:
    prepare_out(tmp_path / "a" / "b", overwrite=False, resume=False)
    assert (tmp_path / "a" / "b").is_dir()
    (tmp_path / "user").mkdir()
    (tmp_path / "user" / "notes.txt").write_text("mine")
    prepare_out(tmp_path / "user", overwrite=False, resume=False)
    prepare_out(tmp_path / "user", overwrite=True, resume=False)
    assert (tmp_path / "user" / "notes.txt").read_text() == "mine"


def test_finished_run_needs_a_flag(tmp_path: Path) -> None:
    run = finished_run(tmp_path / "run")
    with pytest.raises(RunExistsError) as info:
        prepare_out(run, overwrite=False, resume=False)
    assert "already holds a finished run (trained 2024-05-06T07:08:09+00:00, tinynet, " \
           "extract, test accuracy 87.5%)" in info.value.message
    assert info.value.fix == "choose another --out, or pass --overwrite to replace it"
    with pytest.raises(RunExistsError, match="nothing to resume") as info:
        prepare_out(run, overwrite=False, resume=True)
    assert "--overwrite" in info.value.fix
    with pytest.raises(ConfigError, match="cannot be combined"):
        prepare_out(run, overwrite=True, resume=True)
    assert (run / MODEL_FILE).exists()


def test_overwrite_removes_only_graftwork_files(tmp_path: Path) -> None:
    run = finished_run(tmp_path / "run")
    for name in RUN_FILES:
        if name in (PLOTS_DIR, CHECKPOINTS_DIR):
            (run / name).mkdir()
            (run / name / "x.png").write_bytes(b"x")
        elif not (run / name).exists():
            (run / name).write_text("old")
    (run / f".{MODEL_FILE}.123.abcd.tmp").write_bytes(b"partial")
    (run / "notes.txt").write_text("mine")
    (run / "mine").mkdir()
    (run / ".hidden.tmp").write_text("mine too")
    old = {p.name for p in run.iterdir()} - {f".{MODEL_FILE}.123.abcd.tmp"}
    staging = prepare_out(run, overwrite=True, resume=False)
    assert staging == run / STAGING_DIR and list(staging.iterdir()) == []
    assert {p.name for p in run.iterdir()} == old | {STAGING_DIR}  # kept until the new is done
    fake_run(staging, {"classes": ["new", "one"]})
    commit(run, staging)
    assert sorted(p.name for p in run.iterdir()) == sorted([".hidden.tmp", CONFIG_FILE,
                                                            MODEL_FILE, "mine", "notes.txt"])
    cfg = read_json(run / CONFIG_FILE)
    assert cfg["classes"] == ["new", "one"]
    check_integrity(run, cfg)  # the seal holds after the swap


def test_interrupted_run_can_resume(tmp_path: Path) -> None:
    run = tmp_path / "run"
    (run / CHECKPOINTS_DIR).mkdir(parents=True)
    (run / CHECKPOINTS_DIR / "checkpoint-extract.pt").write_bytes(b"x")
    prepare_out(run, overwrite=False, resume=True)
    assert (run / CHECKPOINTS_DIR / "checkpoint-extract.pt").exists()


def test_unusable_out(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(RunDirError, match="is a file, not a folder") as info:
        prepare_out(tmp_path / "file", overwrite=False, resume=False)
    assert "--out" in info.value.fix
    with pytest.raises(RunDirError, match="cannot create run folder"):
        prepare_out(tmp_path / "file" / "run", overwrite=False, resume=False)
    with pytest.raises(RunDirError, match="is a file"):
        RunLock(tmp_path / "file").acquire()


def test_folder_without_write_permission(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import graftwork.rundir

    monkeypatch.setattr(graftwork.rundir.outdir.os, "access", lambda *args: False)  # as if not root
    with pytest.raises(RunDirError, match="cannot write to run folder") as info:
        prepare_out(tmp_path, overwrite=False, resume=False)
    assert "permissions" in info.value.fix


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0,
                    reason="root can write anywhere")
def test_unwritable_out(tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(RunDirError, match="cannot"):
            prepare_out(ro, overwrite=False, resume=False)
        with pytest.raises(RunDirError, match="cannot create"):
            prepare_out(ro / "run", overwrite=False, resume=False)
    finally:
        ro.chmod(0o700)


def test_modules_do_not_import_torch() -> None:
    code = ("import sys, graftwork.rundir, graftwork.params; "
            "print(sorted(m for m in ('torch', 'click', 'numpy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV,
                         check=True).stdout.strip()
    assert out == "[]"
