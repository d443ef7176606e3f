"""Fitting an :class:`~graftwork.classifier.ImageClassifier`: data, backbone, head, the phases
of the strategy in turn (the ladder keeps the best), BatchNorm recalibration, final metrics."""
from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from tqdm.auto import tqdm

from graftwork.model import bn as bn_mod
from graftwork.features.prepared import load_prepared, store_prepared
from graftwork.estimator.session import Session
from graftwork.backbones.catalog import create_backbone
from graftwork.training.callbacks import Callback, History, LogLines, dispatch
from graftwork.data.discover import Sample, Splits, discover
from graftwork.data.transforms import eval_transform
from graftwork.training.devices import Runtime
from graftwork.errors import DataError
from graftwork.features import default_cache_dir
from graftwork.model.heads import build_head, head_dropout
from graftwork.model.graft import bn_layers
from graftwork.phases import SEQUENCES, PhaseContext, plan
from graftwork.training.loop import evaluate, resolve_class_weights, seed_everything

if TYPE_CHECKING:
    from graftwork.estimator.classifier import ImageClassifier

__all__ = ["fit_classifier", "prediction_rows", "score_logits"]

log = logging.getLogger(__name__)



def fit_classifier(clf: ImageClassifier, data: str | Path, *, checkpoint_dir: Path | None,
                   resume: bool, callbacks: Sequence[Callback] = ()) -> None:
    """Train ``clf`` on ``data`` and set its learned attributes (``classes_``, ``model_``, ...)."""
    t0 = time.perf_counter()
    params = clf.get_params(deep=False)
    phases = plan(params["strategy"])
    seed_everything(params["seed"])
    splits = discover(data, params["val_fraction"], params["test_fraction"], params["seed"])
    backbone = _resolve_backbone(params, needs_network=any(p.needs_network for p in phases))
    preprocessing = backbone.spec.preprocessing(params["image_size"])
    torch.manual_seed(params["seed"])  # the head's initial weights must not depend on whether
    head = build_head(params["head"], backbone.feature_dim, len(splits.classes),  # the backbone
                      params["hidden"], head_dropout(params["head"], params["dropout"]))  # drew
    session = Session(backbone, head, preprocessing, train_bn=params["train_bn"],
                      cache_dir=params["cache_dir"], batch_size=params["batch_size"],
                      num_workers=params["num_workers"], strict=params["strict"],
                      progress=params["progress"], engine=params["engine"])
    session.tta = bool(params.get("tta"))
    session.head_spec = {"kind": "mlp" if params["head"] == "auto" else params["head"],
                         "hidden": params["hidden"],
                         "dropout": head_dropout(params["head"], params["dropout"])}
    session.skipped.update({s.path: s.reason for s in splits.skipped})  # not images: never
                                                                    # an error, even --strict
    history = History()
    ctx = PhaseContext(params, session, splits, checkpoint_dir, resume,
                       [history, LogLines(), *callbacks],
                       class_weights=resolve_class_weights(params.get("class_weights"),
                                                           splits.classes,
                                                           [s.label for s in splits.train]))
    if any(p.needs_network for p in phases):
        from graftwork.training.distributed import Distributed

        ctx.dist = session.dist = Distributed.from_env()  # torchrun / accelerate launch
        ctx.runtime = Runtime.resolve(params["device"], params["precision"])
        log.info("device %s, precision %s (%s)", *ctx.runtime.describe().values())
    clf.runtime_ = ctx.runtime.describe() if ctx.runtime else {"device": "cpu",
                                                                "precision": "fp32",
                                                                "reason": "head on features"}
    for phase in phases:
        phase.check(ctx)  # every phase's parameters, before any training
    if checkpoint_dir is not None:
        ctx.fingerprint = fingerprint(params, splits)
    clf.classes_, clf.splits_, clf.session_ = splits.classes, splits, session
    clf.pretrained_weights_, clf.preprocessing_ = backbone.weights, preprocessing
    clf.phases_, clf.trainable_, clf.phase_configs_, clf.skipped_phases_ = [], {}, {}, {}
    best: tuple[float, float, str, dict[str, torch.Tensor], bool] | None = None
    sequence = params["strategy"] in SEQUENCES
    for i, phase in enumerate(phases):
        why = phase.skip(ctx, best[0] if best else None) if sequence and i else None
        if why:
            log.info("%s skipped: %s", phase.name, why)
            clf.skipped_phases_[phase.name] = why
            continue
        start = ctx.previous
        if sequence and best is not None and best[2] != ctx.previous:
            # a rung that did not improve validation is not climbed from: the next phase
            # warm-starts from the best phase so far
            log.info("%s starts from %s (%s did not improve validation accuracy)", phase.name,
                     best[2], ctx.previous)
            session.model.load_state_dict(best[3])
            session.pristine, start = best[4], best[2]
        result, cfg, counts = phase.run(ctx)
        ctx.previous = phase.name
        clf.trainable_[phase.name], clf.phase_configs_[phase.name] = counts, cfg
        val = result.best_val or {"accuracy": math.nan, "loss": math.nan}
        test = _evaluate(session, splits.test) if splits.test else {}
        row = {"phase": phase.name, "best_val_accuracy": val.get("accuracy"),
               "best_val_loss": val.get("loss"), "test_accuracy": test.get("accuracy"),
               "test_loss": test.get("loss"), "epochs": len(result.history),
               "best_epoch": result.best_epoch, "wall_time_s": round(result.seconds, 2),
               "trainable_params": counts["trainable_params"], "warm_start": start}
        clf.phases_.append(row)
        dispatch(ctx.callbacks, "on_phase_end", phase.name, row)
        score = (val.get("accuracy", -1.0), -val.get("loss", 0.0))
        if len(phases) > 1 and (best is None or score > best[:2]):
            state = {k: v.clone() for k, v in session.model.state_dict().items()}
            best = (*score, phase.name, state, session.pristine)
    clf.history_ = history.rows
    clf.head_ = dict(session.head_spec)
    clf.extract_stats_ = session.extract_stats
    clf.unfrozen_blocks_ = session.unfrozen_blocks
    if sequence and best is not None:
        session.model.load_state_dict(best[3])  # a sequence keeps its best phase
        clf.best_phase_, session.pristine = best[2], best[4]
    clf.bn_ = recalibrate_if_needed(session, splits, params)
    session.eval()
    calibration = calibrate_if_asked(clf, session, splits, params)
    clf.metrics_ = _final_metrics(clf, session, splits, time.perf_counter() - t0)
    if calibration:
        clf.metrics_["calibration"] = calibration


