"""Fitting an :class:`~graftwork.estimator.classifier.ImageClassifier`: data, features (the
backbone or its prepared record, :func:`graftwork.features.open_features`), head, the phases of
the strategy (run by :func:`graftwork.phases.ladder.climb`, which keeps a sequence's best
rung), BatchNorm recalibration, calibration, final metrics."""
from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from graftwork.data.digests import file_digests
from graftwork.data.hygiene import read_exclude, split_copies, without
from graftwork.data.discover import Sample, Splits, discover
from graftwork.data.transforms import eval_transform
from graftwork.errors import DataError
from graftwork.estimator.base import ParamsMixin
from graftwork.estimator.persist import learned_settings
from graftwork.estimator.refit import refit, starting_backbone, with_val_in_train
from graftwork.features.cache import cache_root
from graftwork.features.open import open_features
from graftwork.features.session import RunOptions, Session
from graftwork.model import bn as bn_mod
from graftwork.model.graft import bn_layers
from graftwork.model.heads import build_head, head_dropout
from graftwork.phases import SEQUENCES, Phase, PhaseContext
from graftwork.phases.ladder import KEEP_RULE, climb
from graftwork.training.callbacks import Callback, History, LogLines
from graftwork.training.devices import Runtime
from graftwork.training.loop import resolve_class_weights, seed_everything
from graftwork.training.metrics import prediction_rows, score_logits

__all__ = ["fit_classifier", "fingerprint"]

log = logging.getLogger(__name__)


def fit_classifier(clf: ParamsMixin, data: str | Path, phases: Sequence[Phase], *,
                   checkpoint_dir: Path | None, resume: bool,
                   callbacks: Sequence[Callback] = ()) -> None:
    """Train ``clf`` on ``data`` through ``phases`` (``validate_params``' plan) and set its
    learned attributes (``classes_``, ``session_``, ``phases_``, ``metrics_``, ...)."""
    t0 = time.perf_counter()
    params = clf.get_params(deep=False)
    seed_everything(params["seed"])
    splits = discover(data, params["val_fraction"], params["test_fraction"], params["seed"])
    splits = _data_checks(clf, splits, data, params)
    needs_network = any(p.needs_network for p in phases)
    source = open_features(params["backbone"], params["weights"], params["image_size"],
                           params["cache_dir"], network=needs_network)
    torch.manual_seed(params["seed"])  # the head's initial weights must not depend on whether
    dropout = head_dropout(params["head"], params["dropout"])  # the backbone drew numbers
    head = build_head(params["head"], source.backbone.feature_dim, len(splits.classes),
                      params["hidden"], dropout)
    runtime = Runtime.resolve(params["device"], params["precision"]) if needs_network else None
    dist = None
    if needs_network:
        from graftwork.training.distributed import Distributed

        dist = Distributed.from_env()  # torchrun / accelerate launch
        log.info("device %s, precision %s (%s)", *runtime.describe().values())
    session = Session(source.backbone, head, source.preprocessing, train_bn=params["train_bn"],
                      options=RunOptions.from_params(params),
                      skipped={s.path: s.reason for s in splits.skipped},  # not images: never
                      head_spec={"kind": "mlp" if params["head"] == "auto" else params["head"],
                                 "hidden": params["hidden"], "dropout": dropout},  # an error
                      dist=dist)
    history = History()
    ctx = PhaseContext(params, session, splits, checkpoint_dir, resume,
                       [history, LogLines(), *callbacks], runtime=runtime, dist=dist,
                       class_weights=resolve_class_weights(params.get("class_weights"),
                                                           splits.classes,
                                                           [s.label for s in splits.train]))
    clf.runtime_ = runtime.describe() if runtime else {"device": "cpu", "precision": "fp32",
                                                       "reason": "head on features"}
    for phase in phases:
        phase.check(ctx)  # every phase's parameters, before any training
    if checkpoint_dir is not None:
        ctx.fingerprint = fingerprint(params, splits)
    clf.classes_, clf.splits_, clf.session_ = splits.classes, splits, session
    clf.pretrained_weights_, clf.preprocessing_ = source.backbone.weights, source.preprocessing
    sequence = params["strategy"] in SEQUENCES
    refitting = bool(params.get("refit")) and bool(splits.val)
    if params.get("refit") and not splits.val:
        log.warning("refit: no validation images to add to training; the model is not refit")
    start = starting_backbone(ctx) if refitting else None
    climbed = climb(phases, ctx, sequence=sequence,
                    test=lambda: session.score(splits.test) if splits.test else {})
    clf.phases_, clf.trainable_ = climbed.rows, climbed.trainable
    clf.phase_configs_, clf.skipped_phases_ = climbed.configs, climbed.skipped
    clf.keep_ = {}
    if climbed.kept is not None:
        clf.best_phase_ = climbed.kept.phase
        clf.keep_ = {"kept": climbed.kept.phase, "rule": KEEP_RULE,
                     "decisions": [{k: v for k, v in d.items()} for d in climbed.decisions]}
    clf.refit_ = None
    if refitting:
        val_before = session.score(splits.val)
        clf.refit_ = {**refit(ctx, phases, climbed, sequence=sequence, backbone=start),
                      "val_before_refit": val_before}
        splits = with_val_in_train(splits)  # BN recalibration sees them all
    clf.history_ = history.rows
    clf.head_ = dict(session.head_spec)
    clf.extract_stats_ = session.extract_stats
    clf.unfrozen_blocks_ = session.unfrozen_blocks
    clf.bn_ = recalibrate_if_needed(session, splits, params)
    session.eval()
    calibration = calibrate_if_asked(clf, session, splits, params)
    clf.metrics_ = _final_metrics(clf, session, splits, time.perf_counter() - t0)
    if clf.refit_:  # validation accuracy as measured before the refit trained on those images
        clf.metrics_.update(val=clf.refit_["val_before_refit"], refit=clf.refit_)
    if calibration:
        clf.metrics_["calibration"] = calibration


