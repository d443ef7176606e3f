"""Issue 15's quality options: augmented feature views, test-time augmentation, class
weights, temperature calibration, augmentation policies (tiny backbone, tiny images)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from conftest import TINY, make_image_folder
from graftwork.training import loop as training
from graftwork.model.calibration import (calibration_report, expected_calibration_error,
                                         fit_temperature, tta_logits)
from graftwork.estimator.classifier import ImageClassifier
from graftwork.data.preprocess import Preprocessing
from graftwork.data.transforms import AUGMENT_POLICIES, AugmentConfig, train_transform
from graftwork.errors import ConfigError
from graftwork.features.views import HFLIP, augment_recipe, view_digest
from graftwork.training.loop import resolve_class_weights

PRE = Preprocessing.from_dict({"image_size": 32, "mean": [0.5] * 3, "std": [0.25] * 3,
                               "crop_pct": 1.0, "interpolation": "bilinear"})


def _clf(cache_dir: str, **kw: object) -> ImageClassifier:
    return ImageClassifier(**{**TINY, "epochs": 2, "cache_dir": cache_dir, **kw})


# ------------------------------------------------------------------ augmentation policies
@pytest.mark.parametrize("policy", AUGMENT_POLICIES)
def test_policies_make_valid_tensors(policy: str) -> None:
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 48, 3), np.uint8))
    tf = train_transform(PRE, AugmentConfig(), policy)
    x = tf(img)
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and torch.isfinite(x).all()
    if policy == "none":
        assert torch.equal(x, tf(img))


def test_train_transform_keeps_two_argument_form() -> None:
    img = Image.new("RGB", (40, 40), (10, 200, 30))
    assert train_transform(PRE, None)(img).shape == (3, 32, 32)
    assert train_transform(PRE, AugmentConfig())(img).shape == (3, 32, 32)
    with pytest.raises(ConfigError):
        train_transform(PRE, AugmentConfig(), "wild")


# ------------------------------------------------------------------ augmented feature views
def test_view_keys_differ_per_view_and_recipe() -> None:
    d = bytes(32)
    recipe = augment_recipe(AugmentConfig(), "classic")
    keys = {view_digest(d, recipe, v) for v in range(4)}
    keys.add(view_digest(d, augment_recipe(AugmentConfig(), "mild"), 0))
    keys.add(view_digest(d, HFLIP, 0))
    assert len(keys) == 6 and all(len(k) == 32 for k in keys)
    assert view_digest(d, recipe, 1) == view_digest(d, dict(recipe), 1)


def test_aug_views_rows_and_cache(tiny_data: Path, cache_dir: str) -> None:
    n_train = 3 * 8
    clf = _clf(cache_dir, aug_views=2, epochs=1).fit(tiny_data)
    stats = clf.extract_stats_
    assert stats["views_extracted"] == 2 * n_train and stats["views_cached"] == 0
    assert clf.phase_configs_["extract"].batch_size >= 32
    again = _clf(cache_dir, aug_views=2, epochs=1).fit(tiny_data)
    assert again.extract_stats_["views_extracted"] == 0
    assert again.extract_stats_["views_cached"] == 2 * n_train
    assert again.get_params()["aug_views"] == 2


def test_aug_views_multiply_training_rows(tiny_data: Path, cache_dir: str,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from graftwork.phases import extract

    seen: list[int] = []
    real = extract.Extract.batches

    def spy(self: object, ctx: object) -> object:
        plan = real(self, ctx)  # type: ignore[arg-type]
        seen.append(plan.n)
        return plan

    monkeypatch.setattr(extract.Extract, "batches", spy)
    _clf(cache_dir, epochs=1).fit(tiny_data)
    _clf(cache_dir, epochs=1, aug_views=3).fit(tiny_data)
    assert seen == [24, 4 * 24]


def test_aug_views_need_augmentation(tiny_data: Path, cache_dir: str) -> None:
    with pytest.raises(ConfigError, match="aug_views"):
        _clf(cache_dir, aug_views=2, augment_policy="none").fit(tiny_data)


def test_views_are_deterministic(tiny_data: Path, cache_dir: str, tmp_path: Path) -> None:
    from graftwork.features.views import ViewDataset

    sample = _clf(cache_dir, epochs=1).fit(tiny_data).splits_.train[0]
    ds = ViewDataset([sample, sample], [7, 8], augment_recipe(AugmentConfig(), "classic"), PRE)
    a, b = ds[0][0], ds[1][0]
    assert a.dtype == torch.uint8 and a.shape == (32, 32, 3)
    torch.manual_seed(0)
    state = torch.get_rng_state()
    assert torch.equal(ds[0][0], a) and not torch.equal(a, b)
    assert torch.equal(torch.get_rng_state(), state)  # global RNG untouched


# ------------------------------------------------------------------ test-time augmentation
def test_tta_logits_average_probabilities() -> None:
    a, b = torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 2.0]])
    assert torch.allclose(tta_logits(a, b).exp(), torch.tensor([[0.5, 0.5]]))


def test_tta_changes_probabilities_deterministically(tiny_data: Path, cache_dir: str,
                                                     tmp_path: Path) -> None:
    clf = _clf(cache_dir, tta=True).fit(tiny_data)
    images = sorted((tiny_data / "test").rglob("*.png"))[:5]
    with_tta = clf.predict_proba(images)
    assert np.allclose(with_tta, clf.predict_proba(images))
    assert np.allclose(with_tta.sum(1), 1, atol=1e-5)
    clf.set_params(tta=False)
    without = clf.predict_proba(images)
    assert not np.allclose(with_tta, without)
    rows = clf.test_predictions_
    assert rows and all(0 <= r["prob"] <= 1 and r["loss"] >= 0 for r in rows)
    clf.set_params(tta=True)
    clf.save(tmp_path / "run")
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert cfg["hyperparameters"]["tta"] is True
    loaded = ImageClassifier.load(tmp_path / "run")
    assert loaded.tta is True  # network path (flip of the batch) ~ feature path
    assert np.allclose(loaded.predict_proba(images), with_tta, atol=1e-3)


# ------------------------------------------------------------------ class weights
def test_class_weights_resolution() -> None:
    labels = [0] * 6 + [1] * 2 + [2] * 4
    auto = resolve_class_weights("auto", ["a", "b", "c"], labels)
    assert auto == pytest.approx((12 / 18, 12 / 6, 12 / 12))
    assert resolve_class_weights({"b": 2.0}, ["a", "b"], [0, 1]) == (1.0, 2.0)
    assert resolve_class_weights(None, ["a", "b"], [0, 1]) is None
    with pytest.raises(ConfigError, match="unknown classes"):
        resolve_class_weights({"zebra": 2.0}, ["a", "b"], [0, 1])
    with pytest.raises(ConfigError):
        resolve_class_weights({"a": -1}, ["a", "b"], [0, 1])


def test_class_weights_change_the_loss(tmp_path: Path, cache_dir: str,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    data = make_image_folder(tmp_path / "imb", classes=2,
                             counts={"train": 12, "val": 2, "test": 2})
    for p in sorted((data / "train" / "class_1").glob("*.png"))[2:]:
        p.unlink()  # 12 vs 2 training images
    losses: dict[str, list[float]] = {}
    real = training._train_epoch

    def spy(*args: object) -> dict[str, float]:
        row = real(*args)  # type: ignore[arg-type]
        losses.setdefault(key, []).append(row["loss"])
        return row

    monkeypatch.setattr(training, "_train_epoch", spy)
    for key, weights in (("none", None), ("auto", "auto")):
        clf = _clf(cache_dir, class_weights=weights, epochs=1).fit(data)
    assert clf.phase_configs_["extract"].class_weights == pytest.approx((14 / 24, 14 / 4))
    assert losses["none"] != losses["auto"]
    with pytest.raises(ConfigError, match="unknown classes"):
        _clf(cache_dir, class_weights={"zebra": 3.0}).fit(data)
    cfg = _clf(cache_dir, class_weights={"class_1": 3.0}, epochs=1).fit(data).config()
    assert cfg["hyperparameters"]["class_weights"] == {"class_1": 3.0}


# ------------------------------------------------------------------ calibration
def test_temperature_on_overconfident_logits() -> None:
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 3, (600,), generator=g)
    logits = torch.randn(600, 3, generator=g)
    logits[torch.arange(600), labels] += 1.0
    logits *= 4  # over-confident
    t = fit_temperature(logits, labels)
    assert t > 1
    before, bins = expected_calibration_error(logits.softmax(1), labels)
    after, _ = expected_calibration_error((logits / t).softmax(1), labels)
    assert after < before and len(bins) == 15
    report = calibration_report(logits, labels, t)
    assert set(report) >= {"temperature", "ece_before", "ece_after", "bins", "bins_after"}
    assert set(report["bins"][0]) == {"lower", "upper", "confidence", "accuracy", "count"}
    assert sum(b["count"] for b in report["bins"]) == 600


def test_calibrated_run_saves_and_applies_temperature(tiny_data: Path, cache_dir: str,
                                                      tmp_path: Path) -> None:
    clf = _clf(cache_dir, calibrate=True).fit(tiny_data)
    t = clf.calibration_["temperature"]
    assert t > 0 and clf.metrics_["calibration"]["temperature"] == pytest.approx(t, rel=1e-4)
    clf.save(tmp_path / "run")
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert cfg["calibration"]["temperature"] == pytest.approx(t)
    assert cfg["hyperparameters"]["calibrate"] is True
    from graftwork.report import build_report

    build_report(tmp_path / "run")
    assert "ECE" in (tmp_path / "run" / "report.html").read_text()
    loaded = ImageClassifier.load(tmp_path / "run")
    assert loaded.session_.temperature == pytest.approx(t)
    images = sorted((tiny_data / "test").rglob("*.png"))[:4]
    assert np.allclose(loaded.predict_proba(images), clf.predict_proba(images), atol=1e-3)
    loaded.session_.temperature = 1.0
    if abs(t - 1) > 1e-3:
        assert not np.allclose(loaded.predict_proba(images), clf.predict_proba(images),
                               atol=1e-6)


# ------------------------------------------------------------------ CLI
def test_cli_flags(tiny_data: Path, cache_dir: str, tmp_path: Path) -> None:
    from graftwork.cli import main

    out = tmp_path / "run"
    args = ["train", str(tiny_data), "--out", str(out), "--backbone", "test_efficientnet",
            "--weights", "random", "--image-size", "32", "--epochs", "1", "--workers", "0",
            "--cache-dir", cache_dir, "--no-report", "-q", "--aug-views", "1", "--tta",
            "--class-weights", '{"class_0": 2.0}', "--calibrate", "--augment-policy", "mild"]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    hp = json.loads((out / "config.json").read_text())["hyperparameters"]
    assert (hp["aug_views"], hp["tta"], hp["class_weights"], hp["calibrate"],
            hp["augment_policy"]) == (1, True, {"class_0": 2.0}, True, "mild")
    res = CliRunner().invoke(main, ["evaluate", str(out), str(tiny_data), "--json", "--no-tta"])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(main, ["predict", str(out), str(tiny_data / "test"), "--tta",
                                    "--format", "json"])
    assert res.exit_code == 0 and json.loads(res.output)
    bad = CliRunner().invoke(main, [*args[:2], "--out", str(tmp_path / "b"),
                                    "--class-weights", "cats=2"])
    assert bad.exit_code == 2 and "class-weights" in bad.output


def test_bad_choices_fail_before_work(tiny_data: Path, cache_dir: str) -> None:
    with pytest.raises(ConfigError, match="augment-policy"):
        _clf(cache_dir, augment_policy="wild").fit(tiny_data)
    with pytest.raises(ConfigError, match="class_weights"):
        _clf(cache_dir, class_weights="inverse").fit(tiny_data)
    with pytest.raises(ConfigError, match="aug_views"):
        _clf(cache_dir, aug_views=65).fit(tiny_data)
