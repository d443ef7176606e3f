"""Helpers for tests that run ``graft`` end to end: tiny trainings through the CLI, a shared
finished run, damaged files, an interrupt at a chosen epoch."""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

import graftwork.training.loop as training
from graftwork.cli import main
from tests.conftest import make_image_folder
from tests.test_cli_errors import TRAIN_TINY

__all__ = ["MODEL", "CONFIG", "CLI_TINY", "train_cli", "ok", "shared_run", "copy_run",
           "corrupt", "interrupt_at", "slow_cli_script"]

MODEL, CONFIG = "model.safetensors", "config.json"
CLI_TINY = ["--backbone", "test_efficientnet", "--weights", "random", "--image-size", "32",
            "--workers", "0", "-q", "--no-report"]


def train_cli(data: Path, out: Path, cache: Path, *extra: str) -> Result:
    """``graft train DATA --out OUT`` on the tiny network, one epoch (``extra`` may change it)."""
    return CliRunner().invoke(main, ["train", str(data), "--out", str(out),
                                     "--cache-dir", str(cache), *TRAIN_TINY, *extra])


def ok(result: Result) -> Result:
    """Assert that the command succeeded (its output and exception otherwise)."""
    assert result.exit_code == 0, (result.exit_code, result.output, result.exception)
    return result


def shared_run(tmp: Path) -> dict[str, Path]:
    """One tiny data set, a feature cache and a finished run under ``tmp`` (for a module's
    tests that only read them)."""
    data = make_image_folder(tmp / "data", classes=2, counts={"": 6})
    cache = tmp / "cache"
    run = tmp / "run"
    ok(train_cli(data, run, cache))
    return {"tmp": tmp, "data": data, "cache": cache, "run": run}


def copy_run(shared: dict[str, Path], tmp_path: Path) -> Path:
    """A copy of the shared run, to damage or edit."""
    run = tmp_path / "run"
    shutil.copytree(shared["run"], run)
    return run


def corrupt(path: Path, content: bytes = b"\x89PNG\r\n\x1a\n not really") -> None:
    """Write a file that looks like a PNG and is not one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)


def interrupt_at(monkeypatch: pytest.MonkeyPatch, phase: str, epoch: int) -> None:
    """Ctrl-C at the start of ``epoch`` of ``phase`` (after epoch-1's checkpoint is saved)."""
    real = training._train_epoch

    def epoch_fn(model: Any, batches: Any, opt: Any, sched: Any, steps: int, desc: str,
                 progress: bool, *rest: Any) -> dict[str, float]:
        if desc.startswith(f"{phase} {epoch}/"):
            raise KeyboardInterrupt
        return real(model, batches, opt, sched, steps, desc, progress, *rest)

    monkeypatch.setattr(training, "_train_epoch", epoch_fn)


def slow_cli_script(seconds: float) -> str:
    """Python source for ``python -c``: the ``graft`` CLI with every training epoch slowed by
    ``seconds``, so a test can signal a real process mid-training."""
    return f"""
import time
import graftwork.training.loop as t
real = t._train_epoch
def slow(*args):
    time.sleep({seconds})
    return real(*args)
t._train_epoch = slow
from graftwork.cli import main
main()
"""
