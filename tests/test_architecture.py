"""The architecture's contracts: scikit-learn estimator API, the phase registry (a new strategy
is one class), callbacks and loggers."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from graftwork import AugmentConfig, ConfigError, ImageClassifier
from graftwork.training.callbacks import Callback
from graftwork.cli import main
from graftwork.phases import (PHASES, SEQUENCES, Phase, PhaseContext, PhaseDefaults, PhasePlan,
                              register_phase, register_strategy, strategy_names)
from graftwork.training.loop import evaluate, tensor_batches
from tests.conftest import TINY, make_image_folder


# ------------------------------------------------------------------ scikit-learn contract
def test_get_params_is_the_signature_and_clone_works() -> None:
    sklearn_base = pytest.importorskip("sklearn.base")
    clf = ImageClassifier(strategy="frozen", epochs=3, augment=AugmentConfig(rotation=10))
    params = clf.get_params()
    import inspect

    assert set(params) == set(inspect.signature(ImageClassifier).parameters)
    copy = sklearn_base.clone(clf)
    assert copy is not clf and copy.get_params() == params
    assert copy.augment == clf.augment  # sklearn deep-copies non-estimator parameters
    assert not hasattr(copy, "classes_")
    assert repr(clf).startswith("ImageClassifier(") and "epochs=3" in repr(clf)


def test_graft_train_defaults_are_the_estimators() -> None:
    """Every ``graft train`` option named like an ``ImageClassifier`` parameter has the
    estimator's default: the CLI and the Python API train the same model when nothing is set."""
    import inspect

    signature = inspect.signature(ImageClassifier).parameters
    def default(option: Any) -> Any:  # an on/off flag without a default is off
        flag = getattr(option, "is_flag", False) and not isinstance(option.default, bool)
        return False if flag else option.default

    shared = {o.name: default(o) for o in main.commands["train"].params
              if o.name in signature and not o.multiple}
    assert {"unfreeze", "lr_decay", "batch_size", "hidden", "augment_policy", "seed"} <= set(shared)
    differ = {k: (v, signature[k].default) for k, v in shared.items()
              if v != signature[k].default}
    assert not differ, differ


def test_set_params_returns_self_and_rejects_unknown_names() -> None:
    clf = ImageClassifier()
    assert clf.set_params(epochs=5, head="linear") is clf
    assert (clf.epochs, clf.head) == (5, "linear")
    with pytest.raises(ValueError, match="invalid parameter 'epoch'"):
        clf.set_params(epoch=5)


def test_parameters_are_checked_before_any_work(tiny_data: Path, cache_dir: str) -> None:
    for bad in ({"epochs": 0}, {"lr": -1.0}, {"batch_size": 0}, {"head": "deep"},
                {"strategy": "nope"}, {"unfreeze": -1}, {"device": "tpu"},
                {"val_fraction": 0.6, "test_fraction": 0.5}):
        with pytest.raises(ConfigError):
            ImageClassifier(**{**TINY, **bad}, cache_dir=cache_dir).fit(tiny_data)
    assert not Path(cache_dir).exists()  # failed before touching the cache


def test_predict_proba_and_score(tiny_data: Path, cache_dir: str) -> None:
    clf = ImageClassifier(**TINY, epochs=20, cache_dir=cache_dir).fit(tiny_data)
    folder = tiny_data / "test" / "class_1"
    proba = clf.predict_proba(folder)
    assert proba.shape == (4, 3) and np.allclose(proba.sum(1), 1, atol=1e-5)
    rows = clf.predict(folder, top_k=3)
    assert [r["label"] for r in rows] == [clf.classes_[i] for i in proba.argmax(1)]
    assert clf.score(tiny_data / "test") == pytest.approx(clf.evaluate(tiny_data / "test")["accuracy"])
    bad = folder / "broken.png"
    bad.write_bytes(b"not an image")
    assert np.isnan(ImageClassifier.predict_proba(clf, [bad])).all()


