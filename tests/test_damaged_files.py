"""Damaged or tampered files are one clear error, or rebuilt: weights with pickled code, model
files, checkpoints, feature-cache shards (also half-written ones), edited run files."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner

from graftwork import ImageClassifier
from graftwork.cli import main
from graftwork.errors import ModelFileError
from tests.cli_runs import CONFIG, copy_run, ok, shared_run
from tests.conftest import TINY, EvilPickle
from tests.test_cli_errors import _friendly_error


pytestmark = pytest.mark.usefixtures("torch_engine")  # eager torch: no ONNX export per test


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One tiny data set, one shared feature cache and one finished run for the module."""
    return shared_run(tmp_path_factory.mktemp("shared"))


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
    clf = ImageClassifier(**TINY, epochs=1, cache_dir=cache_dir).fit(tiny_data)
    return clf.save(tmp_path / "r")


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


# ------------------------------------------------------------------------------ edited run files
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
    run = copy_run(shared, tmp_path)
    change, words = EDITS[case]
    _edit(run, change)
    image = next((shared["data"] / "class_0").iterdir())
    _friendly_error(CliRunner().invoke(main, ["predict", str(run), str(image)]), *words,
                    "re-train")
    _friendly_error(CliRunner().invoke(main, ["evaluate", str(run), str(shared["data"])]),
                    *words)


def test_a_corrupt_metrics_file_does_not_stop_predict(shared: dict[str, Path],
                                                      tmp_path: Path) -> None:
    run = copy_run(shared, tmp_path)
    (run / "metrics.json").write_text("{not json")
    image = next((shared["data"] / "class_0").iterdir())
    result = ok(CliRunner().invoke(main, ["predict", str(run), str(image)]))
    assert "no metrics" in result.stderr and "class_" in result.stdout
    ok(CliRunner().invoke(main, ["evaluate", str(run), str(shared["data"])]))
