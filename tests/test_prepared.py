"""Prepared backbones: a cached re-run builds no network (and imports neither timm nor
torchvision), yet trains, evaluates and saves the same model."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from graftwork import ImageClassifier
from graftwork.backbones import weights as _weights
from graftwork.features.prepared import PreparedBackbone, _source_key, load_prepared, store_prepared
from graftwork.backbones.spec import BackboneSpec
from graftwork.backbones.catalog import create_backbone, register_backbone

from tests.conftest import REPO, make_image_folder

NAME = "tiny_registered"
# a registered backbone (timm's tiny test network) whose weights come from a file
REGISTER = (f"from graftwork.backbones import BackboneSpec, register_backbone\n"
            f"register_backbone(BackboneSpec(name={NAME!r}, arch='test_efficientnet', "
            f"input_size=32))\n")
register_backbone(BackboneSpec(name=NAME, arch="test_efficientnet", input_size=32))


@pytest.fixture()
def weights_file(tmp_path: Path) -> str:
    torch.manual_seed(1)
    trunk = create_backbone(NAME, "random").trunk
    path = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in trunk.state_dict().items()}, str(path))
    return str(path)


def _clf(weights: str, cache: str, **kw: object) -> ImageClassifier:
    return ImageClassifier(NAME, weights=weights, cache_dir=cache, image_size=32, epochs=3,
                           progress=False, num_workers=0, **kw)


def test_record_round_trip(weights_file: str, cache_dir: str) -> None:
    backbone = create_backbone(NAME, weights_file)
    assert load_prepared(cache_dir, NAME, weights_file) is None
    store_prepared(cache_dir, NAME, weights_file, backbone)
    prepared = load_prepared(cache_dir, NAME, weights_file)
    assert isinstance(prepared, PreparedBackbone)
    assert prepared.spec == backbone.spec and prepared.weights == backbone.weights
    assert prepared.feature_dim == backbone.feature_dim
    assert prepared.counts["trainable_params"] == 0
    assert prepared.counts["frozen_params"] == sum(p.numel() for p in backbone.parameters())
    state = backbone.state_dict()
    assert prepared.state_dict().keys() == state.keys()
    assert all(torch.equal(prepared.state_dict()[k], v) for k, v in state.items())
    x = torch.rand(2, 3, 32, 32)
    with torch.inference_mode():
        assert torch.equal(prepared.module().eval()(x), backbone.eval()(x))
    assert not any(p.requires_grad for p in prepared.module().parameters())


def test_no_record_for_random_weights_or_unregistered(cache_dir: str) -> None:
    store_prepared(cache_dir, NAME, "random", create_backbone(NAME, "random"))
    store_prepared(cache_dir, "test_efficientnet", "random",
                   create_backbone("test_efficientnet", "random"))
    assert not (Path(cache_dir) / "backbones").exists()


def test_changed_weights_file_is_not_served_stale(weights_file: str, cache_dir: str) -> None:
    store_prepared(cache_dir, NAME, weights_file, create_backbone(NAME, weights_file))
    st = os.stat(weights_file)
    os.utime(weights_file, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert load_prepared(cache_dir, NAME, weights_file) is None


def test_corrupt_record_is_deleted(weights_file: str, cache_dir: str) -> None:
    store_prepared(cache_dir, NAME, weights_file, create_backbone(NAME, weights_file))
    (record,) = (Path(cache_dir) / "backbones").glob("*.safetensors")
    data = bytearray(record.read_bytes())
    data[-5] ^= 0xFF  # a weight value, not the header: only the digest check sees it
    record.write_bytes(bytes(data))
    assert load_prepared(cache_dir, NAME, weights_file) is None
    assert not record.exists()


def test_cached_rerun_builds_no_network_and_matches(tmp_path: Path, weights_file: str,
                                                   cache_dir: str) -> None:
    data = make_image_folder(tmp_path / "data")
    first = _clf(weights_file, cache_dir).fit(data)
    second = _clf(weights_file, cache_dir).fit(data)
    assert not second.session_.network_built  # trained, evaluated without the network
    assert second.metrics_["features"] == {"extracted": 0, "cached": 48}
    assert second.history_ == first.history_
    assert second.metrics_["test"] == first.metrics_["test"]
    second.save(tmp_path / "run2")
    assert not second.session_.network_built  # saving needs no network either
    assert (tmp_path / "run2" / "summary.txt").read_text() == first.summary() + "\n"
    first.save(tmp_path / "run1")
    assert json.loads((tmp_path / "run2" / "config.json").read_text())["backbone"] == \
        json.loads((tmp_path / "run1" / "config.json").read_text())["backbone"]
    images = sorted(str(p) for p in (data / "test").rglob("*.png"))
    loaded = ImageClassifier.load(tmp_path / "run2")
    assert [r["label"] for r in loaded.predict(images)] == \
        [r["label"] for r in first.predict(images)]
    # the network is built on first use of model_, around the head trained above
    x = torch.rand(2, 3, 32, 32)
    with torch.inference_mode():
        assert torch.allclose(second.model_.eval()(x), first.model_.eval()(x), atol=1e-6)
    assert second.trainable_ == first.trainable_


def test_new_images_build_the_network_from_the_record(tmp_path: Path, weights_file: str,
                                                     cache_dir: str) -> None:
    data = make_image_folder(tmp_path / "data")
    _clf(weights_file, cache_dir).fit(data)
    extra = make_image_folder(tmp_path / "extra", counts={"train": 10}, seed=5)
    for new in extra.glob("train/*/train_*_[89].png"):  # 6 new train images
        shutil.copy(new, data / "train" / new.parent.name / new.name)
    clf = _clf(weights_file, cache_dir).fit(data)
    assert clf.metrics_["features"]["extracted"] == 6
    assert clf.metrics_["test"]["accuracy"] >= 0


def test_rerun_process_imports_neither_timm_nor_torchvision(tmp_path: Path, weights_file: str,
                                                            cache_dir: str) -> None:
    data = make_image_folder(tmp_path / "data")
    script = REGISTER + (
        "import sys, json\n"
        "from graftwork import ImageClassifier\n"
        f"clf = ImageClassifier({NAME!r}, weights={weights_file!r}, cache_dir={cache_dir!r}, "
        "image_size=32, epochs=2, progress=False, num_workers=0)\n"
        f"clf.fit({str(data)!r}).save({str(tmp_path / 'run')!r})\n"
        "print(json.dumps({m: m in sys.modules for m in ('timm', 'torchvision')}))\n")
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    runs = [subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                           env=env, check=True) for _ in range(2)]
    assert json.loads(runs[0].stdout.splitlines()[-1]) == {"timm": True, "torchvision": True}
    assert json.loads(runs[1].stdout.splitlines()[-1]) == {"timm": False, "torchvision": False}


def test_changed_spec_is_not_served_stale(weights_file: str, cache_dir: str) -> None:
    spec = BackboneSpec(name=NAME, arch="test_efficientnet", input_size=32)
    store_prepared(cache_dir, NAME, weights_file, create_backbone(NAME, weights_file))
    try:
        register_backbone(BackboneSpec(name=NAME, arch="test_efficientnet", input_size=48))
        assert load_prepared(cache_dir, NAME, weights_file) is None
    finally:
        register_backbone(spec)
    assert load_prepared(cache_dir, NAME, weights_file) is not None


class IdentitySource(_weights.WeightSource):
    """A weight source known only by ``identity`` (its weights are the tests' own)."""

    name = "toy"

    def __init__(self, identity: dict[str, object] | None) -> None:
        self.identity = identity

    def resolve(self, spec: BackboneSpec, weights_arg: str | None) -> _weights.Resolved:
        return _weights.Resolved("toy", "toy:here", dict, "toy", identity=self.identity)


def test_key_follows_the_first_source_that_resolves(weights_file: str) -> None:
    def key(identity: dict[str, object] | None, weights: str | None = None) -> str | None:
        return _source_key(NAME, weights, sources=[IdentitySource(identity), *_weights.SOURCES])

    assert _source_key(NAME, None) is None  # offline, no package: the hub, not recorded
    assert key({"v": 1}) is not None and key({"v": 1}) == key({"v": 1})
    assert key({"v": 2}) != key({"v": 1})  # the source's identity changed: another record
    assert key(None) is None  # nothing cheap identifies it
    # listed first, the toy source keys the record even when a file is given ...
    assert key({"v": 1}, weights_file) == key({"v": 1}) != _source_key(NAME, weights_file)
    # ... but a backbone whose weights came from elsewhere is not recorded under its key
    backbone = create_backbone(NAME, weights_file)
    assert _source_key(NAME, weights_file, backbone.weights) == _source_key(NAME, weights_file)
    assert _source_key(NAME, weights_file, backbone.weights,
                       [IdentitySource({"v": 1}), *_weights.SOURCES]) is None