# ------------------------------------------------------------------ phases: a toy strategy
class HeadSGD(Phase):
    """A toy strategy: the head on cached features with plain SGD, 3 epochs."""

    name = "toy_sgd"
    description = "toy: head on cached features with SGD"
    defaults = PhaseDefaults(epochs=3, lr=0.05, optimizer="sgd", patience=3)
    needs_network = False

    def batches(self, ctx: PhaseContext) -> PhasePlan:
        x, y = ctx.session.features(ctx.splits.train, "features train")
        xv, yv = ctx.session.features(ctx.splits.val, "features val")
        head = ctx.session.head
        return PhasePlan(head, lambda g, bs: tensor_batches(x, y, bs, g),
                         lambda: evaluate(head, [(xv, yv)]), len(x))


@pytest.fixture()
def toy_phase() -> Any:
    register_phase(HeadSGD)
    register_strategy("toy_ladder", ("extract", "toy_sgd"))
    yield HeadSGD
    PHASES.pop("toy_sgd")
    SEQUENCES.pop("toy_ladder")


def test_a_new_strategy_is_one_class(toy_phase: Any, tiny_data: Path, cache_dir: str,
                                     tmp_path: Path) -> None:
    assert "toy_sgd" in strategy_names() and "toy_ladder" in strategy_names()
    clf = ImageClassifier(**TINY, strategy="toy_sgd", cache_dir=cache_dir).fit(tiny_data)
    assert [p["phase"] for p in clf.phases_] == ["toy_sgd"]
    assert [r["epoch"] for r in clf.history_] == [1, 2, 3]
    assert clf.phase_configs_["toy_sgd"].optimizer == "sgd"
    ladder = ImageClassifier(**TINY, strategy="toy_ladder", epochs=2,
                             cache_dir=cache_dir).fit(tiny_data)
    assert [p["phase"] for p in ladder.phases_] == ["extract", "toy_sgd"]
    assert ladder.best_phase_ in ("extract", "toy_sgd")
    res = CliRunner().invoke(main, ["train", str(tiny_data), "--backbone", "test_efficientnet",
                                    "--weights", "random", "--image-size", "32", "--workers",
                                    "0", "--strategy", "toy_sgd", "--out", str(tmp_path / "r"),
                                    "--cache-dir", cache_dir, "-q", "--no-report"])
    assert res.exit_code == 0, res.output
    help_text = CliRunner().invoke(main, ["train", "--help"]).output
    assert "toy_sgd" in help_text


def test_unknown_strategy_is_a_clean_cli_error(tiny_data: Path, tmp_path: Path) -> None:
    res = CliRunner().invoke(main, ["train", str(tiny_data), "--strategy", "nope",
                                    "--out", str(tmp_path / "r")])
    assert res.exit_code == 2
    lines = res.stderr.strip().splitlines()
    assert lines[-2].startswith("Error: ") and "'--strategy'" in lines[-2]
    assert lines[-1].startswith("Fix: ") and "Traceback" not in res.output


# ------------------------------------------------------------------ callbacks and loggers
class Recorder(Callback):
    def __init__(self) -> None:
        self.events: list[tuple[str, str, Any]] = []

    def on_phase_start(self, phase: str, info: dict[str, Any]) -> None:
        self.events.append(("start", phase, info["trainable_params"]))

    def on_epoch_end(self, phase: str, row: dict[str, Any]) -> None:
        self.events.append(("epoch", phase, row["epoch"]))

    def on_phase_end(self, phase: str, summary: dict[str, Any]) -> None:
        self.events.append(("end", phase, summary["best_val_accuracy"]))


def test_callbacks_see_every_phase_and_epoch(tiny_data: Path, cache_dir: str) -> None:
    rec = Recorder()
    clf = ImageClassifier(**TINY, strategy="ladder", epochs=2, cache_dir=cache_dir).fit(
        tiny_data, callbacks=[rec])
    kinds = [(k, p) for k, p, _ in rec.events]
    for phase in ("extract", "frozen", "finetune"):
        assert kinds.count(("start", phase)) == 1 and kinds.count(("end", phase)) == 1
    epochs = [(p, e) for k, p, e in rec.events if k == "epoch"]
    assert epochs == [(r["phase"], r["epoch"]) for r in clf.history_]  # history.csv's rows


