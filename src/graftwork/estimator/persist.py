"""Saving and loading runs: ``model.safetensors`` plus JSON/CSV files, no pickled code.

File names, columns, the format version, validation and the integrity seal are defined in
:mod:`graftwork.rundir`; this module maps a classifier onto them and back.
"""
from __future__ import annotations

import datetime as dt
import logging
import os
import secrets
import shutil
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, TypeVar

from safetensors import SafetensorError
from safetensors.torch import load as load_bytes
from safetensors.torch import save_file
from torch import nn

from graftwork import rundir
from graftwork.features.prepared import PreparedBackbone
from graftwork.estimator.base import ParamsMixin
from graftwork.features.session import RunOptions, Session
from graftwork.backbones.spec import WeightsInfo
from graftwork.backbones.catalog import create_backbone
from graftwork.data.preprocess import Preprocessing
from graftwork.data.transforms import AugmentConfig
from graftwork.errors import ConfigError, ModelFileError
from graftwork.model.heads import build_head, head_dropout
from graftwork.model.graft import GraftModel, parameter_counts
from graftwork.model.summary import backbone_table, run_summary

__all__ = ["run_config", "learned_settings", "save_run", "load_run", "wrap_model", "run_summary_text",
           "save_metrics", "RUNTIME_PARAMS"]

log = logging.getLogger(__name__)
C = TypeVar("C", bound=ParamsMixin)  # an ImageClassifier
#: How to run, not what was learned: not saved as hyperparameters.
RUNTIME_PARAMS = ("cache_dir", "num_workers", "progress", "strict", "engine")


def learned_settings(params: dict[str, Any]) -> dict[str, Any]:
    """The parameters that shape what is learned (not ``RUNTIME_PARAMS``), JSON-able: saved as
    hyperparameters and part of a checkpoint's fingerprint."""
    return {k: (v.as_dict() if hasattr(v, "as_dict") else v) for k, v in params.items()
            if k not in RUNTIME_PARAMS}


def _hyperparameters(clf: ParamsMixin) -> dict[str, Any]:
    params = learned_settings(clf.get_params(deep=False))
    params["phases"] = {k: c.as_dict() for k, c in getattr(clf, "phase_configs_", {}).items()}
    return params


def run_config(clf: ParamsMixin) -> dict[str, Any]:
    """Everything needed to rebuild ``clf``'s model, and to know how it was made."""
    session: Session = clf.session_
    backbone = session.backbone
    calibration = getattr(clf, "calibration_", None)
    return {
        "graftwork_format": rundir.FORMAT_VERSION,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "backbone": {**asdict(backbone.spec), "feature_dim": backbone.feature_dim},
        "weights": asdict(clf.pretrained_weights_),
        "classes": clf.classes_,
        "preprocessing": clf.preprocessing_.as_dict(),
        "strategy": clf.strategy,
        "head": getattr(clf, "head_", None) or {"kind": clf.head, "hidden": clf.hidden,
                                                "dropout": head_dropout(clf.head, clf.dropout)},
        "hyperparameters": _hyperparameters(clf),
        "bn_policy": {"train_bn": clf.train_bn, **getattr(clf, "bn_", {})},
        "unfrozen_blocks": getattr(clf, "unfrozen_blocks_", []),
        "best_phase": getattr(clf, "best_phase_", None),
        "trainable": getattr(clf, "trainable_", {}),
        "splits": clf.splits_.counts() if hasattr(clf, "splits_") else {},
        "excluded": getattr(clf, "excluded_", []),
        "runtime": getattr(clf, "runtime_", {}),
        **({"calibration": dict(calibration)} if calibration else {}),
        "versions": rundir.package_versions(),
    }


def run_summary_text(session: Session) -> str:
    """Per-layer tables of backbone and head, and the totals (``summary.txt``)."""
    backbone, size = session.backbone, session.preprocessing.image_size
    text = (backbone.summary(size) if isinstance(backbone, PreparedBackbone)
            else backbone_table(backbone, size))
    return run_summary(text, session.head, backbone.feature_dim, session.counts())


