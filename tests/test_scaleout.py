"""Scaling out: sharded extraction by several processes into one cache, a merged digest index,
and the Ray engine (its actors run where ``ray`` is installed: ``make test`` installs it)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import TINY, make_image_folder
from graftwork.data import digests as _digests
from graftwork.data.discover import Sample
from graftwork.errors import ConfigError
from graftwork.features.folder import parse_shard, shard_from_env, shard_samples

REPO = Path(__file__).resolve().parents[1]
TINY_CLI = ["--backbone", "test_efficientnet", "--weights", "random", "--image-size", "32",
            "--workers", "0"]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT")}
    env["PYTHONPATH"] = str(REPO / "src") + os.pathsep + env.get("PYTHONPATH", "")
    env.update(GRAFT_OFFLINE="1", HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    return env


def _old_files(root: Path) -> list[str]:
    """Every image under ``root``, settled (not "racy": their digests are remembered): made
    old, and waited for until their ctime, which no program can set back, is old enough."""
    files = sorted(str(p) for p in root.rglob("*.png"))
    for p in files:
        os.utime(p, (1_600_000_000, 1_600_000_000))
    changed = max(os.stat(p).st_ctime for p in files)
    time.sleep(max(0.0, changed + _digests._RACY_S + 0.05 - time.time()))
    return files


def test_shards_are_disjoint_and_cover() -> None:
    samples = [Sample(f"/d/{c}/{i}.png", c) for c in range(3) for i in range(7)]
    parts = [shard_samples(samples[::-1], (i, 4)) for i in range(4)]
    paths = [s.path for part in parts for s in part]
    assert sorted(paths) == sorted(s.path for s in samples) and len(set(paths)) == len(paths)
    assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_shard_parsing_and_environment() -> None:
    assert parse_shard("1/3") == (1, 3)
    for bad in ("3/3", "x", "1/0", "-1/2"):
        with pytest.raises(ConfigError):
            parse_shard(bad)
    assert shard_from_env({}) == (0, 1)
    assert shard_from_env({"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_COUNT": "4",
                           "SLURM_ARRAY_TASK_MIN": "3"}) == (2, 4)
    assert shard_from_env({"RANK": "1", "WORLD_SIZE": "2"}) == (1, 2)


def test_concurrent_index_writers_lose_nothing(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Two "processes" (separate in-memory indexes) write one index: both sets survive."""
    monkeypatch.setattr(_digests, "_RACY_S", 0.0)  # files just written count as settled
    files = []
    for i in range(6):
        p = tmp_path / f"{i}.bin"
        p.write_bytes(bytes([i]) * 100)
        os.utime(p, (1_600_000_000, 1_600_000_000))
        files.append(str(p))
    cache = tmp_path / "cache"
    _digests.file_digests(files[:3], cache)  # process A loads and writes its index
    monkeypatch.setattr(_digests, "_INDEXES", {})  # process B: loaded before A wrote...
    monkeypatch.setattr(_digests, "_MEMO", {})
    _digests._INDEXES[str(cache)] = {}
    _digests.file_digests(files[3:], cache)  # ...and writes without A's entries in memory
    saved = json.loads((cache / _digests.INDEX_FILE).read_text())
    assert set(saved) == set(files)