def _data_checks(clf: ParamsMixin, splits: Splits, data: str | Path,
                 params: dict[str, Any]) -> Splits:
    """The files ``exclude`` lists left out (``clf.excluded_``, relative to DATA), and a
    warning (``clf.warnings_``) when held-out images are exact copies of training images."""
    dropped: list[str] = []
    if params.get("exclude"):
        splits, dropped = without(splits, read_exclude(params["exclude"], data))
        log.info("left out %d files listed in %s", len(dropped), params["exclude"])
    clf.excluded_ = sorted(os.path.relpath(p, data) for p in dropped)
    clf.warnings_ = []
    copies = split_copies(splits, cache_root(params["cache_dir"]))
    if copies:
        train, held = copies[0]
        clf.warnings_.append(
            f"{len(copies)} held-out images are exact copies of training images (e.g. "
            f"{os.path.relpath(held, data)} = {os.path.relpath(train, data)}): the val/test "
            "accuracy is inflated; `graft audit DATA` lists them, `--exclude` leaves them out")
        log.warning("%s", clf.warnings_[-1])
    return splits


def fingerprint(params: dict[str, Any], splits: Splits) -> dict[str, Any]:
    """What a checkpoint was trained on: classes, the splits' contents, the settings."""
    h = hashlib.sha256()
    for name in ("train", "val"):
        samples = getattr(splits, name)
        digests = file_digests([s.path for s in samples], cache_root(params["cache_dir"]))
        for s, d in sorted(zip(samples, digests), key=lambda t: (t[1] or b"", t[0].label)):
            h.update(name.encode() + (d or s.path.encode()) + str(s.label).encode())
    return {"classes": list(splits.classes), "data": h.hexdigest()[:16],
            "backbone": params["backbone"], "strategy": params["strategy"],
            "settings": learned_settings(params)}


