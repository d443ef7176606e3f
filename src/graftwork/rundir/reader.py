"""Reading a run directory as one :class:`Run` record (:func:`read_run`): ``config.json``,
``metrics.json``, ``history.csv``, ``predictions_test.csv`` and ``summary.txt``, through the
readers and file names of :mod:`graftwork.rundir.files` (the one place both are defined).

The classifier saved in a run is rebuilt elsewhere (``ImageClassifier.load``); this module only
reads the files, for reports and listings, and never imports torch.
"""
from __future__ import annotations

import csv
import json
import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from graftwork.errors import RunDirError
from graftwork.rundir.files import (CONFIG_FILE, HISTORY_FILE, PREDICTIONS_FILE, SUMMARY_FILE,
                                    read_csv, read_json, read_metrics)

__all__ = ["Run", "read_run", "read_config", "read_metrics", "read_history", "read_predictions",
           "section_of", "backbone_name", "to_float", "to_int"]

log = logging.getLogger(__name__)

#: What reading a run's file can raise: I/O, bad encoding, bad JSON, bad CSV.
_UNREADABLE = (OSError, UnicodeDecodeError, json.JSONDecodeError, csv.Error)
_NOT_A_RUN_HINT = "pass the folder that `graft train` wrote (see `graft runs`)"
_DAMAGED_HINT = "the run is damaged; train it again"

_T = TypeVar("_T")


def to_float(value: Any) -> float:
    """``float(value)``, or NaN for None, empty strings and anything unparsable."""
    if value is None or value == "":
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def to_int(value: Any) -> int | None:
    """``int(value)``, or None when it is missing or not a finite number."""
    number = to_float(value)
    return int(number) if math.isfinite(number) else None


@dataclass
class Run:
    """Everything a run directory holds; optional files are empty when absent."""

    path: Path
    config: dict[str, Any]
    metrics: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    predictions: list[dict[str, Any]] = field(default_factory=list)
    summary: str = ""

    @property
    def name(self) -> str:
        """The run directory's name."""
        return self.path.name

    @property
    def classes(self) -> list[str]:
        """Class names in training order (``config["classes"]``)."""
        classes = self.config.get("classes")
        return [str(c) for c in classes] if isinstance(classes, list) else []


def _read_text(path: Path) -> str:
    return path.read_text(encoding="utf-8", errors="replace")


def _read_optional(path: Path, read: Callable[[Path], _T], empty: _T) -> _T:
    """``read(path)`` for an optional file: ``empty`` when it is missing, and ``empty`` with a
    warning when it cannot be read."""
    if not path.is_file():
        return empty
    try:
        return read(path)
    except _UNREADABLE as exc:
        log.warning("ignoring unreadable %s: %s", path, exc)
        return empty


def read_config(run_dir: str | Path) -> dict[str, Any]:
    """Read ``config.json``; raise :class:`RunDirError` when the folder is not a run."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunDirError(f"run directory {run_dir} does not exist", _NOT_A_RUN_HINT)
    path = run_dir / CONFIG_FILE
    if not path.is_file():
        raise RunDirError(f"{run_dir} is not a run directory: it has no {CONFIG_FILE}",
                          _NOT_A_RUN_HINT)
    try:
        config = read_json(path)
    except _UNREADABLE as exc:
        raise RunDirError(f"cannot read {path}: {exc}", _DAMAGED_HINT) from exc
    if not isinstance(config, dict):
        raise RunDirError(f"{path} does not hold a JSON object", _DAMAGED_HINT)
    return config


def read_history(run_dir: str | Path) -> list[dict[str, Any]]:
    """Read ``history.csv`` as one dict per epoch; numbers are floats (NaN when empty).

    Keys: ``phase`` (str), ``epoch`` (int or None), ``loss``, ``accuracy``, ``val_loss``,
    ``val_accuracy``, ``lr``. ``[]`` when the file is missing.
    """
    rows = []
    for raw in _read_optional(Path(run_dir) / HISTORY_FILE, read_csv, []):
        row: dict[str, Any] = {"phase": (raw.get("phase") or "").strip(),
                               "epoch": to_int(raw.get("epoch"))}
        for key in ("loss", "accuracy", "val_loss", "val_accuracy", "lr"):
            row[key] = to_float(raw.get(key))
        rows.append(row)
    return rows


def read_predictions(run_dir: str | Path) -> list[dict[str, Any]]:
    """Read ``predictions_test.csv``: ``path``, ``label``, ``pred`` (str), ``prob``,
    ``prob_true``, ``loss`` (float, NaN when unparsable). ``[]`` when the file is missing."""
    rows = []
    for raw in _read_optional(Path(run_dir) / PREDICTIONS_FILE, read_csv, []):
        row: dict[str, Any] = {key: raw.get(key) or "" for key in ("path", "label", "pred")}
        for key in ("prob", "prob_true", "loss"):
            row[key] = to_float(raw.get(key))
        rows.append(row)
    return rows


def read_run(run_dir: str | Path) -> Run:
    """Read every file of a run directory (config required, the rest optional); raise
    :class:`RunDirError` when the folder is not a run."""
    run_dir = Path(run_dir)
    config = read_config(run_dir)
    if "classes" not in config:
        log.warning("%s has no 'classes'; class names are taken from the predictions",
                    run_dir / CONFIG_FILE)
    return Run(path=run_dir, config=config, metrics=read_metrics(run_dir, missing_ok=True),
               history=read_history(run_dir), predictions=read_predictions(run_dir),
               summary=_read_optional(run_dir / SUMMARY_FILE, _read_text, ""))


# --------------------------------------------------------------------------- config fields

def section_of(mapping: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    """``mapping[key]`` when it is a dict, else ``{}`` (optional JSON sections)."""
    value = mapping.get(key)
    return value if isinstance(value, Mapping) else {}


def backbone_name(config: Mapping[str, Any]) -> str | None:
    """The backbone's name, whether ``config["backbone"]`` is a name or a dict with one."""
    backbone = config.get("backbone")
    if isinstance(backbone, Mapping):
        return str(backbone["name"]) if backbone.get("name") else None
    return str(backbone) if backbone else None