def test_sharded_extraction_fills_one_cache(tmp_path: Path) -> None:
    data = make_image_folder(tmp_path / "data", counts={"train": 6, "val": 3, "test": 3})
    files = _old_files(data)
    cache = tmp_path / "cache"
    procs = [subprocess.Popen([sys.executable, "-m", "graftwork", "extract", str(data),
                               *TINY_CLI, "--cache-dir", str(cache), "--shard", f"{i}/2",
                               "--engine", "torch", "-q"],
                              env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for i in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err
    extracted = [int(out.split(" extracted")[0].split()[-1]) for out, _ in outs]
    assert sum(extracted) == len(files) and all(n > 0 for n in extracted)
    index = json.loads((cache / "file-digests.json").read_text())
    assert set(files) <= set(index)
    run = tmp_path / "run"
    train = subprocess.run([sys.executable, "-m", "graftwork", "train", str(data),
                            *TINY_CLI, "--cache-dir", str(cache), "--strategy", "extract",
                            "--epochs", "1", "--out", str(run), "--no-report", "-q"],
                           env=_env(), capture_output=True, text=True, timeout=300)
    assert train.returncode == 0, train.stderr
    features = json.loads((run / "metrics.json").read_text())["features"]
    assert features["extracted"] == 0 and features["cached"] == len(files)


def test_extract_cli_rejects_bad_shard(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from graftwork.cli import main

    result = CliRunner().invoke(main, ["extract", str(tmp_path), "--shard", "2/2"])
    assert result.exit_code == 2 and "0..N-1" in result.output


def test_ray_is_an_engine_that_fills_the_cache_itself() -> None:
    """Registered by name and picked by what it can do (``fill_cache``), without importing
    ``ray`` until it runs; ``extract_folder(address=...)`` sets the engines that have one."""
    from graftwork.features import ENGINES, CacheFiller, RayEngine, TorchEngine, create_engine
    from graftwork.features.folder import _with_address

    assert ENGINES["ray"] is RayEngine and isinstance(create_engine("ray"), CacheFiller)
    assert not isinstance(create_engine("torch"), CacheFiller)
    assert _with_address("ray", "auto") == RayEngine(address="auto")
    assert _with_address(RayEngine(workers=3), "ray://h:10001") == RayEngine("ray://h:10001", 3)
    assert _with_address("torch", "auto") == "torch"  # runs here: no cluster to talk to
    assert _with_address(TorchEngine(chunk=2), "auto") == TorchEngine(chunk=2)
    code = "import sys, graftwork.features; assert 'ray' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], env=_env(), check=True, timeout=120)


@pytest.fixture()
def local_ray():  # type: ignore[no-untyped-def]
    ray = pytest.importorskip("ray")
    yield ray
    ray.shutdown()


def test_ray_engine_fills_the_cache(tmp_path: Path, local_ray: object) -> None:
    from graftwork.features import extract_features, extract_folder
    from graftwork.backbones.catalog import create_backbone
    from graftwork.training.loop import seed_everything

    data = make_image_folder(tmp_path / "data", counts={"train": 4, "val": 2, "test": 2})
    files = _old_files(data)
    cache = tmp_path / "cache"
    res = extract_folder(data, TINY["backbone"], TINY["weights"], TINY["image_size"], cache,
                         shard=(0, 1), engine="ray", batch_size=8, num_workers=1)
    assert res.extracted == len(files) and bool(res.ok.all())
    seed_everything(0)
    net = create_backbone(TINY["backbone"], TINY["weights"])
    samples = [Sample(p, 0) for p in files]
    again = extract_features(net, samples, net.spec.preprocessing(32), cache, num_workers=0,
                             progress=False, engine="torch")
    assert again.extracted == 0 and again.cached == len(files)


def test_two_process_training_agrees(tmp_path: Path) -> None:
    """torchrun, 2 CPU processes (gloo): a model frozen in part before wrapping trains to the
    same weights on both, BN statistics averaged, validation counts each example once."""
    pytest.importorskip("accelerate")
    env = _env()
    env["PYTHONPATH"] = str(REPO / "src")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node",
                           "2", "--master_port", "29517",
                           str(REPO / "tests" / "fixtures" / "ddp_worker.py"), str(tmp_path)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank-{r}.json").read_text()) for r in range(2)]
    assert [r["main"] for r in ranks] == [True, False]
    assert ranks[0]["steps"] == ranks[1]["steps"] == 2 * 4  # 7 batches: 4 each, one padded
    assert ranks[0]["state"] == ranks[1]["state"]  # head, frozen layer and BN buffers agree
    for r in ranks:
        assert r["val"]["n"] == 13
        assert r["val"]["accuracy"] == pytest.approx(r["single"]["accuracy"])
        assert r["val"]["loss"] == pytest.approx(r["single"]["loss"], rel=1e-5)


def test_two_process_training_survives_an_unreadable_batch(tmp_path: Path) -> None:
    """A batch with no readable image on one process (it takes a step fewer): training
    neither hangs in the other's gradient all-reduce nor ends with different weights."""
    pytest.importorskip("accelerate")
    env = _env()
    env["PYTHONPATH"] = str(REPO / "src")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node",
                           "2", "--master_port", "29533",
                           str(REPO / "tests" / "fixtures" / "ddp_uneven_worker.py"),
                           str(tmp_path)], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank-{r}.json").read_text()) for r in range(2)]
    assert ranks[0]["epochs"] == ranks[1]["epochs"] == 2
    assert ranks[0]["state"] == ranks[1]["state"]


@pytest.mark.parametrize("strategy", ["frozen", "finetune"])
def test_two_process_fit(tmp_path: Path, strategy: str) -> None:
    """`torchrun -nproc 2` around ImageClassifier.fit: both processes end with the same
    weights (BN statistics included), validation counts each image once, the main process
    writes a complete run directory."""
    pytest.importorskip("accelerate")
    # 24 training images in batches of 4: no batch of 1 (BN in train mode needs 2)
    data = make_image_folder(tmp_path / "data", counts={"train": 8, "val": 3, "test": 2})
    _old_files(data)
    env = _env()
    env["PYTHONPATH"] = str(REPO / "src")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node",
                           "2", "--master_port", str(29521 + len(strategy)),
                           str(REPO / "tests" / "fixtures" / "ddp_fit_worker.py"), str(data),
                           str(tmp_path / "cache"), str(tmp_path), strategy],
                          env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank-{r}.json").read_text()) for r in range(2)]
    assert ranks[0]["state"] == ranks[1]["state"]
    assert ranks[0]["metrics"] == ranks[1]["metrics"]
    # each process trained on its own half of the batches (its training loss is its own)...
    losses = [[row["loss"] for row in r["history"] if row["phase"] == strategy] for r in ranks]
    assert len(losses[0]) == 2 and losses[0] != losses[1]  # ...to the same weights
    assert ranks[0]["metrics"]["val"]["n"] == 9 and ranks[0]["metrics"]["test"]["n"] == 6
    names = {p.name for p in (tmp_path / "run").iterdir()}
    assert {"metrics.json", "config.json"} <= names


def test_train_num_processes_cli(tmp_path: Path) -> None:
    """`graft train --num-processes 2`: relaunched under torchrun, one complete run directory
    (written by rank 0 only), each validation image counted once."""
    pytest.importorskip("accelerate")
    data = make_image_folder(tmp_path / "data", counts={"train": 8, "val": 3, "test": 2})
    _old_files(data)
    run = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "graftwork", "train", str(data), *TINY_CLI,
                           "--cache-dir", str(tmp_path / "cache"), "--strategy", "frozen",
                           "--epochs", "2", "--batch-size", "4", "--out", str(run),
                           "--num-processes", "2", "--no-report", "-q"],
                          env=_env(), capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("saved to") == 1  # the other rank writes nothing
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["val"]["n"] == 9 and metrics["test"]["n"] == 6
    assert {"model.safetensors", "config.json", "history.csv"} <= {p.name for p in run.iterdir()}