def recalibrate_if_needed(session: Session, splits: Splits, params: dict[str, Any]) -> dict[str, Any]:
    """BN policy record; recompute statistics of BN layers that training may have changed."""
    train_bn = params["train_bn"]
    policy = {"frozen_bn": "inference mode",
              "unfrozen_bn": "train" if train_bn else "inference mode", "recalibrated": False}
    layers = [] if not train_bn or session.pristine else [
        n for n, m in bn_layers(session.model.backbone)
        if any(p.requires_grad for p in m.parameters(recurse=False))]
    if not layers:
        policy["reason"] = "BN running statistics could not change (frozen or inference mode)"
        return policy
    if not params["recalibrate"]:
        policy["reason"] = "recalibration disabled"
        return policy
    before = session.score(splits.val) if splits.val else {}
    batches = tqdm(session.image_batches(splits.train, eval_transform(session.preprocessing),
                                         None, 64),
                   desc="recalibrate BN", total=session.steps(len(splits.train), 64),
                   unit="batch", disable=not session.options.progress, leave=False)
    names = bn_mod.recalibrate(session.model, batches, [f"backbone.{n}" for n in layers])
    after = session.score(splits.val) if splits.val else {}
    policy.update(recalibrated=True, layers=len(names), val_before=before, val_after=after)
    return policy


def calibrate_if_asked(clf: ParamsMixin, session: Session, splits: Splits,
                       params: dict[str, Any]) -> dict[str, Any]:
    """With ``calibrate``: a softmax temperature fitted on the validation logits, applied by
    the session from now on (``clf.calibration_``); returns the metrics section (ECE and
    reliability bins before/after, on the test split if there is one, else validation)."""
    from graftwork.model.calibration import calibration_report, fit_temperature

    clf.calibration_ = None
    session.temperature = 1.0
    if not params.get("calibrate"):
        return {}
    if not splits.val:
        log.warning("calibrate: no validation images, temperature left at 1")
        return {}
    logits, ok = session.logits(splits.val)
    labels = torch.tensor([s.label for s in splits.val], dtype=torch.long)[ok]
    temperature = fit_temperature(logits, labels)
    name, samples = ("test", splits.test) if splits.test else ("val", splits.val)
    if name == "test":
        logits, ok = session.logits(samples)
        labels = torch.tensor([s.label for s in samples], dtype=torch.long)[ok]
    session.temperature = temperature
    clf.calibration_ = {"temperature": temperature}
    report = calibration_report(logits, labels, temperature)
    log.info("calibration: temperature %.3f, %s ECE %.4f -> %.4f", temperature, name,
             report["ece_before"], report["ece_after"])
    return {**report, "split": name}


def _final_metrics(clf: ParamsMixin, session: Session, splits: Splits,
                   seconds: float) -> dict[str, Any]:
    for name in ("train", "val", "test"):
        check_usable(session, getattr(splits, name), name)
    metrics: dict[str, Any] = {"val": session.score(splits.val) if splits.val else {}}
    if splits.test:
        logits, ok = session.logits(splits.test)  # once for the metrics and the rows
        metrics["test"] = score_logits(splits.test, logits, ok)
        clf.test_predictions_ = prediction_rows(clf.classes_, splits.test, logits, ok)
    metrics.update(phases=clf.phases_, bn=clf.bn_, skipped=len(session.skipped),
                   wall_time_s=round(seconds, 2), features=session.extract_stats)
    if clf.skipped_phases_:
        metrics["skipped_phases"] = dict(clf.skipped_phases_)
    if clf.warnings_:
        metrics["warnings"] = list(clf.warnings_)
    if getattr(clf, "keep_", None):
        metrics["keep"] = clf.keep_  # which rung was kept, and each decision's numbers
    return metrics


def check_usable(session: Session, samples: Sequence[Sample], split: str) -> None:
    """A split whose every image was skipped is an error, not a model with NaN metrics."""
    if samples and all(s.path in session.skipped for s in samples):
        first = samples[0].path
        raise DataError(f"every image of the {split} split was skipped ({len(samples)} files; "
                        f"e.g. {first}: {session.skipped[first]})",
                        "fix or replace the images (the reasons are listed above), or check "
                        "--image-size")
