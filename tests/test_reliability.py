"""Whole runs on hostile input: bad files skipped and listed, safe loading, cache integrity, resume."""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner

import graftwork.training.loop as training
from graftwork import ImageClassifier
from graftwork.cli import main
from graftwork.errors import BadImageError, ModelFileError
from tests.conftest import TINY, EvilPickle, make_image_folder
from tests.test_data import bad_files, odd_good_files

CLI_TINY = ["--backbone", "test_efficientnet", "--weights", "random", "--image-size", "32",
            "--workers", "0", "-q", "--no-report"]


@pytest.fixture(autouse=True)
def _torch_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    """Eager torch extraction: no per-test ONNX export (the engines agree, tested elsewhere)."""
    monkeypatch.setenv("GRAFT_ENGINE", "torch")


# ------------------------------------------------------------------------------ bad images
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


# ------------------------------------------------------------------------------ safe loading
def _evil_file(path: Path, marker: Path) -> Path:
    torch.save({"conv.weight": torch.zeros(1), "payload": EvilPickle(marker)}, path)
    return path


def test_weights_file_with_pickled_code_is_refused(tmp_path: Path) -> None:
    from graftwork.backbones.weights import read_state_dict

    marker = tmp_path / "pwned"
    with pytest.raises(ModelFileError, match="cannot read weights file"):
        read_state_dict(_evil_file(tmp_path / "evil.pth", marker))
    assert not marker.exists()
    (tmp_path / "bad.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    with pytest.raises(ModelFileError):
        read_state_dict(tmp_path / "bad.safetensors")
    torch.save({"a": torch.zeros(2)}, tmp_path / "ok.pt")
    assert read_state_dict(tmp_path / "ok.pt")["a"].shape == (2,)


@pytest.fixture()
def run_dir(tiny_data: Path, cache_dir: str, tmp_path: Path) -> Path:
    return ImageClassifier(**TINY, epochs=1, cache_dir=cache_dir).fit(tiny_data).save(tmp_path / "r")


def test_corrupt_or_tampered_model_file_is_a_clear_error(run_dir: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    model = run_dir / "model.safetensors"
    good = model.read_bytes()
    marker = tmp_path / "pwned"
    tampered = {
        "truncated": good[: len(good) // 2],
        "garbage": b"\x00" * 100,
        "pickle": _evil_file(tmp_path / "evil.pt", marker).read_bytes(),
    }
    for name, content in tampered.items():
        model.write_bytes(content)
        with pytest.raises(ModelFileError, match="corrupt or does not match"):
            ImageClassifier.load(run_dir)
    assert not marker.exists()
    model.write_bytes(good)
    state = load_file(str(model))
    state[next(iter(state))] = torch.zeros(3, 3)  # wrong shape
    save_file(state, str(model))
    with pytest.raises(ModelFileError):
        ImageClassifier.load(run_dir)
    (run_dir / "config.json").write_text("{ truncated")
    with pytest.raises(ModelFileError, match="config.json"):
        ImageClassifier.load(run_dir)


def test_corrupt_checkpoint_is_a_clear_error(tiny_data: Path, cache_dir: str,
                                             tmp_path: Path) -> None:
    ck = tmp_path / "ck"
    ImageClassifier(**TINY, epochs=2, cache_dir=cache_dir).fit(tiny_data, checkpoint_dir=ck)
    path = ck / "checkpoint-extract.pt"
    good = path.read_bytes()
    marker = tmp_path / "pwned"
    for content in (good[: len(good) // 2], b"garbage",
                    _evil_file(tmp_path / "e.pt", marker).read_bytes()):
        path.write_bytes(content)
        with pytest.raises(ModelFileError, match="checkpoint .* is corrupt"):
            ImageClassifier(**TINY, epochs=2, cache_dir=cache_dir).fit(tiny_data, checkpoint_dir=ck,
                                                                       resume=True)
    assert not marker.exists()
    path.write_bytes(good)
    with pytest.raises(ModelFileError, match="different model"):
        ImageClassifier(**TINY, epochs=2, hidden=8, cache_dir=cache_dir).fit(
            tiny_data, checkpoint_dir=ck, resume=True)


# ------------------------------------------------------------------------------ feature cache
def _extract(backbone: Any, samples: list[Any], cache: str) -> Any:
    from graftwork.features import extract_features

    pre = backbone.spec.preprocessing(32)
    return extract_features(backbone, samples, pre, cache, num_workers=0, progress=False)


@pytest.mark.parametrize("damage", ["flip_data_byte", "truncate", "wrong_checksum", "not_a_file"])
def test_corrupt_cache_shard_is_detected_and_rebuilt(tiny_data: Path, cache_dir: str,
                                                     damage: str) -> None:
    from safetensors.torch import load_file, save_file

    from graftwork import create_backbone
    from graftwork.data.discover import discover

    splits = discover(tiny_data)
    samples = splits.train + splits.val
    backbone = create_backbone(TINY["backbone"], "random")
    first = _extract(backbone, samples, cache_dir)
    assert first.extracted == len(samples)
    (shard,) = Path(cache_dir).glob("features/*/shard-*.safetensors")
    data = bytearray(shard.read_bytes())
    if damage == "flip_data_byte":  # silent bit rot in the tensor bytes: safetensors can't tell
        data[-5] ^= 0xFF
        shard.write_bytes(bytes(data))
    elif damage == "truncate":
        shard.write_bytes(bytes(data[: len(data) * 2 // 3]))
    elif damage == "wrong_checksum":  # well-formed file whose values changed
        tensors = load_file(str(shard))
        tensors["features"] = tensors["features"] + 1
        save_file(tensors, str(shard), metadata={"checksum": "0" * 64})
    else:
        shard.write_bytes(b"")
    second = _extract(backbone, samples, cache_dir)
    assert second.extracted == len(samples) and second.cached == 0
    assert torch.allclose(first.features, second.features)
    assert not shard.exists()
    third = _extract(backbone, samples, cache_dir)
    assert third.extracted == 0 and third.cached == len(samples)


def test_interrupted_shard_write_leaves_no_partial_shard(tiny_data: Path, cache_dir: str,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from graftwork import create_backbone
    from graftwork.data.discover import discover

    samples = discover(tiny_data).train
    backbone = create_backbone(TINY["backbone"], "random")
    real_replace = os.replace

    def killed(src: str, dst: str) -> None:
        if str(dst).endswith(".safetensors"):
            raise KeyboardInterrupt  # the process dies between writing and renaming
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        _extract(backbone, samples, cache_dir)
    monkeypatch.setattr(os, "replace", real_replace)
    assert not list(Path(cache_dir).glob("features/*/*"))  # neither shard nor temp file
    # a stray temp file from a hard kill is ignored
    folder = next(Path(cache_dir).glob("features/*"))
    (folder / "tmpdead.tmp").write_bytes(b"partial")
    assert _extract(backbone, samples, cache_dir).extracted == len(samples)
    assert _extract(backbone, samples, cache_dir).cached == len(samples)


# ------------------------------------------------------------------------------ resume
def _interrupt_at(monkeypatch: pytest.MonkeyPatch, phase: str, epoch: int) -> None:
    """Ctrl-C at the start of ``epoch`` of ``phase`` (after epoch-1's checkpoint is saved)."""
    real = training._train_epoch

    def epoch_fn(model: Any, batches: Any, opt: Any, sched: Any, steps: int, desc: str,
                 progress: bool, *rest: Any) -> dict[str, float]:
        if desc.startswith(f"{phase} {epoch}/"):
            raise KeyboardInterrupt
        return real(model, batches, opt, sched, steps, desc, progress, *rest)

    monkeypatch.setattr(training, "_train_epoch", epoch_fn)


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
        _interrupt_at(m, strategy, 2)
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
        _interrupt_at(m, "extract", 4)
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


_SLOW_EPOCHS = """
import sys, time
import graftwork.training.loop as t
real = t._train_epoch
def slow(*args):
    time.sleep(0.1)
    return real(*args)
t._train_epoch = slow
from graftwork.cli import main
main()
"""


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