def save_run(clf: ParamsMixin, run_dir: str | Path) -> Path:
    """Write the model (atomically), then its sealed config, metrics, history, predictions and
    skipped files; files of an earlier save that this run does not write are removed. Over a
    saved run, the new files are written beside it and swapped in once all are written
    (:func:`graftwork.rundir.commit`): a reader sees the old run or the new one."""
    out = Path(run_dir)
    out.mkdir(parents=True, exist_ok=True)
    if not (out / rundir.MODEL_FILE).exists() and not (out / rundir.CONFIG_FILE).exists():
        _write_run(clf, out)
    else:
        staging = out / f"{rundir.STAGING_DIR}-save-{os.getpid()}-{secrets.token_hex(4)}"
        staging.mkdir()
        try:
            _write_run(clf, staging)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        rundir.commit(out, staging, remove=(rundir.PREDICTIONS_FILE, rundir.SKIPPED_FILE))
    log.info("saved run to %s", out)
    return out


def _write_run(clf: ParamsMixin, out: Path) -> None:
    session: Session = clf.session_
    state = {k: v.contiguous() for k, v in session.state_dict().items()}
    with rundir.atomic_file(out / rundir.MODEL_FILE) as tmp:
        save_file(state, tmp, metadata={"format": "graftwork"})
    rundir.write_config(out, run_config(clf))
    save_metrics(out, getattr(clf, "metrics_", {}))
    rundir.write_csv(out / rundir.HISTORY_FILE, rundir.HISTORY_COLUMNS,
                     getattr(clf, "history_", []))
    optional = {rundir.PREDICTIONS_FILE: (rundir.PREDICTION_COLUMNS,
                                          getattr(clf, "test_predictions_", None)),
                rundir.SKIPPED_FILE: (rundir.SKIPPED_COLUMNS,
                                      [{"path": p, "reason": r}
                                       for p, r in sorted(session.skipped.items())])}
    for name, (columns, rows) in optional.items():
        if rows:
            rundir.write_csv(out / name, columns, rows)
        else:
            (out / name).unlink(missing_ok=True)  # never leave an older run's file beside
    try:
        rundir.atomic_write_text(out / rundir.SUMMARY_FILE, clf.summary() + "\n")
    except Exception as exc:  # a summary problem must not lose a trained model
        log.warning("summary not written: %s", exc)


def save_metrics(run_dir: str | Path, metrics: dict[str, Any]) -> None:
    """Write ``metrics.json`` (not part of the integrity seal: doctor and reports add to it)."""
    rundir.write_json(Path(run_dir) / rundir.METRICS_FILE, metrics)


def _session_for(clf: ParamsMixin, model: GraftModel, pre: Preprocessing) -> Session:
    options = RunOptions(cache_dir=clf.cache_dir, num_workers=clf.num_workers)
    session = Session(model.backbone, model.head, pre, train_bn=model.train_bn, options=options)
    session.pristine = False  # a saved model always runs whole
    return session


def wrap_model(cls: type[C], model: GraftModel, classes: Sequence[str],
               preprocessing: Preprocessing | dict[str, Any] | None = None) -> C:
    """A fitted classifier around a model trained elsewhere (its head made by ``build_head``);
    ``preprocessing`` (or its dict form, checked) defaults to the backbone's."""
    spec = model.backbone.spec
    clf = cls(backbone=spec.name, progress=False)
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
    clf.classes_ = list(classes)
    clf.preprocessing_ = (Preprocessing.from_dict(preprocessing) if preprocessing
                          else spec.preprocessing())
    clf.pretrained_weights_ = model.backbone.weights
    clf.bn_ = {}
    clf.trainable_ = {"given": parameter_counts(model)}
    clf.session_ = _session_for(clf, model, clf.preprocessing_)
    return clf


