"""Listing the runs under a folder and comparing runs side by side, as plain-text tables."""
from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from graftwork.errors import RunDirError
from graftwork.report._format import fmt, fmt_acc, fmt_seconds
from graftwork.rundir.files import CONFIG_FILE
from graftwork.rundir.reader import (Run, backbone_name, read_config, read_history, read_metrics,
                                     section_of)

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- listing

def _find_run_dirs(root: Path, max_depth: int) -> list[Path]:
    """Folders holding ``config.json`` at most ``max_depth`` levels below ``root``; a run's
    own sub-folders are not searched, nor are hidden folders."""
    found, level = [], [root]
    for depth in range(max_depth + 1):
        next_level = []
        for folder in level:
            if (folder / CONFIG_FILE).is_file():
                found.append(folder)
            elif depth < max_depth:
                try:
                    next_level += sorted(p for p in folder.iterdir()
                                         if p.is_dir() and not p.name.startswith("."))
                except OSError as exc:
                    log.warning("cannot list %s: %s", folder, exc)
        level = next_level
    return found


def list_runs(root: str | Path, max_depth: int = 3) -> list[dict[str, Any]]:
    """One dict per run directory under ``root`` (``path``, ``backbone``, ``strategy``,
    ``val_accuracy``, ``test_accuracy``, ``wall_time_s``, ``created``), oldest first.

    Runs whose ``config.json`` cannot be read are skipped with a warning.
    """
    root = Path(root)
    if not root.is_dir():
        raise RunDirError(f"{root} does not exist", "pass the folder that holds your runs")
    runs = []
    for folder in _find_run_dirs(root, max_depth):
        try:
            config = read_config(folder)
        except RunDirError as exc:
            log.warning("skipping %s", exc)
            continue
        metrics = read_metrics(folder, missing_ok=True)
        runs.append({"path": str(folder), "backbone": backbone_name(config),
                     "strategy": config.get("strategy"),
                     "val_accuracy": section_of(metrics, "val").get("accuracy"),
                     "test_accuracy": section_of(metrics, "test").get("accuracy"),
                     "wall_time_s": metrics.get("wall_time_s"),
                     "created": config.get("created")})
    return sorted(runs, key=lambda r: (str(r["created"] or ""), r["path"]))


# --------------------------------------------------------------------------- plain-text tables

def _align(header: Sequence[str], rows: Sequence[Sequence[str]],
           right: Sequence[bool] = ()) -> str:
    """Columns padded to a common width under a dashed rule; ``right`` marks right-aligned ones."""
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(header)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.rjust(w) if i < len(right) and right[i] else c.ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths, strict=True))).rstrip()

    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


def format_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    """Plain-text table of ``rows`` (floats as 0.xxxx, None as '-'); numbers right-aligned."""
    def numeric(value: Any) -> bool:
        return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))

    cells = [[fmt(row.get(c)) for c in columns] for row in rows]
    right = [bool(rows) and all(numeric(r.get(c)) for r in rows) for c in columns]
    return _align(list(columns), cells, right)


# --------------------------------------------------------------------------- comparing

def _first(mapping: Mapping[str, Any], *keys: str) -> Any:
    """The value of the first of ``keys`` that ``mapping`` holds (not None), else None."""
    for key in keys:
        if mapping.get(key) is not None:
            return mapping[key]
    return None


def _image_size(config: Mapping[str, Any]) -> Any:
    size = _first(section_of(config, "preprocessing"), "image_size", "input_size", "size",
                  "crop_size", "resize")
    if isinstance(size, (list, tuple)):
        return "x".join(str(s) for s in size[-2:])
    return size


def _bn_before_after(bn: Mapping[str, Any]) -> tuple[Any, Any]:
    """Accuracy before and after BN recalibration: validation (``graft train``) or training
    images (``graft recalibrate``)."""
    for before_key, after_key in (("val_before", "val_after"), ("train_before", "train_after")):
        before, after = bn.get(before_key), bn.get(after_key)
        if isinstance(before, Mapping) and isinstance(after, Mapping):
            return before.get("accuracy"), after.get("accuracy")
    return None, None


def _recalibrated(run: Run) -> str:
    bn = section_of(run.metrics, "bn")
    if not bn or not bn.get("recalibrated"):
        return "no"
    before, after = _bn_before_after(bn)
    if before is None and after is None:
        return "yes"
    return f"yes ({fmt_acc(before)} -> {fmt_acc(after)})"


def _per_phase(run: Run, key: str) -> str:
    trainable = section_of(run.config, "trainable")
    counts = {str(p): section_of(trainable, p).get(key) for p in trainable}
    counts = {p: v for p, v in counts.items() if v is not None}
    if len(counts) <= 1:
        return fmt(next(iter(counts.values()), None))
    return ", ".join(f"{p}={fmt(v)}" for p, v in counts.items())


COMPARE_FIELDS: list[tuple[str, Callable[[Run], Any]]] = [
    ("backbone", lambda r: backbone_name(r.config)),
    ("strategy", lambda r: r.config.get("strategy")),
    ("weights source", lambda r: section_of(r.config, "weights").get("source")),
    ("weights digest", lambda r: str(section_of(r.config, "weights").get("digest") or "")[:12]
     or None),
    ("image size", lambda r: _image_size(r.config)),
    ("classes", lambda r: len(r.classes) or None),
    ("epochs", lambda r: section_of(r.config, "hyperparameters").get("epochs")),
    ("epochs run", lambda r: len(r.history) or None),
    ("learning rate",
     lambda r: _first(section_of(r.config, "hyperparameters"), "lr", "learning_rate")),
    ("batch size", lambda r: section_of(r.config, "hyperparameters").get("batch_size")),
    ("val accuracy", lambda r: section_of(r.metrics, "val").get("accuracy")),
    ("val loss", lambda r: section_of(r.metrics, "val").get("loss")),
    ("test accuracy", lambda r: section_of(r.metrics, "test").get("accuracy")),
    ("test loss", lambda r: section_of(r.metrics, "test").get("loss")),
    ("wall time", lambda r: fmt_seconds(r.metrics.get("wall_time_s"))),
    ("trainable params", lambda r: _per_phase(r, "trainable_params")),
    ("frozen params", lambda r: _per_phase(r, "frozen_params")),
    ("recalibrated", _recalibrated),
    ("BN doctor", lambda r: section_of(r.metrics, "doctor").get("verdict")),
    ("created", lambda r: r.config.get("created")),
]


def _run_labels(paths: Sequence[Path]) -> list[str]:
    """Folder names, or full paths where two runs share a name."""
    names = [p.name or str(p) for p in paths]
    return [str(p) if names.count(n) > 1 else n for p, n in zip(paths, names, strict=True)]


def compare_runs(paths: Sequence[str | Path]) -> tuple[list[str], list[list[str]]]:
    """Side-by-side comparison: ``(header, rows)`` where the header is ``["field", run...]``
    and each row is a field followed by its formatted value in every run.

    Raises :class:`RunDirError` for a path that is not a run directory.
    """
    runs = [Run(path=Path(p), config=read_config(p),
                metrics=read_metrics(p, missing_ok=True),
                history=read_history(p)) for p in paths]
    header = ["field", *_run_labels([r.path for r in runs])]
    rows = [[label, *(fmt(getter(run)) for run in runs)] for label, getter in COMPARE_FIELDS]
    return header, rows


def format_compare(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Plain-text rendering of :func:`compare_runs`'s table."""
    return _align(header, rows)
