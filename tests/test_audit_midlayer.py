"""The label check reads a backbone's mid layer beside its final features: the wide features
are the final ones followed by the pooled mid layer, cached apart from training's, and the
label check's judges use both."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from graftwork.backbones.catalog import create_backbone, get_spec, register_backbone
from graftwork.backbones.network import WithMidLayer, mid_layer_channels
from graftwork.backbones.spec import BackboneSpec
from graftwork.data.discover import Sample
from graftwork.datacheck.inputs import AuditInputs, gather
from graftwork.datacheck.labels import find_label_issues, label_features
from graftwork.features.cache import FeatureCache
from graftwork.features.open import FeatureSource, open_features
from tests.conftest import TINY, make_image_folder

MID = register_backbone(BackboneSpec(name="test_efficientnet_mid", arch="test_efficientnet",
                                     input_size=32, mid_layer="blocks.1"))


def test_wide_features_are_the_final_ones_then_the_pooled_mid_layer() -> None:
    torch.manual_seed(0)
    net = create_backbone(TINY["backbone"], "random").eval()
    wide = WithMidLayer(net, "blocks.1")
    x = torch.randn(3, 3, 32, 32)
    kept = []
    net.trunk.get_submodule("blocks.1").register_forward_hook(lambda _m, _a, o: kept.append(o))
    with torch.inference_mode():
        out, final = wide(x), net(x)
    assert out.shape == (3, wide.feature_dim) == (3, net.feature_dim + 24)
    torch.testing.assert_close(out[:, :net.feature_dim], final)
    torch.testing.assert_close(out[:, net.feature_dim:], kept[-1].mean(dim=(2, 3)))
    assert mid_layer_channels(net.state_dict(), "blocks.1") == 24
    with pytest.raises(ValueError, match="no module"):
        mid_layer_channels(net.state_dict(), "blocks.99")


@pytest.mark.parametrize("name", ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"])
def test_lite_mid_layer_is_the_last_stride_32_stage_before_the_head(name: str) -> None:
    spec = get_spec(name)
    net = create_backbone(name, pretrained=False).eval()
    wide = WithMidLayer(net, spec.mid_layer or "")
    kept = []
    net.trunk.get_submodule(spec.mid_layer).register_forward_hook(lambda _m, _a, o: kept.append(o))
    with torch.inference_mode():
        out = wide(torch.zeros(1, 3, 224, 224))
    assert out.shape[1] == wide.feature_dim
    assert kept[-1].shape[-1] == 7  # stride 32 at 224 px


def test_wide_features_are_cached_apart_and_read_without_the_network(tmp_path: Path) -> None:
    data = make_image_folder(tmp_path / "data", classes=2, counts={"": 4}, size=32)
    samples = [Sample(str(p), 0) for p in sorted(data.rglob("*.png"))]
    source = open_features(MID.name, "random", 32, tmp_path / "cache")
    wide = source.with_mid_layer()
    assert wide is not None and open_features(TINY["backbone"], "random", 32,
                                              tmp_path / "cache").with_mid_layer() is None
    keys = {FeatureCache(tmp_path / "cache", b.backbone, b.preprocessing).key
            for b in (source, wide)}
    assert len(keys) == 2  # the wide features never mix with training's
    got = wide.extract(samples, num_workers=0, engine="torch")
    dim = source.backbone.feature_dim
    assert got.features.shape == (len(samples), wide.backbone.feature_dim)
    # the same pass filled the plain cache: training after an audit extracts nothing
    plain = source.extract(samples, num_workers=0, engine="torch")
    assert plain.cached == len(samples) and plain.extracted == 0
    fresh = FeatureSource(tmp_path / "other", source.backbone, source.preprocessing).extract(
        samples, num_workers=0, engine="torch")
    assert fresh.extracted == len(samples)
    torch.testing.assert_close(plain.features, fresh.features, atol=1e-5, rtol=1e-4)
    again = wide.extract(samples, num_workers=0, engine="torch")
    assert again.cached == len(samples) and again.extracted == 0
    torch.testing.assert_close(again.features, got.features)


def test_gather_splits_the_wide_features(tmp_path: Path) -> None:
    data = make_image_folder(tmp_path / "data", classes=2, counts={"": 4}, size=32)
    inputs = gather(data, backbone=MID.name, weights="random", image_size=32,
                    cache_dir=tmp_path / "cache", num_workers=0)
    assert inputs.mid_features is not None and inputs.mid_features.shape == (8, 24)
    plain = gather(data, backbone=TINY["backbone"], weights="random", image_size=32,
                   cache_dir=tmp_path / "cache", num_workers=0)
    assert plain.mid_features is None and inputs.features.shape == plain.features.shape


def _inputs(features: np.ndarray, mid: np.ndarray | None, labels: np.ndarray) -> AuditInputs:
    n = len(labels)
    return AuditInputs(
        data=Path("."), paths=[f"{i}.png" for i in range(n)], labels=labels,
        splits=np.array(["train"] * n), classes=[f"c{c}" for c in range(labels.max() + 1)],
        features=features.astype(np.float32), file_digests=[b""] * n, pixel_digests=[b""] * n,
        thumbs=np.zeros((n, 8, 8), np.uint8), sizes=np.zeros((n, 2)), gray=np.zeros(n, bool),
        mid_features=None if mid is None else mid.astype(np.float32))


def test_label_check_reads_the_mid_layer() -> None:
    """Classes that only the mid layer tells apart: with it, the flips are found; without it,
    the judges guess at noise (the final features carry no class)."""
    rng = np.random.default_rng(0)
    per, k = 30, 4
    truth = np.repeat(np.arange(k), per)
    given = truth.copy()
    flips = np.arange(k) * per
    given[flips] = (truth[flips] + 2) % k
    noise = rng.normal(0, 1, (len(truth), 64))
    mid = rng.normal(0, 4, (k, 16))[truth] + rng.normal(0, 1, (len(truth), 16))
    wide = _inputs(noise, mid, given)
    x = label_features(wide)
    assert x.shape == (len(truth), 80)
    np.testing.assert_allclose(x.std(0), np.r_[np.full(64, 1 / 8), np.full(16, 1 / 4)], rtol=1e-3)
    found = {r["path"] for r in find_label_issues(wide)}
    assert found == {f"{i}.png" for i in flips}
    blind = {r["path"] for r in find_label_issues(_inputs(noise, None, given))}
    assert not found <= blind and len(blind) > len(found)  # guesses at noise


def test_each_fold_split_scores_every_image_once() -> None:
    """The label check's heads: one out-of-fold probability row per image and split; the
    splits differ (other folds), and their mean is ``oof_probabilities``."""
    from graftwork.datacheck.labels import oof_probabilities, oof_split_probabilities

    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 20)
    x = rng.normal(0, 1, (60, 8)) + labels[:, None]
    each = oof_split_probabilities(x, labels, 3, 5, splits=4)
    assert each.shape == (4, 60, 3)
    np.testing.assert_allclose(each.sum(axis=2), 1.0, rtol=1e-6)
    assert not np.allclose(each[0], each[1])
    np.testing.assert_allclose(oof_probabilities(x, labels, 3, 5, splits=4), each.mean(axis=0))


def test_the_wide_network_holds_the_backbone_once() -> None:
    net = create_backbone(TINY["backbone"], "random")
    wide = WithMidLayer(net, "blocks.1")
    assert set(wide.state_dict()) == {f"backbone.{k}" for k in net.state_dict()}


def test_the_wide_network_exports_to_onnx(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    data = make_image_folder(tmp_path / "data", classes=2, counts={"": 3}, size=32)
    samples = [Sample(str(p), 0) for p in sorted(data.rglob("*.png"))]
    source = open_features(MID.name, "random", 32, tmp_path / "cache")
    wide = source.with_mid_layer()
    assert wide is not None
    runs = [FeatureSource(tmp_path / engine, wide.backbone, wide.preprocessing).extract(
        samples, num_workers=0, engine=engine) for engine in ("onnx", "torch")]
    assert list((tmp_path / "onnx").rglob("*.onnx"))
    torch.testing.assert_close(runs[0].features, runs[1].features, atol=1e-4, rtol=1e-3)
