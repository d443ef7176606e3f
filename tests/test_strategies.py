"""Strategies frozen / finetune / ladder on the tiny backbone."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from click.testing import CliRunner

from graftwork import AugmentConfig, ImageClassifier
from graftwork import cli as cli_module
from graftwork.cli import main
from graftwork.data.preprocess import Preprocessing
from graftwork.data.transforms import train_transform
from graftwork.model.graft import bn_layers
from tests.conftest import TINY, make_image_folder


def test_ladder_runs_three_phases_warm_started(tiny_data: Path, cache_dir: str) -> None:
    clf = ImageClassifier(**TINY, strategy="ladder", epochs=2, cache_dir=cache_dir).fit(tiny_data)
    assert [p["phase"] for p in clf.phases_] == ["extract", "frozen", "finetune"]
    assert [row["phase"] for row in clf.history_][:2] == ["extract", "extract"]
    for phase in clf.phases_:
        assert phase["best_val_accuracy"] is not None and phase["wall_time_s"] >= 0
    t = clf.trainable_
    assert t["extract"]["trainable_params"] == t["frozen"]["trainable_params"]
    assert t["finetune"]["trainable_params"] > t["frozen"]["trainable_params"]
    assert t["finetune"]["bn_buffers"] > 0  # counted apart from weights
    assert clf.best_phase_ in ("extract", "frozen", "finetune")
    assert clf.metrics_["phases"] == clf.phases_


def test_ladder_skips_the_frozen_rung_where_the_benchmark_says_it_does_not_pay(
        tmp_path: Path, cache_dir: str) -> None:
    """From 150 training images per class the ladder goes extract -> finetune and says why;
    asked for alone, frozen still runs."""
    from graftwork.cli import final_summary
    from graftwork.phases.frozen import Frozen

    per_class = Frozen.skip_from_per_class
    data = make_image_folder(tmp_path / "d", classes=2, size=8,
                             counts={"train": per_class, "val": 2, "test": 2})
    clf = ImageClassifier(**TINY, strategy="ladder", epochs=1, cache_dir=cache_dir).fit(data)
    assert [p["phase"] for p in clf.phases_] == ["extract", "finetune"]
    assert clf.phases_[1]["warm_start"] == "extract"
    why = clf.metrics_["skipped_phases"]["frozen"]
    assert f"{per_class} training images per class" in why
    assert f"frozen: skipped ({why})" in final_summary(clf, tmp_path / "out")
    alone = ImageClassifier(**TINY, strategy="frozen", epochs=1, cache_dir=cache_dir).fit(data)
    assert [p["phase"] for p in alone.phases_] == ["frozen"]
    assert "skipped_phases" not in alone.metrics_
    fewer = SimpleNamespace(splits=SimpleNamespace(train=[None] * (2 * per_class - 1),
                                                   classes=["a", "b"]))
    assert Frozen().skip(fewer, 0.5) is None  # type: ignore[arg-type]


def test_frozen_phase_warm_start_keeps_head(tiny_data: Path, cache_dir: str) -> None:
    """In the ladder, frozen starts from the extract head: its first epoch is already good."""
    clf = ImageClassifier(**TINY, strategy="ladder", epochs=20, cache_dir=cache_dir).fit(tiny_data)
    frozen = [r for r in clf.history_ if r["phase"] == "frozen"]
    assert frozen[0]["val_accuracy"] >= 0.9


def test_finetune_unfreeze_all_and_optimizers(tiny_data: Path, cache_dir: str) -> None:
    for opt, sched in (("sgd", "onecycle"), ("adamw", "cosine"), ("nadam", "none")):
        clf = ImageClassifier(**TINY, strategy="finetune", unfreeze="all", epochs=1,
                              optimizer=opt, schedule=sched, cache_dir=cache_dir).fit(tiny_data)
        counts = clf.trainable_["finetune"]
        assert counts["frozen_params"] == 0
    assert clf.config()["hyperparameters"]["phases"]["finetune"]["optimizer"] == "nadam"


def test_discriminative_learning_rates(tiny_data: Path, cache_dir: str, monkeypatch) -> None:
    import graftwork.phases.base as cmod  # where phases call the training loop

    seen = {}
    real_fit = cmod.fit

    def spy(model, train, val, cfg, **kw):
        if kw.get("phase") == "finetune":
            seen["lrs"] = [g["lr"] for g in kw["param_groups"]]
        return real_fit(model, train, val, cfg, **kw)

    monkeypatch.setattr(cmod, "fit", spy)
    ImageClassifier(**TINY, strategy="finetune", unfreeze=3, epochs=1, lr=1e-3, lr_decay=0.5,
                    cache_dir=cache_dir).fit(tiny_data)
    assert seen["lrs"] == pytest.approx([1e-3, 1e-3, 5e-4, 2.5e-4])  # head, last, ..., earliest


def test_augmentation_is_random_and_switchable() -> None:
    from PIL import Image

    pre = Preprocessing.from_dict({"image_size": 32, "mean": [0.5] * 3, "std": [0.5] * 3,
                                   "interpolation": "bilinear", "crop_pct": 1.0})
    img = Image.new("RGB", (40, 40))
    img.paste((255, 0, 0), (0, 0, 20, 40))
    torch.manual_seed(0)
    tf = train_transform(pre, AugmentConfig())
    outs = [tf(img) for _ in range(4)]
    assert any(not torch.equal(outs[0], o) for o in outs[1:])
    off = train_transform(pre, AugmentConfig(rotation=0, shift=0, shear=0, zoom=0, hflip=False))
    assert torch.equal(off(img), off(img))
    assert train_transform(pre, None)(img).shape == (3, 32, 32)


def test_validation_is_never_augmented(tiny_data: Path, cache_dir: str) -> None:
    """Same model, same val data: validation accuracy does not depend on augmentation randomness."""
    clf = ImageClassifier(**TINY, strategy="frozen", epochs=1, cache_dir=cache_dir).fit(tiny_data)
    from graftwork.estimator.fit import score_logits

    val = clf.splits_.val
    a = score_logits(val, *clf.session_.logits(val))
    torch.manual_seed(123)
    b = score_logits(val, *clf.session_.logits(val))
    assert a == b


def test_cli_ladder_prints_table(tiny_data: Path, cache_dir: str, tmp_path: Path) -> None:
    res = CliRunner().invoke(main, [
        "train", str(tiny_data), "--backbone", "test_efficientnet", "--weights", "random",
        "--image-size", "32", "--strategy", "ladder", "--epochs", "1", "--workers", "0",
        "--out", str(tmp_path / "run"), "--cache-dir", cache_dir, "-q", "--no-report"])
    assert res.exit_code == 0, res.output
    for word in ("phase", "best_val_accuracy", "test_accuracy", "wall_time_s", "trainable_params",
                 "extract", "frozen", "finetune", "test accuracy"):
        assert word in res.output


def test_bn_policy_recorded_in_config(tiny_data: Path, cache_dir: str) -> None:
    clf = ImageClassifier(**TINY, strategy="finetune", epochs=1, cache_dir=cache_dir,
                          train_bn=True).fit(tiny_data)
    cfg = clf.config()
    assert cfg["bn_policy"]["train_bn"] is True
    assert cfg["bn_policy"]["recalibrated"] is True
    clf.model_.train()
    assert clf.model_.bn_in_train_mode()  # unfrozen BN learns with --train-bn
    frozen = [n for n, m in bn_layers(clf.model_.backbone)
              if not any(p.requires_grad for p in m.parameters())]
    assert frozen and not set(frozen) & {n.removeprefix("backbone.") for n in clf.model_.bn_in_train_mode()}


def test_progress_bars_and_quiet_flag(tiny_data: Path, cache_dir: str, tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    args = ["train", str(tiny_data), "--backbone", "test_efficientnet", "--weights", "random",
            "--image-size", "32", "--strategy", "finetune", "--train-bn", "--epochs", "1",
            "--workers", "0", "--cache-dir", cache_dir, "--no-report"]
    piped = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "p")])  # not a terminal
    assert piped.exit_code == 0, piped.output
    assert "\r" not in piped.output and "it/s" not in piped.output  # no bars in a log file
    assert "finetune epoch 1: loss" in piped.output  # a line per epoch instead
    monkeypatch.setattr(cli_module, "_progress_bars", lambda quiet: not quiet)  # a terminal
    loud = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "a")])
    assert loud.exit_code == 0, loud.output
    for bar in ("features train", "finetune 1/1", "recalibrate BN"):
        assert bar in loud.output
    assert "finetune epoch 1: loss" not in loud.output  # the bars show the epochs
    quiet = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "b"), "-q"])
    assert quiet.exit_code == 0
    assert "finetune 1/1" not in quiet.output and "it/s" not in quiet.output
    assert "epoch 1: loss" not in quiet.output
    assert "test accuracy" in quiet.output  # the final one-screen summary is always printed


def test_unfreeze_out_of_range_fails_before_training(tiny_data: Path, cache_dir: str,
                                                    tmp_path: Path) -> None:
    from graftwork import ConfigError

    with pytest.raises(ConfigError, match="has 6 blocks"):
        ImageClassifier(**TINY, strategy="finetune", unfreeze=99, cache_dir=cache_dir).fit(tiny_data)
    res = CliRunner().invoke(main, [
        "train", str(tiny_data), "--backbone", "test_efficientnet", "--weights", "random",
        "--strategy", "ladder", "--unfreeze", "99", "--out", str(tmp_path / "r"), "-q"])
    assert res.exit_code == 2 and "Fix: choose 0..6, 'all' or 'auto'" in res.output
    assert not (tmp_path / "r" / "model.safetensors").exists()
