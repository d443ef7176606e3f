"""Saving and loading runs: ``model.safetensors`` plus JSON/CSV files, no pickled code."""
from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from graftwork.backbones import WeightsInfo, create_backbone
from graftwork.data import AugmentConfig
from graftwork.errors import ModelFileError, RunDirError
from graftwork.heads import build_head
from graftwork.model import GraftModel, parameter_counts
from graftwork.run import (HISTORY_COLUMNS, PREDICTION_COLUMNS, atomic_file, atomic_write_text,
                           package_versions, read_json, write_csv, write_json)

if TYPE_CHECKING:
    from graftwork.classifier import ImageClassifier

__all__ = ["MODEL_FILE", "run_config", "save_run", "load_run", "wrap_model"]

log = logging.getLogger(__name__)

MODEL_FILE = "model.safetensors"
SUMMARY_FILE = "summary.txt"  # read by the report
C = TypeVar("C", bound="ImageClassifier")


def run_config(clf: ImageClassifier) -> dict[str, Any]:
    """Everything needed to rebuild ``clf``'s model, and to know how it was made."""
    backbone = clf._backbone_ref()
    return {
        "graftwork_format": 1,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "backbone": {**asdict(backbone.spec), "feature_dim": backbone.feature_dim},
        "weights": asdict(clf.pretrained_weights_),
        "classes": clf.classes_,
        "preprocessing": clf.preprocessing_,
        "strategy": clf.strategy,
        "head": {"kind": clf.head, "hidden": clf.hidden, "dropout": clf._head_dropout()},
        "hyperparameters": {**clf.get_params(),
                            "phases": {k: c.as_dict()
                                       for k, c in getattr(clf, "phase_configs_", {}).items()}},
        "bn_policy": {"train_bn": clf.train_bn, **getattr(clf, "bn_", {})},
        "unfrozen_blocks": getattr(clf, "unfrozen_blocks_", []),
        "best_phase": getattr(clf, "best_phase_", None),
        "trainable": getattr(clf, "trainable_", {}),
        "splits": clf.splits_.counts() if hasattr(clf, "splits_") else {},
        "versions": package_versions(),
    }


def save_run(clf: ImageClassifier, run_dir: str | Path) -> Path:
    """Write the model (atomically), its config, metrics, history, predictions, skipped files."""
    out = Path(run_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous() for k, v in clf._state_dict().items()}
    with atomic_file(out / MODEL_FILE) as tmp:
        save_file(state, tmp, metadata={"format": "graftwork"})
    write_json(out / "config.json", run_config(clf))
    write_json(out / "metrics.json", getattr(clf, "metrics_", {}))
    write_csv(out / "history.csv", HISTORY_COLUMNS, getattr(clf, "history_", []))
    if getattr(clf, "test_predictions_", None):
        write_csv(out / "predictions_test.csv", PREDICTION_COLUMNS, clf.test_predictions_)
    if getattr(clf, "_skipped", None):
        write_csv(out / "skipped.csv", ("path", "reason"),
                  ({"path": p, "reason": r} for p, r in sorted(clf._skipped.items())))
    try:
        atomic_write_text(out / SUMMARY_FILE, clf.summary() + "\n")
    except Exception as exc:  # a summary problem must not lose a trained model
        log.warning("summary not written: %s", exc)
    log.info("saved run to %s", out)
    return out


def wrap_model(cls: type[C], model: GraftModel, classes: Sequence[str],
               preprocessing: dict[str, Any] | None = None) -> C:
    """A fitted classifier around a model trained elsewhere (its head made by ``build_head``)."""
    spec = model.backbone.spec
    clf = cls(backbone=spec.name, head="custom", progress=False)
    clf.model_ = model
    clf.classes_ = list(classes)
    clf.preprocessing_ = preprocessing or spec.preprocessing()
    clf.pretrained_weights_ = model.backbone.weights
    clf.bn_ = {}
    clf.trainable_ = {"given": parameter_counts(model)}
    clf._backbone_pristine = False
    head = model.head
    linear = [m for m in head.modules() if isinstance(m, nn.Linear)]
    if isinstance(head, nn.Sequential) and len(linear) == 2:
        clf.head, clf.hidden = "mlp", linear[0].out_features
    elif isinstance(head, nn.Sequential) and len(linear) == 1:
        clf.head = "linear"
    else:
        raise ValueError("from_model needs a head made by graftwork.heads.build_head")
    dropout = [m.p for m in head.modules() if isinstance(m, nn.Dropout)]
    clf.dropout = dropout[0] if dropout else 0.0
    return clf


def load_run(cls: type[C], run_dir: str | Path) -> C:
    """Rebuild a saved classifier from ``run_dir`` (no pickled code is executed)."""
    run = Path(run_dir)
    if not (run / "config.json").is_file() or not (run / MODEL_FILE).is_file():
        raise RunDirError(f"{str(run)!r} is not a run directory with a saved model",
                          "pass a folder written by `graft train --out`")
    try:
        cfg = read_json(run / "config.json")
        params = dict(cfg["hyperparameters"])
    except (ValueError, KeyError) as exc:
        raise ModelFileError(f"{str(run / 'config.json')!r} is corrupt: {exc}",
                             "re-train, or restore the run directory") from exc
    params.pop("phases", None)
    aug = params.pop("augment", None)
    clf = cls(**params, augment=AugmentConfig(**aug) if aug else None, progress=False)
    backbone = create_backbone(cfg["backbone"]["name"], pretrained=False)
    head_cfg = cfg["head"]
    head = build_head(head_cfg["kind"], backbone.feature_dim, len(cfg["classes"]),
                      head_cfg["hidden"], head_cfg["dropout"])
    model = GraftModel(backbone, head, cfg["bn_policy"].get("train_bn", False))
    try:
        model.load_state_dict(load_file(str(run / MODEL_FILE)))
    except (SafetensorError, RuntimeError, OSError) as exc:
        raise ModelFileError(f"{str(run / MODEL_FILE)!r} is corrupt or does not match "
                             f"config.json: {str(exc).splitlines()[0][:200]}",
                             "re-train, or restore the run directory") from exc
    model.eval()
    clf.model_ = model
    clf.classes_ = list(cfg["classes"])
    clf.preprocessing_ = cfg["preprocessing"]
    clf.pretrained_weights_ = WeightsInfo.from_dict(cfg["weights"])
    clf.bn_ = {k: v for k, v in cfg["bn_policy"].items() if k != "train_bn"}
    clf.trainable_ = cfg.get("trainable", {})
    clf._backbone_pristine = False
    if (run / "metrics.json").is_file():
        clf.metrics_ = read_json(run / "metrics.json")
    return clf
