"""End-to-end estimator behaviour on a tiny random backbone."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from graftwork import ImageClassifier, NotFittedError, RunDirError
from tests.conftest import TINY


def test_extract_fit_save_load_predict(tiny_data: Path, cache_dir: str, tmp_path: Path) -> None:
    clf = ImageClassifier(**TINY, strategy="extract", epochs=30, cache_dir=cache_dir).fit(tiny_data)
    assert clf.classes_ == ["class_0", "class_1", "class_2"]
    assert clf.metrics_["val"]["accuracy"] >= 0.9
    run = clf.save(tmp_path / "run")
    for name in ("model.safetensors", "config.json", "metrics.json", "history.csv",
                 "predictions_test.csv"):
        assert (run / name).is_file(), name
    loaded = ImageClassifier.load(run)
    assert loaded.evaluate(tiny_data / "test")["accuracy"] == pytest.approx(
        clf.metrics_["test"]["accuracy"])
    preds = loaded.predict([tiny_data / "test" / "class_1"], top_k=2)
    assert len(preds) == 4 and all(len(p["top_k"]) == 2 for p in preds)
    assert sum(p["label"] == "class_1" for p in preds) >= 3


def test_same_seed_same_metrics(tiny_data: Path, cache_dir: str) -> None:
    runs = [ImageClassifier(**TINY, epochs=5, cache_dir=cache_dir, seed=3).fit(tiny_data)
            for _ in range(2)]
    assert runs[0].history_ == runs[1].history_


def test_second_fit_uses_feature_cache(tiny_data: Path, cache_dir: str, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    from graftwork import create_backbone

    weights = tmp_path / "w.safetensors"
    trunk = create_backbone(TINY["backbone"], "random").trunk
    save_file({k: v.contiguous() for k, v in trunk.state_dict().items()}, str(weights))
    params = {**TINY, "weights": str(weights), "cache_dir": cache_dir}
    first = ImageClassifier(**params, epochs=2).fit(tiny_data)
    second = ImageClassifier(**params, epochs=4, head="linear").fit(tiny_data)
    assert first.pretrained_weights_.source == "file"
    assert first.extract_stats_["extracted"] > 0
    assert second.extract_stats_["extracted"] == 0 and second.extract_stats_["cached"] > 0


def test_predict_before_fit_is_a_named_error() -> None:
    with pytest.raises(NotFittedError):
        ImageClassifier().predict(["x.png"])


def test_load_missing_run(tmp_path: Path) -> None:
    with pytest.raises(RunDirError):
        ImageClassifier.load(tmp_path / "nope")


def _phase_config(clf: ImageClassifier, phase: str, n: int):  # type: ignore[no-untyped-def]
    from graftwork.phases import get_phase

    return get_phase(phase).config(clf.get_params(), n)


def test_head_on_cached_features_batches_grow_with_the_data() -> None:
    clf = ImageClassifier()
    small, big = _phase_config(clf, "extract", 300), _phase_config(clf, "extract", 5000)
    assert (small.batch_size, small.lr) == (32, 1e-3)  # small data: the classic recipe
    assert big.batch_size == 250 and big.lr == pytest.approx(1e-3 * (250 / 32) ** 0.5)
    assert _phase_config(clf, "extract", 10**6).batch_size == 256
    assert _phase_config(clf, "frozen", 5000).batch_size == 32  # image phases keep --batch-size
    given = _phase_config(ImageClassifier(lr=5e-4, batch_size=64), "extract", 5000)
    assert (given.batch_size, given.lr) == (250, 5e-4)  # a given rate is kept as given


def test_head_dropout_defaults(tiny_data: Path, cache_dir: str, tmp_path: Path) -> None:
    def dropouts(clf: ImageClassifier) -> list[float]:
        return [m.p for m in clf.model_.head.modules() if isinstance(m, torch.nn.Dropout)]

    linear = ImageClassifier(**TINY, head="linear", epochs=1, cache_dir=cache_dir).fit(tiny_data)
    mlp = ImageClassifier(**TINY, epochs=1, cache_dir=cache_dir).fit(tiny_data)
    given = ImageClassifier(**TINY, head="linear", dropout=0.3, epochs=1,
                            cache_dir=cache_dir).fit(tiny_data)
    assert (dropouts(linear), dropouts(mlp), dropouts(given)) == ([], [0.5], [0.3])
    assert linear.config()["head"]["dropout"] == 0.0
    mlp.save(tmp_path / "run")
    phases = json.loads((tmp_path / "run" / "config.json").read_text())["hyperparameters"]["phases"]
    assert phases["extract"]["batch_size"] == 32 and phases["extract"]["lr"] == 1e-3


def test_summary_of_a_trained_run(tiny_data: Path, cache_dir: str, tmp_path: Path) -> None:
    clf = ImageClassifier(**TINY, strategy="finetune", epochs=1, cache_dir=cache_dir).fit(tiny_data)
    text = clf.summary()
    backbone, head = text.split("Head (features -> logits)")
    assert backbone.startswith("Backbone (images -> features)")
    assert "[1, 3, 32, 32]" in backbone and "Trainable" in backbone
    assert "True" in backbone  # the unfrozen block's layers
    assert "Linear" in head and "[1, 10]" not in head  # 3 classes
    counts = clf.trainable_["finetune"]
    assert f"Trainable weights: {counts['trainable_params']:,}" in text
    assert f"Frozen weights: {counts['frozen_params']:,}" in text
    clf.save(tmp_path / "run")
    assert (tmp_path / "run" / "summary.txt").read_text() == text + "\n"
    from graftwork.report import build_report

    build_report(tmp_path / "run")
    html = (tmp_path / "run" / "report.html").read_text()
    assert "Model summary" in html and "Backbone (images -&gt; features)" in html
