"""The files of a run directory: their names and columns, and safe writers and readers (atomic
writes, JSON without NaN, formula-safe CSV). Torch-free: the report, ``graft runs`` and the CLI's
checks use it without importing torch.

Saving a run: write ``MODEL_FILE`` first, then ``config.write_config`` (its integrity section
holds the model file's SHA-256, so the model must exist), then the other files.
"""
from __future__ import annotations

import csv
import functools
import importlib.metadata
import json
import logging
import math
import os
import platform
import re
import secrets
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

__all__ = [
    "MODEL_FILE", "CONFIG_FILE", "METRICS_FILE", "HISTORY_FILE", "PREDICTIONS_FILE",
    "SKIPPED_FILE", "SUMMARY_FILE", "REPORT_FILE", "PLOTS_DIR", "CHECKPOINTS_DIR", "LOCK_FILE",
    "STAGING_DIR", "STAGED_MARK", "RUN_FILES", "HISTORY_COLUMNS", "PREDICTION_COLUMNS", "SKIPPED_COLUMNS", "FORMAT_VERSION",
    "atomic_file", "atomic_write_text", "write_json", "read_json", "write_csv", "write_csv_rows",
    "read_csv", "csv_safe", "package_versions", "read_metrics", "file_mode",
    "remove_stale_temps",
]

log = logging.getLogger("graftwork.rundir")

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.json"
HISTORY_FILE = "history.csv"
PREDICTIONS_FILE = "predictions_test.csv"
SKIPPED_FILE = "skipped.csv"
SUMMARY_FILE = "summary.txt"
REPORT_FILE = "report.html"
PLOTS_DIR = "plots"
CHECKPOINTS_DIR = "checkpoints"
LOCK_FILE = ".graft.lock"
#: Where ``--overwrite`` (and a save over a saved run) builds the new run, beside the old one,
#: before swapping it in; it holds ``STAGED_MARK`` once complete (then the swap may begin).
STAGING_DIR = ".graft-new"
STAGED_MARK = ".complete"
#: Everything graftwork writes into a run (the lock aside): ``--overwrite`` removes these only.
RUN_FILES = (MODEL_FILE, CONFIG_FILE, METRICS_FILE, HISTORY_FILE, PREDICTIONS_FILE, SKIPPED_FILE,
             SUMMARY_FILE, REPORT_FILE, PLOTS_DIR, CHECKPOINTS_DIR)

HISTORY_COLUMNS = ("phase", "epoch", "loss", "accuracy", "val_loss", "val_accuracy", "lr")
PREDICTION_COLUMNS = ("path", "label", "pred", "prob", "prob_true", "loss")
SKIPPED_COLUMNS = ("path", "reason")

#: 1: the first format; 2: adds the ``integrity`` section. Older formats still load.
FORMAT_VERSION = 2


# ---------------------------------------------------------------------- writing and reading
def _clean(value: Any) -> Any:
    """JSON-safe: NaN/inf become None, tuples lists, keys strings."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


@functools.cache
def _umask() -> int:
    """The process's umask (read once: setting it to read it is not thread-safe)."""
    try:  # Linux says it without changing it
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode of every file graftwork writes: ``0o666`` less the umask, as ``open`` gives
    (so a colleague or a service account reads a run where the umask lets them)."""
    return 0o666 & ~_umask()


#: ``.NAME.PID.HEX.tmp``: the temporary file of :func:`atomic_file`.
_TEMP = re.compile(r"^\..+\.(\d+)\.[0-9a-f]+\.tmp$")


@contextmanager
def atomic_file(path: Path) -> Iterator[str]:
    """A temporary path of its own beside ``path``, renamed onto ``path`` when the block ends
    without error and removed otherwise: readers never see a partial file and concurrent
    writers never share a temporary file. The file gets :func:`file_mode` whatever wrote it
    (safetensors writes ``0600``)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        yield str(tmp)
        if os.name == "posix":
            os.chmod(tmp, file_mode())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def remove_stale_temps(folder: Path) -> list[str]:
    """Remove the temporary files of :func:`atomic_file` that a killed process left in
    ``folder`` (call it while no live process writes there, e.g. holding the run's lock);
    other files are never touched. Returns the names removed."""
    removed = []
    try:
        names = [p for p in Path(folder).iterdir() if _TEMP.match(p.name) and p.is_file()]
    except OSError:
        return removed
    for leftover in names:
        try:
            leftover.unlink()
            removed.append(leftover.name)
        except OSError as exc:
            log.warning("could not remove the stale temporary file %s: %s", leftover, exc)
    return removed