def _calibration(cfg: dict[str, Any], run: Path) -> dict[str, Any] | None:
    """config.json's ``calibration`` ({"temperature": T > 0}) or None."""
    import math

    section = cfg.get("calibration")
    if section is None:
        return None
    t = section.get("temperature") if isinstance(section, dict) else None
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t <= 0:
        raise rundir.RunConfigError(f"{str(run / rundir.CONFIG_FILE)!r}: calibration.temperature "
                                    f"must be a positive number (got {t!r})",
                                    "restore the run, or retrain it")
    return {"temperature": float(t)}


def load_run(cls: type[C], run_dir: str | Path) -> C:
    """Rebuild a saved classifier from ``run_dir``: config validated (format, fields, known
    parameters) and checked against its seal; no pickled code is executed."""
    run = Path(run_dir)
    cfg, model_bytes = rundir.load_sealed(run, known_params=cls._param_names())
    params = {k: v for k, v in cfg["hyperparameters"].items() if k != "phases"}
    aug = params.pop("augment", None)
    try:
        clf = cls(**params, augment=AugmentConfig(**aug) if aug else None, progress=False)
        backbone = create_backbone(cfg["backbone"]["name"], pretrained=False)
    except TypeError as exc:
        raise rundir.RunConfigError(f"{str(run / rundir.CONFIG_FILE)!r}: {exc}",
                                    "restore the run, or retrain it") from exc
    head_cfg = cfg["head"]
    try:
        head = build_head(head_cfg["kind"], backbone.feature_dim, len(cfg["classes"]),
                          head_cfg["hidden"], head_cfg["dropout"])
    except ValueError as exc:
        raise rundir.RunConfigError(f"{str(run / rundir.CONFIG_FILE)!r}: head: {exc}",
                                    "restore the run, or retrain it") from exc
    model = GraftModel(backbone, head, cfg["bn_policy"]["train_bn"])
    try:
        model.load_state_dict(load_bytes(model_bytes))  # the bytes the seal was checked on
    except (SafetensorError, RuntimeError, OSError, ValueError) as exc:
        raise ModelFileError(f"{str(run / rundir.MODEL_FILE)!r} is corrupt or does not match "
                             f"config.json: {str(exc).splitlines()[0][:200]}",
                             "re-train, or restore the run directory") from exc
    model.eval()
    clf.classes_ = list(cfg["classes"])
    clf.head_ = dict(cfg["head"])
    try:
        clf.preprocessing_ = Preprocessing.from_dict(cfg["preprocessing"])
    except ConfigError as exc:
        raise rundir.RunConfigError(f"{str(run / rundir.CONFIG_FILE)!r}: {exc.message}",
                                    "restore the run, or retrain it") from exc
    clf.pretrained_weights_ = WeightsInfo.from_dict(cfg["weights"])
    clf.bn_ = {k: v for k, v in cfg["bn_policy"].items() if k != "train_bn"}
    clf.trainable_ = cfg.get("trainable", {})
    splits = cfg.get("splits")
    clf.split_counts_ = ({k: v for k, v in splits.items() if isinstance(v, int)}
                         if isinstance(splits, dict) else {})
    excluded = cfg.get("excluded", [])
    if not isinstance(excluded, list) or not all(isinstance(p, str) for p in excluded):
        raise rundir.RunConfigError(f"{str(run / rundir.CONFIG_FILE)!r}: \"excluded\" is not a "
                                    "list of paths", "restore the run, or retrain it")
    clf.excluded_ = list(excluded)
    clf.session_ = _session_for(clf, model, clf.preprocessing_)
    clf.calibration_ = _calibration(cfg, run)
    clf.session_.temperature = clf.calibration_["temperature"] if clf.calibration_ else 1.0
    if (run / rundir.METRICS_FILE).is_file():
        clf.metrics_ = rundir.read_metrics(run)
    return clf
