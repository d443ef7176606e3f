"""Every file graftwork reads from a run directory or its cache, damaged in each way a disk, an
editor or another version can damage it (truncated, garbage, wrong JSON type, a future format,
an unwritable folder), and the commands that read it: each is a clean ``Error:``/``Fix:`` exit 2,
an ignored optional file, or a clean rebuild of a cache entry -- never a traceback."""
from __future__ import annotations

import errno
import json
import os
import shutil
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner, Result
from safetensors.torch import load_file, save_file

from graftwork.backbones.catalog import create_backbone, register_backbone
from graftwork.backbones.spec import BackboneSpec
from graftwork.cli import main
from tests.cli_runs import CONFIG, MODEL, ok
from graftwork.data.digests import _RACY_S
from tests.conftest import make_image_folder
from tests.test_cli_errors import _friendly_error

NAME = "tiny_hostile"  # registered, with weights from a file: its prepared record is stored
register_backbone(BackboneSpec(name=NAME, arch="test_efficientnet", input_size=32))


pytestmark = pytest.mark.usefixtures("torch_engine")  # eager torch: no ONNX export per test


def _train(data: Path, out: Path, cache: Path, weights: Path, *extra: str) -> Result:
    return CliRunner().invoke(main, ["train", str(data), "--out", str(out), "--cache-dir",
                                     str(cache), "--backbone", NAME, "--weights", str(weights),
                                     "--image-size", "32", "--workers", "0", "-q", "--epochs",
                                     "1", *extra])


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A data set, a weights file, a filled cache (prepared record, its summary, shards, the
    digest index) and a finished run with a report."""
    tmp = tmp_path_factory.mktemp("hostile")
    with pytest.MonkeyPatch.context() as mp:
        for key in ("GRAFT_OFFLINE", "HF_HUB_OFFLINE"):
            mp.setenv(key, "1")
        mp.setenv("GRAFT_ENGINE", "torch")
        data = make_image_folder(tmp / "data", classes=2, counts={"": 6})
        for image in data.rglob("*.png"):  # older than the digest index's "racy" window
            os.utime(image, (time.time() - 60, time.time() - 60))
        settled = max(image.stat().st_ctime for image in data.rglob("*.png"))  # ctime too
        time.sleep(max(0.0, settled + _RACY_S + 0.05 - time.time()))
        torch.manual_seed(0)
        weights = tmp / "w.safetensors"
        trunk = create_backbone(NAME, "random").trunk
        save_file({k: v.contiguous() for k, v in trunk.state_dict().items()}, str(weights))
        ok(_train(data, tmp / "run", tmp / "cache", weights))
    cache = tmp / "cache"
    assert list(cache.glob("backbones/*.safetensors")) and list(cache.glob("backbones/*.txt"))
    assert list(cache.glob("features/*/shard-*")) and (cache / "file-digests.json").is_file()
    return {"data": data, "weights": weights, "cache": cache, "run": tmp / "run"}


def _clean(result: Result) -> Result:
    """Exit 0, or exit 2 with one Error: and one Fix: line; never a traceback."""
    assert "Traceback" not in result.output, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), \
        (result.output, "".join(traceback.format_exception(*result.exc_info)[-12:]))
    if result.exit_code != 0:
        _friendly_error(result)
    return result


# ------------------------------------------------------------------------------ damages
def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _garbage(path: Path) -> None:
    path.write_bytes(b"\xff\xfe\x00garbage\x80\x81" * 10)


def _empty(path: Path) -> None:
    path.write_bytes(b"")


def _json(value: object) -> Callable[[Path], None]:
    return lambda path: path.write_text(json.dumps(value))


DAMAGES: dict[str, Callable[[Path], None]] = {
    "truncated": _truncate, "garbage": _garbage, "empty": _empty,
    "a JSON list": _json([1, 2]), "JSON null": _json(None),
    "wrong inner types": _json({"test": "x", "val": [1], "phases": 5, "bn": 3, "features": [],
                                "skipped": "many", "wall_time_s": "slow", "classes": 7}),
}


def _future(path: Path) -> None:
    cfg = json.loads(path.read_text())
    cfg["graftwork_format"] = 99
    path.write_text(json.dumps(cfg))


def _unsealed(path: Path) -> None:
    cfg = json.loads(path.read_text())
    cfg.pop("integrity")
    path.write_text(json.dumps(cfg))


_BYTES = ("truncated", "garbage", "empty")  # what a text or binary file can suffer
RUN_CASES = [(name, damage, how) for name in ("config.json", "model.safetensors",
                                              "metrics.json", "history.csv",
                                              "predictions_test.csv", "summary.txt")
             for how, damage in DAMAGES.items() if name.endswith(".json") or how in _BYTES]
RUN_CASES += [("config.json", _future, "future format"), ("config.json", _unsealed, "no seal"),
              (".graft.lock", _garbage, "garbage")]


@pytest.mark.parametrize("name,damage,how", RUN_CASES, ids=[f"{n}-{h}" for n, _, h in RUN_CASES])
def test_a_damaged_run_file_is_one_error_or_ignored(shared: dict[str, Path], tmp_path: Path,
                                                    name: str, damage: Callable[[Path], None],
                                                    how: str) -> None:
    run = tmp_path / "run"
    shutil.copytree(shared["run"], run)
    damage(run / name)
    image = next((shared["data"] / "class_0").iterdir())
    sealed = name in (CONFIG, MODEL)
    for args in (["predict", str(run), str(image)], ["evaluate", str(run), str(shared["data"])],
                 ["report", str(run)], ["runs", str(tmp_path)], ["compare", str(run), str(run)],
                 ["doctor", str(run), str(shared["data"])],
                 *([["export", str(run)]] if sealed else [])):  # export's own files: part B
        result = _clean(CliRunner().invoke(main, args))
        if sealed and args[0] in ("predict", "evaluate", "doctor", "export"):
            assert result.exit_code == 2, (args, result.output)  # never trusted
    if name == CONFIG and how in ("future format", "no seal"):
        text = _friendly_error(CliRunner().invoke(main, ["predict", str(run), str(image)]))
        assert ("newer graftwork" if how == "future format" else "integrity seal") in text


def test_a_config_saved_with_a_byte_order_mark_is_read(shared: dict[str, Path],
                                                       tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(shared["run"], run)
    text = (run / CONFIG).read_text(encoding="utf-8")
    (run / CONFIG).write_bytes(b"\xef\xbb\xbf" + text.replace("\n", "\r\n").encode("utf-8"))
    image = next((shared["data"] / "class_0").iterdir())
    assert "class_" in ok(CliRunner().invoke(main, ["predict", str(run), str(image)])).stdout
    ok(CliRunner().invoke(main, ["runs", str(tmp_path)]))


def test_a_damaged_checkpoint_is_one_error_when_resuming(shared: dict[str, Path],
                                                         tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(shared["run"], run)
    staged = run / ".graft-new"
    staged.mkdir()
    shutil.copytree(run / "checkpoints", staged / "checkpoints")
    (ck,) = (staged / "checkpoints").glob("*.pt")
    for damage in (_truncate, _garbage, _empty):
        shutil.copy(run / "checkpoints" / ck.name, ck)
        damage(ck)
        before = (run / MODEL).read_bytes()
        _friendly_error(_train(shared["data"], run, shared["cache"], shared["weights"],
                               "--overwrite", "--resume", "--no-report"), "checkpoint")
        assert (run / MODEL).read_bytes() == before  # the finished run is kept


# ------------------------------------------------------------------------------ the cache
def _meta_types(path: Path) -> None:
    """A well-formed record whose facts have the wrong JSON types."""
    save_file(load_file(str(path)), str(path), metadata={"graftwork": json.dumps(
        {"spec": 5, "weights": [], "feature_dim": "x", "counts": None})})


def _one_dim_shard(path: Path) -> None:
    save_file({"features": torch.zeros(3), "digests": torch.zeros(3, dtype=torch.uint8)},
              str(path), metadata={"checksum": "0"})


CACHE_CASES = [(pattern, damage, how) for pattern in ("backbones/*.safetensors",
                                                      "backbones/*.txt",
                                                      "features/*/shard-*.safetensors",
                                                      "file-digests.json")
               for how, damage in DAMAGES.items() if pattern.endswith(".json") or how in _BYTES]
CACHE_CASES += [("backbones/*.safetensors", _meta_types, "wrong meta types"),
                ("features/*/shard-*.safetensors", _one_dim_shard, "one-dimensional"),
                ("file-digests.json", _json({"/x": [1, 2, 3, 4, "zz"], "/y": "row"}), "bad rows"),
                ("file-digests.lock", _garbage, "garbage")]


@pytest.mark.parametrize("pattern,damage,how", CACHE_CASES,
                         ids=[f"{p}-{h}" for p, _, h in CACHE_CASES])
def test_a_damaged_cache_file_is_rebuilt(shared: dict[str, Path], tmp_path: Path, pattern: str,
                                         damage: Callable[[Path], None], how: str) -> None:
    cache = tmp_path / "cache"
    shutil.copytree(shared["cache"], cache)
    for path in cache.glob(pattern):
        damage(path)
    result = ok(_train(shared["data"], tmp_path / "run", cache, shared["weights"], "--no-report"))
    assert "Traceback" not in result.output
    again = ok(_train(shared["data"], tmp_path / "run2", cache, shared["weights"], "--no-report"))
    assert "features extracted 0" in again.stdout  # rebuilt, then used
    assert json.loads((tmp_path / "run" / CONFIG).read_text())["classes"] == \
        json.loads((shared["run"] / CONFIG).read_text())["classes"]


def test_an_unwritable_run_folder_is_one_error(shared: dict[str, Path], tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A read-only file system (as root ignores permissions, writes fail as they would)."""
    run = tmp_path / "run"
    shutil.copytree(shared["run"], run)
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    real_replace = os.replace

    def read_only(src: object, dst: object) -> None:
        if str(dst).startswith(str(run)):
            raise OSError(errno.EROFS, "Read-only file system", str(dst))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", read_only)
    image = next((shared["data"] / "class_0").iterdir())
    ok(CliRunner().invoke(main, ["predict", str(run), str(image)]))  # reading needs no write
    for args in (["doctor", str(run), str(shared["data"])],
                 ["recalibrate", str(run), str(shared["data"])]):
        _friendly_error(CliRunner().invoke(main, args), "Read-only file system")
    _friendly_error(_train(shared["data"], run, shared["cache"], shared["weights"],
                           "--overwrite"), "Read-only file system")
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before