def atomic_write_text(path: Path, text: str) -> None:
    with atomic_file(path) as tmp, open(tmp, "x", encoding="utf-8") as fh:
        fh.write(text)


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` atomically as indented JSON; NaN and infinities become ``null``."""
    atomic_write_text(path, json.dumps(_clean(data), indent=2, sort_keys=False) + "\n")


def read_json(path: Path) -> Any:
    """The JSON document in ``path`` (UTF-8, with or without the byte-order mark that Notepad
    writes)."""
    return json.loads(Path(path).read_text(encoding="utf-8-sig"))


#: A number as a spreadsheet reads one: ``+1``, ``-1.5``, ``2e-3``.
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
#: What may follow a leading ``+``/``-`` in a cell that stays as it is: a word, not a formula.
_WORD = re.compile(r"[+-][\w .-]*")


def csv_safe(value: Any) -> Any:
    """A cell a spreadsheet will not run as a formula (OWASP's CSV injection guard), changed as
    little as possible. A text cell gets a leading ``'`` when it starts with ``=``, ``@``, a tab
    or a carriage return, or when it starts with ``+`` or ``-`` and is neither a number (``-1.5``,
    ``+1``) nor a plain word (letters, digits, ``_``, ``.``, ``-`` and spaces: ``-x``,
    ``+cmd.png``), i.e. when it holds an operator, parenthesis, quote, ``|``, ``!`` or any other
    character a formula needs (``-2+3+cmd|'/C calc'!A0``, ``+SUM(A1)``). Numbers stay numbers."""
    if not isinstance(value, str) or not value:
        return value
    first = value[0]
    if first in ("=", "@", "\t", "\r"):
        return "'" + value
    if first in ("+", "-") and not _NUMBER.fullmatch(value) and not _WORD.fullmatch(value):
        return "'" + value
    return value


def write_csv_rows(fh: TextIO, columns: Sequence[str],
                   rows: Iterable[Mapping[str, Any]]) -> None:
    """Write a header and ``rows`` to the open text stream ``fh`` (a file opened with
    ``newline=""``, or ``sys.stdout``): missing and None cells empty, text cells ``csv_safe``."""
    writer = csv.writer(fh)
    writer.writerow([csv_safe(c) for c in columns])
    for row in rows:
        writer.writerow(["" if row.get(c) is None else csv_safe(row.get(c)) for c in columns])


def write_csv(path: Path, columns: Sequence[str], rows: Iterable[Mapping[str, Any]]) -> None:
    """Write ``rows`` atomically as :func:`write_csv_rows` does."""
    with atomic_file(path) as tmp, open(tmp, "x", newline="", encoding="utf-8") as fh:
        write_csv_rows(fh, columns, rows)


def read_csv(path: Path) -> list[dict[str, str]]:
    """The rows of a CSV file with a header, one dict per row (cells as text)."""
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in ("graftwork", "torch", "torchvision", "timm", "safetensors", "numpy", "pillow"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


#: The sections of ``metrics.json`` that readers use, and the JSON type each must have.
_METRIC_TYPES: dict[str, tuple[type, ...]] = {
    "val": (dict,), "test": (dict,), "bn": (dict,), "doctor": (dict,), "features": (dict,),
    "calibration": (dict,), "skipped_phases": (dict,), "phases": (list,),
    "wall_time_s": (int, float), "skipped": (int,),
}


def read_metrics(run_dir: str | Path, *, missing_ok: bool = False) -> dict[str, Any]:
    """``metrics.json`` of a run; never raises. ``{}`` with a warning when it is unreadable or
    not a JSON object, and when it is missing (silently with ``missing_ok``: an optional file,
    as reports and listings read it). A known section of the wrong JSON type (hand-edited,
    damaged) is left out with a warning, so no reader trips on it."""
    path = Path(run_dir) / METRICS_FILE
    if missing_ok and not path.is_file():
        return {}
    try:
        data = read_json(path)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        log.warning("no metrics for %s: %s", run_dir, exc)
        return {}
    if not isinstance(data, dict):
        log.warning("no metrics for %s: %s does not hold a JSON object", run_dir, path)
        return {}
    for key, types in _METRIC_TYPES.items():
        value = data.get(key)
        if key in data and (not isinstance(value, types) or isinstance(value, bool)):
            log.warning("ignoring %s of %s: not a JSON %s", key, path,
                        "object" if types == (dict,) else "list" if types == (list,) else
                        "number")
            del data[key]
    if isinstance(data.get("phases"), list):
        data["phases"] = [p for p in data["phases"] if isinstance(p, dict)]
    return data