def _resolve_backbone(params: dict[str, Any], needs_network: bool) -> Any:
    """The backbone; when no phase needs the network, its prepared record if one is stored
    (no network is built unless some features are missing). Records are stored for later."""
    root = params["cache_dir"] or default_cache_dir()
    if not needs_network:
        prepared = load_prepared(root, params["backbone"], params["weights"])
        if prepared is not None:
            log.info("backbone %s: prepared record %s", params["backbone"], prepared.path.name)
            return prepared
    backbone = create_backbone(params["backbone"], params["weights"])
    store_prepared(root, params["backbone"], params["weights"], backbone,
                   params["image_size"] or backbone.spec.input_size)
    return backbone


def fingerprint(params: dict[str, Any], splits: Splits) -> dict[str, Any]:
    """What a checkpoint was trained on: classes, the splits' contents, the settings."""
    from graftwork.data.digests import file_digests

    h = hashlib.sha256()
    for name in ("train", "val"):
        samples = getattr(splits, name)
        digests = file_digests([s.path for s in samples], params["cache_dir"] or default_cache_dir())
        for s, d in sorted(zip(samples, digests), key=lambda t: (t[1] or b"", t[0].label)):
            h.update(name.encode() + (d or s.path.encode()) + str(s.label).encode())
    from graftwork.estimator.persist import learned_settings

    return {"classes": list(splits.classes), "data": h.hexdigest()[:16],
            "backbone": params["backbone"], "strategy": params["strategy"],
            "settings": learned_settings(params)}


def _evaluate(session: Session, samples: Sequence[Sample]) -> dict[str, float]:
    return score_logits(samples, *session.logits(samples))


def score_logits(samples: Sequence[Sample], logits: torch.Tensor,
                 ok: torch.Tensor) -> dict[str, float]:
    """Accuracy and loss of ``logits`` (rows of the samples where ``ok``)."""
    labels = torch.tensor([s.label for s in samples], dtype=torch.long)[ok]
    return evaluate(nn.Identity(), [(logits, labels)])


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
    before = _evaluate(session, splits.val) if splits.val else {}
    batches = tqdm(session.image_batches(splits.train, eval_transform(session.preprocessing),
                                         None, 64),
                   desc="recalibrate BN", total=session.steps(len(splits.train), 64),
                   unit="batch", disable=not session.progress, leave=False)
    names = bn_mod.recalibrate(session.model, batches, [f"backbone.{n}" for n in layers])
    after = _evaluate(session, splits.val) if splits.val else {}
    policy.update(recalibrated=True, layers=len(names), val_before=before, val_after=after)
    return policy


def calibrate_if_asked(clf: ImageClassifier, session: Session, splits: Splits,
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


def _final_metrics(clf: ImageClassifier, session: Session, splits: Splits,
                   seconds: float) -> dict[str, Any]:
    for name in ("train", "val", "test"):
        check_usable(session, getattr(splits, name), name)
    metrics: dict[str, Any] = {"val": _evaluate(session, splits.val) if splits.val else {}}
    if splits.test:
        logits, ok = session.logits(splits.test)  # once for the metrics and the rows
        metrics["test"] = score_logits(splits.test, logits, ok)
        clf.test_predictions_ = prediction_rows(clf.classes_, splits.test, logits, ok)
    metrics.update(phases=clf.phases_, bn=clf.bn_, skipped=len(session.skipped),
                   wall_time_s=round(seconds, 2), features=session.extract_stats)
    if clf.skipped_phases_:
        metrics["skipped_phases"] = dict(clf.skipped_phases_)
    return metrics


def check_usable(session: Session, samples: Sequence[Sample], split: str) -> None:
    """A split whose every image was skipped is an error, not a model with NaN metrics."""
    if samples and all(s.path in session.skipped for s in samples):
        first = samples[0].path
        raise DataError(f"every image of the {split} split was skipped ({len(samples)} files; "
                        f"e.g. {first}: {session.skipped[first]})",
                        "fix or replace the images (the reasons are listed above), or check "
                        "--image-size")


def prediction_rows(classes: Sequence[str], samples: Sequence[Sample], logits: torch.Tensor,
                    ok: torch.Tensor) -> list[dict[str, Any]]:
    """One row per usable sample: path, label, prediction, probabilities, loss."""
    probs = logits.softmax(1)
    kept = [s for s, good in zip(samples, ok.tolist()) if good]
    rows = []
    for s, p in zip(kept, probs):
        pred = int(p.argmax())
        rows.append({"path": s.path, "label": classes[s.label], "pred": classes[pred],
                     "prob": round(float(p[pred]), 6), "prob_true": round(float(p[s.label]), 6),
                     "loss": round(-math.log(max(float(p[s.label]), 1e-12)), 6)})
    return rows
