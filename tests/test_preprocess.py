"""One preprocessing (issue 28): the ``Preprocessing`` value and its dict form, the feature-cache
key (unchanged), and the same crop of an odd-sized image on every path: training (PIL floats
and engine uint8 batches), feature extraction, export and serving."""
from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from graftwork import rundir
from graftwork.backbones.catalog import get_spec
from graftwork.backbones.spec import BackboneSpec, WeightsInfo
from graftwork.data.discover import Sample
from graftwork.data.preprocess import (DEFAULT_CROP_PCT, DEFAULT_INTERPOLATION, INTERPOLATIONS,
                                       Preprocessing)
from graftwork.data.transforms import eval_transform
from graftwork.deploy.export import load_pixels
from graftwork.deploy.serve import Engine
from graftwork.errors import ConfigError, GraftError, RunConfigError
from graftwork.estimator.classifier import ImageClassifier
from graftwork.features import FastEvalTransform, FeatureCache, Normalize, extract_features
from graftwork.phases._engine import pixel_batches

FIXTURE_RUN = Path(__file__).parent / "fixtures" / "run-2a89f13"
PRE = {"image_size": 32, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
       "interpolation": "bicubic", "crop_pct": 0.95}


# ------------------------------------------------------------------ the value and its dict form
def test_dict_round_trip_keeps_keys_and_value_types() -> None:
    pre = Preprocessing.from_dict(PRE)
    assert pre.as_dict() == PRE and list(pre.as_dict()) == list(PRE)
    assert Preprocessing.from_dict(pre.as_dict()) == pre and Preprocessing.from_dict(pre) is pre
    assert hash(pre) == hash(Preprocessing.from_dict(json.loads(json.dumps(PRE))))
    odd = Preprocessing.from_dict({**PRE, "crop_pct": 1, "mean": [0, 0.5, 1]})
    assert json.dumps(odd.as_dict()) == json.dumps({**PRE, "crop_pct": 1, "mean": [0, 0.5, 1]})
    with pytest.raises(dataclasses.FrozenInstanceError):
        pre.image_size = 64  # type: ignore[misc]


def test_resize_rule_and_defaults() -> None:
    assert Preprocessing.from_dict(PRE).resize_size == 34  # round(32 / 0.95)
    assert Preprocessing(224, (0.5,) * 3, (0.5,) * 3).resize_size == 256  # 224 / 0.875
    short = Preprocessing.from_dict({k: PRE[k] for k in ("image_size", "mean", "std")})
    assert (short.interpolation, short.crop_pct) == (DEFAULT_INTERPOLATION, DEFAULT_CROP_PCT)
    spec = BackboneSpec(name="x", arch="x")
    assert (spec.interpolation, spec.crop_pct) == (DEFAULT_INTERPOLATION, DEFAULT_CROP_PCT)
    assert spec.preprocessing().image_size == spec.input_size
    assert get_spec("vgg16").preprocessing(96).interpolation == "bilinear"


def test_interpolations_are_torchvisions() -> None:
    from torchvision.transforms import InterpolationMode

    assert set(INTERPOLATIONS) == {m.value for m in InterpolationMode}
    for name in INTERPOLATIONS:
        mode = Preprocessing(32, (0,) * 3, (1,) * 3, interpolation=name).interpolation_mode()
        assert mode is InterpolationMode(name)


@pytest.mark.parametrize("change, key", [
    ({"image_size": 0}, "image_size"), ({"image_size": "32"}, "image_size"),
    ({"image_size": True}, "image_size"), ({"mean": [0.5, 0.5]}, "mean"),
    ({"mean": "abc"}, "mean"), ({"std": [0.2, 0, 0.2]}, "std"),
    ({"std": [0.2, float("nan"), 0.2]}, "std"), ({"crop_pct": 0}, "crop_pct"),
    ({"crop_pct": 1.5}, "crop_pct"), ({"interpolation": "cubic"}, "interpolation"),
    ({"interpolation": 3}, "interpolation"), ({"crop": 0.9}, "crop"),
])
def test_from_dict_names_the_bad_key(change: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError, match=rf"^preprocessing\.{key} ") as info:
        Preprocessing.from_dict({**PRE, **change})
    assert isinstance(info.value, GraftError) and info.value.fix


def test_from_dict_needs_a_dict_with_size_mean_and_std() -> None:
    with pytest.raises(ConfigError, match="preprocessing must be a dict"):
        Preprocessing.from_dict([32])  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"preprocessing\.std is missing"):
        Preprocessing.from_dict({"image_size": 32, "mean": [0.5] * 3})


# ------------------------------------------------------------------ stored runs, the cache key
def _fake_backbone(spec: BackboneSpec) -> Any:
    return SimpleNamespace(spec=spec, weights=WeightsInfo("random", "", "abc123"), feature_dim=8)


def test_feature_cache_key_is_unchanged() -> None:
    """Hex digests computed with the dict preprocessing of commit e2dc306 (before the class)."""
    cases = [(BackboneSpec(name="toy", arch="toy_arch"), None, "2f832e9856a363e6d371"),
             (get_spec("vgg16"), 96, "c48ad4aec2803d6abedc"),
             (BackboneSpec(name="odd", arch="odd", crop_pct=1, mean=(0, 0.5, 1)), 37,
              "be21ca2d00a446949af3")]
    for spec, size, key in cases:
        assert FeatureCache("unused", _fake_backbone(spec), spec.preprocessing(size)).key == key
    cfg = json.loads((FIXTURE_RUN / "config.json").read_text())
    spec = BackboneSpec(name=cfg["backbone"]["name"], arch=cfg["backbone"]["arch"])
    pre = Preprocessing.from_dict(cfg["preprocessing"])
    assert FeatureCache("unused", _fake_backbone(spec), pre).key == "d8c034a5de936ce6d4d9"


