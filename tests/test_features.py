"""Feature extraction internals: fast decode path, ONNX Runtime engine, cache hits."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from graftwork import features as F
from graftwork.features import engines, pipeline
from graftwork.backbones.catalog import create_backbone
from graftwork.data.discover import Sample, list_images
from graftwork.data.preprocess import Preprocessing
from graftwork.data.transforms import eval_transform
from tests.conftest import TINY, make_image_folder


def _samples(root: Path) -> list[Sample]:
    return [Sample(str(p), 0) for p in list_images(root)]


@pytest.fixture(scope="module")
def tiny_backbone() -> F.Backbone:
    return create_backbone(TINY["backbone"], "random")


@pytest.fixture()
def images(tmp_path: Path) -> list[Sample]:
    return _samples(make_image_folder(tmp_path / "img", classes=2,
                                      counts={"": 5}, size=40, fmt="jpg"))


def _smooth(w: int, h: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
    return Image.fromarray(small).resize((w, h), Image.BICUBIC)


@pytest.mark.parametrize("size", [(400, 400), (500, 333), (333, 500), (256, 256), (90, 70),
                                  (224, 224), (1000, 640)])
def test_fast_transform_is_eval_transform_on_uint8_tensors(size: tuple[int, int]) -> None:
    from torchvision.transforms.v2.functional import pil_to_tensor

    pre = Preprocessing.from_dict({"image_size": 224, "mean": [0.5, 0.4, 0.3],
                                   "std": [0.2, 0.3, 0.4], "interpolation": "bicubic",
                                   "crop_pct": 0.875})
    img = _smooth(*size)
    got = F.Normalize(pre)(F.FastEvalTransform(pre)(img)[None])[0]
    assert got.shape == (3, 224, 224)
    assert torch.equal(got, eval_transform(pre)(pil_to_tensor(img)))
    pil = eval_transform(pre)(img)  # PIL's resampler: the same within a couple of grey levels
    levels = ((got - pil).abs() * torch.tensor(pre.std).view(3, 1, 1) * 255)
    assert levels.max() <= 2.5 and levels.mean() < 0.05


def test_onnx_engine_matches_torch(tiny_backbone: F.Backbone, images: list[Sample],
                                   tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    pre = tiny_backbone.spec.preprocessing(32)
    kw = {"progress": False, "num_workers": 0}
    ref = F.extract_features(tiny_backbone, images, pre, tmp_path / "t", engine="torch", **kw)
    got = F.extract_features(tiny_backbone, images, pre, tmp_path / "o", engine="onnx", **kw)
    assert (ref.engine, got.engine) == ("torch", "onnx")
    assert got.extracted == len(images) and bool(got.ok.all())
    assert torch.allclose(ref.features, got.features, atol=1e-4, rtol=1e-4)
    assert list((tmp_path / "o").rglob("backbone-*.onnx"))  # exported next to the shards


def test_onnx_matches_torch_on_efficientnet_lite0(tmp_path: Path) -> None:
    """The real default backbone (random weights): every operator it uses exports faithfully."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    backbone = create_backbone("efficientnet_lite0", "random").eval()
    pre = backbone.spec.preprocessing()
    cache = F.FeatureCache(tmp_path, backbone, pre)
    run = F.bind_backbone(backbone, pre, cache, "onnx", None)
    engine = run.name
    x = torch.randint(0, 256, (3, 224, 224, 3), dtype=torch.uint8,
                      generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        want = backbone(F.Normalize(pre)(x))
    assert engine == "onnx"
    assert torch.allclose(run(x), want, atol=1e-4, rtol=1e-4)


def test_damaged_onnx_file_is_exported_again(tiny_backbone: F.Backbone, images: list[Sample],
                                             tmp_path: Path,
                                             caplog: pytest.LogCaptureFixture) -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    pre = tiny_backbone.spec.preprocessing(32)
    kw = {"progress": False, "num_workers": 0, "engine": "onnx"}
    first = F.extract_features(tiny_backbone, images[:3], pre, tmp_path, **kw)
    (path,) = list(tmp_path.rglob("backbone-*.onnx"))
    path.write_bytes(b"not a model")
    engines.clear_sessions()
    with caplog.at_level(logging.WARNING):
        second = F.extract_features(tiny_backbone, images, pre, tmp_path, **kw)
    assert second.engine == "onnx" and second.extracted == len(images) - 3
    assert "exporting it again" in caplog.text and path.stat().st_size > 1000
    assert torch.allclose(first.features, second.features[:3])


def test_auto_engine_falls_back_to_torch(tiny_backbone: F.Backbone, images: list[Sample],
                                         tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engines, "onnx_available", lambda: False)
    res = F.extract_features(tiny_backbone, images, tiny_backbone.spec.preprocessing(32),
                             tmp_path, progress=False, num_workers=0)
    assert res.engine == "torch" and bool(res.ok.all())
    with pytest.raises(ValueError, match="unknown engine"):
        F.create_engine("tpu")


def test_auto_engine_skips_the_export_for_small_jobs(tiny_backbone: F.Backbone,
                                                     images: list[Sample],
                                                     tmp_path: Path) -> None:
    res = F.extract_features(tiny_backbone, images, tiny_backbone.spec.preprocessing(32),
                             tmp_path, progress=False, num_workers=0)
    assert res.engine == "torch" and not list(tmp_path.rglob("*.onnx"))


def test_cache_hits_need_no_decode(tiny_backbone: F.Backbone, images: list[Sample],
                                   tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pre = tiny_backbone.spec.preprocessing(32)
    first = F.extract_features(tiny_backbone, images, pre, tmp_path, progress=False,
                               num_workers=0)

    def no_decode(*_: object, **__: object) -> None:
        raise AssertionError("a cached image was decoded")

    monkeypatch.setattr("graftwork.data.images.load_image", no_decode)
    monkeypatch.setattr(pipeline, "bind_backbone", no_decode)
    again = F.extract_features(tiny_backbone, images, pre, tmp_path, progress=False)
    assert again.extracted == 0 and again.cached == len(images) and again.engine == ""
    assert torch.equal(first.features, again.features)
    streamed = F.extract_features(tiny_backbone, images, pre, tmp_path, progress=False,
                                  materialize=False)
    assert streamed.features is None and bool(streamed.ok.all())


def test_worker_processes_give_the_same_features(tiny_backbone: F.Backbone,
                                                 images: list[Sample], tmp_path: Path) -> None:
    pre = tiny_backbone.spec.preprocessing(32)
    kw = {"progress": False, "engine": "torch", "batch_size": 4}
    main = F.extract_features(tiny_backbone, images, pre, tmp_path / "a", num_workers=0, **kw)
    workers = F.extract_features(tiny_backbone, images, pre, tmp_path / "b", num_workers=1, **kw)
    assert torch.allclose(main.features, workers.features, atol=1e-5)


def test_corrupt_shard_is_caught_after_an_earlier_read_in_the_same_process(
        tiny_backbone: F.Backbone, images: list[Sample], tmp_path: Path) -> None:
    pre = tiny_backbone.spec.preprocessing(32)
    kw = {"progress": False, "num_workers": 0}
    first = F.extract_features(tiny_backbone, images, pre, tmp_path, **kw)
    F.extract_features(tiny_backbone, images, pre, tmp_path, **kw)  # verified and remembered
    (shard,) = list(tmp_path.rglob("shard-*.safetensors"))
    data = bytearray(shard.read_bytes())
    data[-5] ^= 0xFF  # flip a byte inside the features: same size
    shard.write_bytes(bytes(data))
    again = F.extract_features(tiny_backbone, images, pre, tmp_path, **kw)
    assert again.extracted == len(images)  # the bad shard was dropped and re-extracted
    assert torch.allclose(first.features, again.features, atol=1e-6)


@pytest.mark.parametrize(("n", "batch"), [(0, 64), (5, 64), (33, 64), (200, 64), (100, 16)])
def test_index_batches_cover_every_image_once(n: int, batch: int) -> None:
    batches = list(F.IndexBatches(n, batch))
    assert [i for b in batches for i in b] == list(range(n)) and len(batches) == len(
        F.IndexBatches(n, batch))
    assert all(len(b) <= batch for b in batches)