def test_tensorboard_logger(tiny_data: Path, cache_dir: str, tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    run = tmp_path / "run"
    res = CliRunner().invoke(main, ["train", str(tiny_data), "--backbone", "test_efficientnet",
                                    "--weights", "random", "--image-size", "32", "--workers",
                                    "0", "--epochs", "2", "--logger", "tensorboard",
                                    "--out", str(run), "--cache-dir", cache_dir, "-q",
                                    "--no-report"])
    assert res.exit_code == 0, res.output
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (events,) = list((run / "tensorboard").glob("events.out.tfevents.*"))
    acc = EventAccumulator(str(events))
    acc.Reload()
    assert [s.step for s in acc.Scalars("extract/loss")] == [1, 2]
    assert "extract/val_accuracy" in acc.Tags()["scalars"]


def test_runtime_recorded(tiny_data: Path, cache_dir: str) -> None:
    clf = ImageClassifier(**TINY, strategy="frozen", epochs=1, device="cpu", precision="fp32",
                          cache_dir=cache_dir).fit(tiny_data)
    assert clf.config()["runtime"]["device"] == "cpu"
    assert clf.config()["runtime"]["precision"] == "fp32"
    assert clf.config()["hyperparameters"]["precision"] == "fp32"
    assert torch.get_num_threads() >= 1


def test_device_option_on_commands_that_run_a_saved_model(tiny_data: Path, cache_dir: str,
                                                          tmp_path: Path) -> None:
    import torch as _torch

    run = ImageClassifier(**TINY, epochs=2, cache_dir=cache_dir).fit(tiny_data).save(
        tmp_path / "run")
    folder = str(tiny_data / "test")
    for cmd in (["predict", str(run), folder, "--format", "json"],
                ["evaluate", str(run), folder, "--json"],
                ["doctor", str(run), str(tiny_data), "--json"]):
        ok = CliRunner().invoke(main, [*cmd, "--device", "cpu"])
        assert ok.exit_code == 0, ok.output
        bad = CliRunner().invoke(main, [*cmd, "--device", "tpu"])
        assert bad.exit_code == 2 and "Error: " in bad.stderr and "Fix: " in bad.stderr
        if not _torch.cuda.is_available():
            gpu = CliRunner().invoke(main, [*cmd, "--device", "cuda"])
            assert gpu.exit_code == 2 and "--device" in gpu.stderr


@pytest.mark.parametrize("val,chosen_by,n", [(20, "validation", 60),
                                             (4, "cross-validation", 36)])
def test_head_auto_chooses_on_validation_and_saves_the_choice(
        val: int, chosen_by: str, n: int, cache_dir: str, tmp_path: Path) -> None:
    """With 20 validation images per class the heads are compared on them; with fewer, on
    every train + val image scored out of fold (5-fold cross-validation)."""
    from graftwork.model.heads import HEAD_CANDIDATES

    data = make_image_folder(tmp_path / "data", counts={"train": 8, "val": val, "test": 4})
    clf = ImageClassifier(**TINY, head="auto", epochs=5, cache_dir=cache_dir).fit(data)
    spec = clf.head_
    assert spec["chosen_by"] == chosen_by and len(spec["candidates"]) == len(HEAD_CANDIDATES)
    chosen = 0  # the first head, replaced only by one significantly better on those images
    for i, cand in enumerate(spec["candidates"][1:], start=1):
        assert cand["vs_kept"]["against"] == chosen and cand["vs_kept"]["n"] == n
        chosen = i if cand["vs_kept"]["better"] else chosen
    assert HEAD_CANDIDATES[chosen].as_dict() == {k: spec[k] for k in
                                                 ("kind", "hidden", "dropout", "weight_decay")}
    if chosen_by == "validation":
        best = spec["candidates"][chosen]["val_accuracy"]
        assert clf.phases_[0]["best_val_accuracy"] == best  # the chosen head, trained again
    assert clf.phase_configs_["extract"].weight_decay == spec["weight_decay"]
    assert clf.phase_options is None  # the choice's settings do not leak into the parameters
    assert [r["epoch"] for r in clf.history_] == list(range(1, len(clf.history_) + 1))
    assert clf.splits_.counts() == {"train": 24, "val": 3 * val, "test": 12}
    loaded = ImageClassifier.load(clf.save(tmp_path / "run"))
    assert loaded.config()["head"]["kind"] == spec["kind"]
    np.testing.assert_allclose(loaded.predict_proba(data / "test"),
                               clf.predict_proba(data / "test"), atol=1e-4)


def test_head_auto_cross_validation_leaves_an_unreadable_image_out(cache_dir: str,
                                                                   tmp_path: Path) -> None:
    """An image the features skip has no row: it is neither right nor wrong for any head."""
    data = make_image_folder(tmp_path / "data", counts={"train": 8, "val": 4, "test": 4})
    (data / "val" / "class_1" / "broken.png").write_bytes(b"not an image")
    clf = ImageClassifier(**TINY, head="auto", epochs=2, cache_dir=cache_dir).fit(data)
    spec = clf.head_
    assert spec["chosen_by"] == "cross-validation"
    assert {c["vs_kept"]["n"] for c in spec["candidates"][1:]} == {36}  # 37 files, 36 images


def test_stratified_folds_hold_each_image_once_and_each_class_in_proportion() -> None:
    from graftwork.phases.extract import stratified_folds

    labels = [0] * 10 + [1] * 5 + [2] * 7
    folds = stratified_folds(labels, 5, seed=3)
    held = sorted(j for _, h in folds for j in h)
    assert held == list(range(len(labels)))
    for train, h in folds:
        assert sorted(train + h) == list(range(len(labels)))
        assert [labels[j] for j in h].count(0) == 2 and [labels[j] for j in h].count(1) == 1
    assert stratified_folds(labels, 5, seed=3) == folds != stratified_folds(labels, 5, seed=4)


class Sabotage(Phase):
    """A rung that makes the head worse: its 'training' zeroes the head (val accuracy drops)."""

    name = "toy_sabotage"
    defaults = PhaseDefaults(epochs=1, lr=1e-9, optimizer="sgd", patience=1)
    needs_network = False

    def batches(self, ctx: PhaseContext) -> PhasePlan:
        head = ctx.session.head
        with torch.no_grad():
            for p in head.parameters():
                p.zero_()
        xv, yv = ctx.session.features(ctx.splits.val, "features val")
        x, y = ctx.session.features(ctx.splits.train, "features train")
        return PhasePlan(head, lambda g, bs: tensor_batches(x, y, bs, g),
                         lambda: evaluate(head, [(xv, yv)]), len(x))


def test_the_ladder_climbs_from_the_best_rung(tiny_data: Path, cache_dir: str) -> None:
    register_phase(Sabotage)
    register_phase(HeadSGD)
    register_strategy("toy_climb", ("extract", "toy_sabotage", "toy_sgd"))
    try:
        clf = ImageClassifier(**TINY, strategy="toy_climb", epochs=10,
                              cache_dir=cache_dir).fit(tiny_data)
    finally:
        for name in ("toy_sabotage", "toy_sgd"):
            PHASES.pop(name)
        SEQUENCES.pop("toy_climb")
    rows = {r["phase"]: r for r in clf.phases_}
    assert rows["toy_sabotage"]["best_val_accuracy"] < rows["extract"]["best_val_accuracy"]
    assert rows["toy_sabotage"]["warm_start"] == "extract"
    assert rows["toy_sgd"]["warm_start"] == "extract"  # not the sabotaged rung
    assert rows["toy_sgd"]["best_val_accuracy"] >= rows["toy_sabotage"]["best_val_accuracy"]