def test_a_stored_run_loads_and_saves_the_same_dict() -> None:
    clf = ImageClassifier.load(FIXTURE_RUN)
    stored = json.loads((FIXTURE_RUN / "config.json").read_text())["preprocessing"]
    assert isinstance(clf.preprocessing_, Preprocessing)
    assert clf.config()["preprocessing"] == stored
    wrapped = ImageClassifier.from_model(clf.model_, clf.classes_, stored)
    assert wrapped.preprocessing_ == clf.preprocessing_
    with pytest.raises(ConfigError, match="interpolation"):
        ImageClassifier.from_model(clf.model_, clf.classes_, {**stored, "interpolation": "x"})


def test_a_bad_stored_interpolation_is_a_run_config_error(tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(FIXTURE_RUN, run)
    cfg = json.loads((run / "config.json").read_text())
    cfg["preprocessing"]["interpolation"] = "cubic"
    rundir.write_config(run, cfg)
    with pytest.raises(RunConfigError, match=r"preprocessing\.interpolation"):
        ImageClassifier.load(run)


# ------------------------------------------------------------------ one crop on every path
def _image(width: int, height: int) -> Image.Image:
    """Smooth gradients plus noise: every path must agree on real detail."""
    rng = np.random.default_rng(width * height)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 / width, y * 255 / height, (x + y) * 127 / (width + height)], -1)
    noisy = base + rng.normal(0, 25, base.shape)
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("odd")
    paths = [root / "odd.png", root / "draft.jpg", root / "large.jpg"]
    _image(37, 23).save(paths[0])
    _image(400, 261).save(paths[1], quality=95)  # JPEG draft scale 8 at 32 px, 4 at 34 px
    _image(2001, 1333).save(paths[2], quality=90)
    return paths


class _Pixels(nn.Module):
    """A "backbone" whose features are its (normalised) input: extraction's crops, flattened."""

    def __init__(self, pre: Preprocessing) -> None:
        super().__init__()
        self.spec = BackboneSpec(name="pixels", arch="pixels")
        self.weights = WeightsInfo("random", "", "pixels")
        self.feature_dim = 3 * pre.image_size ** 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.float().contiguous().flatten(1)


def _to_uint8(x: torch.Tensor, pre: Preprocessing) -> np.ndarray:
    """Normalised NCHW floats back to uint8 NHWC pixels."""
    mean = torch.tensor(pre.mean).view(1, 3, 1, 1)
    std = torch.tensor(pre.std).view(1, 3, 1, 1)
    return (x.double() * std + mean).mul(255).round().permute(0, 2, 3, 1).byte().numpy()


def test_every_path_crops_an_odd_image_identically(images: list[Path], tmp_path: Path) -> None:
    engine = Engine(FIXTURE_RUN)  # serving
    clf = engine.clf
    pre: Preprocessing = clf.preprocessing_
    assert (pre.image_size, pre.resize_size) == (32, 34)
    samples = [Sample(str(p), 0) for p in images]
    size = pre.image_size

    served = np.stack([engine.pixels(p.read_bytes()) for p in images])
    exported = np.stack([load_pixels(p, pre) for p in images])
    res = extract_features(_Pixels(pre), samples, pre, tmp_path, num_workers=0, progress=False,
                           engine="torch")
    assert bool(res.ok.all())
    extracted = _to_uint8(res.features.view(-1, 3, size, size), pre)
    session = clf.session_
    session.num_workers = 0
    trained_u8 = torch.cat([x for x, _ in pixel_batches(session, samples, None)(None, 8)])
    trained = torch.cat([x for x, _ in session.image_batches(samples, eval_transform(pre),
                                                             None, 8)])

    assert served.shape == (len(images), size, size, 3) and served.dtype == np.uint8
    np.testing.assert_array_equal(exported, served)
    np.testing.assert_array_equal(extracted, served)
    np.testing.assert_array_equal(trained_u8.numpy(), served)
    # the PIL path (training's float batches) agrees after normalisation, within a grey level or two
    want = Normalize(pre)(torch.from_numpy(served))
    levels = (trained - want).abs() * torch.tensor(pre.std).view(1, 3, 1, 1) * 255
    assert float(levels.max()) <= 2.5 and float(levels.mean()) < 0.05
    # and every path follows the one rule: short side to resize_size, centre crop image_size
    from torchvision.transforms.v2 import functional as TF

    for path, got in zip(images, served):
        img = torch.from_numpy(np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1)
        if path.suffix == ".jpg":  # JPEGs decode at the draft scale no smaller than resize_size
            continue
        ref = TF.center_crop(TF.resize(img, [pre.resize_size], pre.interpolation_mode(),
                                       antialias=True), [size, size])
        np.testing.assert_array_equal(ref.permute(1, 2, 0).numpy(), got)
    assert FastEvalTransform(pre).resize == pre.resize_size
