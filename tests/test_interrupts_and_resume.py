"""Interrupted runs: Ctrl-C and SIGKILL mid-training, then ``--resume`` gives the same model as
an uninterrupted run; a checkpoint of other data is refused."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from graftwork import ImageClassifier
from graftwork.cli import main
from tests.cli_runs import (CLI_TINY, CONFIG, MODEL, interrupt_at, ok, slow_cli_script,
                            train_cli)
from tests.conftest import TINY, make_image_folder
from tests.test_cli_errors import _friendly_error


pytestmark = pytest.mark.usefixtures("torch_engine")  # eager torch: no ONNX export per test


def _same_state(a: ImageClassifier, b: ImageClassifier) -> bool:
    sa, sb = a.model_.state_dict(), b.model_.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("strategy,epochs,schedule", [("extract", 6, "cosine"),
                                                      ("frozen", 3, "none")])
def test_resume_after_interrupt_matches_uninterrupted_run(
        tiny_data: Path, cache_dir: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        strategy: str, epochs: int, schedule: str) -> None:
    params = {**TINY, "strategy": strategy, "epochs": epochs, "patience": 100, "seed": 1,
              "schedule": schedule, "batch_size": 8, "cache_dir": cache_dir}
    full = ImageClassifier(**params).fit(tiny_data)
    ck = tmp_path / "ck"
    with monkeypatch.context() as m:
        interrupt_at(m, strategy, 2)
        with pytest.raises(KeyboardInterrupt):
            ImageClassifier(**params).fit(tiny_data, checkpoint_dir=ck)
    state = torch.load(ck / f"checkpoint-{strategy}.pt", weights_only=True)
    assert state["epoch"] == 1 and len(state["history"]) == 1
    resumed = ImageClassifier(**params).fit(tiny_data, checkpoint_dir=ck, resume=True)
    assert len(resumed.history_) == epochs
    assert resumed.history_ == full.history_
    assert _same_state(resumed, full)
    for split in ("val", "test"):
        assert resumed.metrics_[split] == full.metrics_[split]


def test_cli_resume_after_interrupt_matches_uninterrupted_run(
        tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    common = [str(tiny_data), "--epochs", "5", "--patience", "100", "--seed", "2",
              "--cache-dir", str(tmp_path / "cache"), *CLI_TINY]
    runner = CliRunner()
    assert runner.invoke(main, ["train", "--out", str(tmp_path / "full"), *common]).exit_code == 0
    out = tmp_path / "interrupted"
    with monkeypatch.context() as m:
        interrupt_at(m, "extract", 4)
        result = runner.invoke(main, ["train", "--out", str(out), *common])
    assert result.exit_code == 130
    assert "--resume" in result.stderr and "Traceback" not in result.output
    assert (out / "checkpoints" / "checkpoint-extract.pt").is_file()
    assert not (out / "model.safetensors").exists()
    result = runner.invoke(main, ["train", "--out", str(out), "--resume", *common])
    assert result.exit_code == 0, result.output
    full = json.loads((tmp_path / "full" / "metrics.json").read_text())
    resumed = json.loads((out / "metrics.json").read_text())
    for key in ("val", "test", "skipped"):
        assert resumed[key] == full[key]
    assert (out / "history.csv").read_text() == (tmp_path / "full" / "history.csv").read_text()
    assert (out / "model.safetensors").read_bytes() == \
        (tmp_path / "full" / "model.safetensors").read_bytes()


_SLOW_EPOCHS = slow_cli_script(0.1)


def test_killed_cli_run_resumes_to_the_same_result(tiny_data: Path, tmp_path: Path) -> None:
    """SIGKILL (no clean-up at all) mid-training, then ``--resume``: same final model."""
    import signal
    import subprocess
    import sys
    import time

    common = [str(tiny_data), "--epochs", "12", "--patience", "100", "--seed", "4",
              "--cache-dir", str(tmp_path / "cache"), *CLI_TINY]
    out = tmp_path / "killed"
    env = {**os.environ, "GRAFT_ENGINE": "torch", "GRAFT_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_EPOCHS, "train", "--out", str(out),
                             *common], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    ck = out / "checkpoints" / "checkpoint-extract.pt"
    deadline = time.monotonic() + 120
    while not ck.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.15)
    proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate()
    assert proc.returncode == -signal.SIGKILL, err.decode()
    saved = torch.load(ck, weights_only=True)["epoch"]
    assert 1 <= saved < 12 and not (out / "model.safetensors").exists()
    runner = CliRunner()
    result = runner.invoke(main, ["train", "--out", str(out), "--resume", *common])
    assert result.exit_code == 0, result.output
    full = tmp_path / "full"
    assert runner.invoke(main, ["train", "--out", str(full), *common]).exit_code == 0
    assert (out / "history.csv").read_text() == (full / "history.csv").read_text()
    assert (out / "model.safetensors").read_bytes() == (full / "model.safetensors").read_bytes()


def test_resume_refuses_a_checkpoint_of_other_data(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    data_a = make_image_folder(tmp_path / "a", classes=2, counts={"": 6}, seed=0)
    data_b = make_image_folder(tmp_path / "b", classes=3, counts={"": 6}, seed=1)
    data_c = make_image_folder(tmp_path / "c", classes=2, counts={"": 6}, seed=7)
    out, cache = tmp_path / "R", tmp_path / "cache"
    common = ["--epochs", "3", "--patience", "100"]
    with monkeypatch.context() as m:
        interrupt_at(m, "extract", 2)
        result = train_cli(data_a, out, cache, *common)
    assert result.exit_code == 130, result.output
    assert (out / "checkpoints").is_dir() and not (out / MODEL).exists()
    text = _friendly_error(train_cli(data_b, out, cache, *common, "--resume"),
                           "cannot resume", "classes", "--overwrite")
    assert "class_2" in text
    text = _friendly_error(train_cli(data_c, out, cache, *common, "--resume"), "cannot resume",
                           "data:")
    assert not (out / MODEL).exists()
    ok(train_cli(data_a, out, cache, *common, "--resume"))  # the same data resumes
    assert json.loads((out / CONFIG).read_text())["classes"] == ["class_0", "class_1"]
