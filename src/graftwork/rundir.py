"""The one definition of a run directory: its file names and columns, safe writers and readers,
config validation and integrity seals. The writer's lock and the ``--out`` policy
(``RunLock``, ``prepare_out``) live in :mod:`graftwork._outdir` and are importable from here.

Torch-free (standard library and ``graftwork.errors`` only): the report, ``graft runs`` and the
CLI's checks use it without importing torch.

Saving a run: write ``MODEL_FILE`` first, then ``write_config`` (its integrity section holds the
model file's SHA-256, so the model must exist), then the other files.
"""
from __future__ import annotations

import csv
import hashlib
import importlib.metadata
import json
import logging
import math
import os
import platform
import secrets
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from graftwork.errors import ConfigError, ModelFileError, RunDirError
from graftwork.params import PARAMS, check_params

__all__ = [
    "MODEL_FILE", "CONFIG_FILE", "METRICS_FILE", "HISTORY_FILE", "PREDICTIONS_FILE",
    "SKIPPED_FILE", "SUMMARY_FILE", "REPORT_FILE", "PLOTS_DIR", "CHECKPOINTS_DIR", "LOCK_FILE",
    "RUN_FILES", "HISTORY_COLUMNS", "PREDICTION_COLUMNS", "SKIPPED_COLUMNS", "FORMAT_VERSION",
    "RunConfigError", "RunModifiedError", "RunBusyError", "RunExistsError",
    "atomic_file", "atomic_write_text", "write_json", "read_json", "write_csv", "read_csv",
    "csv_safe", "package_versions", "validate_config", "load_config", "config_digest",
    "file_sha256", "seal", "check_integrity", "write_config", "read_metrics", "RunLock", "prepare_out",
]

log = logging.getLogger(__name__)

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
#: Everything graftwork writes into a run (the lock aside): ``--overwrite`` removes these only.
RUN_FILES = (MODEL_FILE, CONFIG_FILE, METRICS_FILE, HISTORY_FILE, PREDICTIONS_FILE, SKIPPED_FILE,
             SUMMARY_FILE, REPORT_FILE, PLOTS_DIR, CHECKPOINTS_DIR)

HISTORY_COLUMNS = ("phase", "epoch", "loss", "accuracy", "val_loss", "val_accuracy", "lr")
PREDICTION_COLUMNS = ("path", "label", "pred", "prob", "prob_true", "loss")
SKIPPED_COLUMNS = ("path", "reason")

#: 1: the first format; 2: adds the ``integrity`` section. Older formats still load.
FORMAT_VERSION = 2
_RESTORE = "restore the run directory, or re-train (graft train ... --overwrite)"


class RunConfigError(ModelFileError, RunDirError):
    """A run's config.json is missing a field, or holds a value graftwork cannot use."""


class RunModifiedError(ModelFileError, RunDirError):
    """A run's files no longer match the integrity seal written when it was saved."""


class RunBusyError(RunDirError):
    """Another live process is writing the run directory."""


class RunExistsError(RunDirError):
    """``--out`` already holds a finished run and no flag says what to do with it."""


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


@contextmanager
def atomic_file(path: Path) -> Iterator[str]:
    """A temporary path of its own beside ``path``, renamed onto ``path`` when the block ends
    without error and removed otherwise: readers never see a partial file and concurrent
    writers never share a temporary file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        yield str(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: Path, text: str) -> None:
    with atomic_file(path) as tmp, open(tmp, "x", encoding="utf-8") as fh:
        fh.write(text)


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` atomically as indented JSON; NaN and infinities become ``null``."""
    atomic_write_text(path, json.dumps(_clean(data), indent=2, sort_keys=False) + "\n")


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def csv_safe(value: Any) -> Any:
    """A cell a spreadsheet will not run as a formula (OWASP): a string starting with
    ``= + - @``, tab or carriage return gets a leading ``'``. Numbers stay numbers."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def write_csv(path: Path, columns: Sequence[str], rows: Iterable[dict[str, Any]]) -> None:
    """Write ``rows`` atomically (missing and None cells empty, text cells ``csv_safe``)."""
    with atomic_file(path) as tmp, open(tmp, "x", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow([csv_safe(c) for c in columns])
        for row in rows:
            writer.writerow(["" if row.get(c) is None else csv_safe(row.get(c)) for c in columns])


def read_csv(path: Path) -> list[dict[str, str]]:
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


def read_metrics(run_dir: str | Path) -> dict[str, Any]:
    """``metrics.json`` of a run; ``{}`` with a warning when it is missing or unreadable."""
    path = Path(run_dir) / METRICS_FILE
    try:
        data = read_json(path)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        log.warning("no metrics for %s: %s", run_dir, exc)
        return {}
    if not isinstance(data, dict):
        log.warning("no metrics for %s: %s does not hold a JSON object", run_dir, path)
        return {}
    return data


# ---------------------------------------------------------------------- config validation
def _is_num(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _str(value: Any) -> bool:
    return isinstance(value, str)


#: (section, key, test, what it must be) for every field that loading a run reads.
_FIELDS: tuple[tuple[str, str, Callable[[Any], bool], str], ...] = (
    ("backbone", "name", lambda v: _str(v) and v != "", "a backbone name"),
    ("preprocessing", "image_size", lambda v: v is not None and PARAMS["image_size"].fits(v),
     PARAMS["image_size"].describe()),
    ("preprocessing", "mean", lambda v: isinstance(v, list) and len(v) == 3
     and all(map(_is_num, v)), "a list of 3 finite numbers"),
    ("preprocessing", "std", lambda v: isinstance(v, list) and len(v) == 3
     and all(_is_num(x) and x > 0 for x in v), "a list of 3 finite numbers above 0"),
    ("preprocessing", "crop_pct", lambda v: _is_num(v) and 0 < v <= 1,
     "a number above 0 and at most 1"),
    ("preprocessing", "interpolation", _str, "a string"),
    ("head", "kind", lambda v: _str(v) and v != "", "a head kind such as 'mlp'"),
    ("head", "hidden", lambda v: _is_int(v) and v >= 1, "an integer of at least 1"),
    ("head", "dropout", lambda v: _is_num(v) and 0 <= v < 1, "a number at least 0 and below 1"),
    ("hyperparameters", "augment", lambda v: v is None or isinstance(v, dict),
     "a JSON object or null"),
    ("bn_policy", "train_bn", lambda v: isinstance(v, bool), "true or false"),
    ("weights", "source", _str, "a string"),
    ("weights", "location", _str, "a string"),
    ("weights", "digest", _str, "a string"),
)
_OPTIONAL = {("hyperparameters", "augment")}


def validate_config(cfg: Any, path: str | Path,
                    known_params: Collection[str] | None = None) -> dict[str, Any]:
    """Check that ``cfg`` (config.json at ``path``, parsed) holds what loading a run needs:
    one ``RunConfigError`` naming the file and the field instead of a KeyError or TypeError.
    ``known_params``: the classifier's parameter names (any other hyperparameter is an error)."""
    where = repr(str(path))

    def bad(field: str, want: str, got: Any = ...) -> RunConfigError:
        shown = "" if got is ... else f" (got {json.dumps(got, default=str)[:60]})"
        return RunConfigError(f"{where}: {field} must be {want}{shown}", _RESTORE)

    if not isinstance(cfg, dict):
        raise bad("the file", "a JSON object", type(cfg).__name__)
    fmt = cfg.get("graftwork_format", 1)
    if _is_int(fmt) and fmt > FORMAT_VERSION:
        raise RunConfigError(f"{where} was written by a newer graftwork (format {fmt}; this one "
                             f"reads formats up to {FORMAT_VERSION})", "upgrade graftwork")
    if not _is_int(fmt) or fmt < 1:
        raise bad("graftwork_format", f"an integer from 1 to {FORMAT_VERSION}", fmt)
    classes = cfg.get("classes")
    if (not isinstance(classes, list) or len(classes) < 2 or not all(_str(c) and c for c in classes)
            or len(set(classes)) < len(classes)):
        raise bad("classes", "a list of at least 2 distinct non-empty names", classes)
    for sec, key, test, want in _FIELDS:
        data = cfg.get(sec)
        if not isinstance(data, dict):
            raise bad(sec, "a JSON object", data) if sec in cfg else bad(sec, "present")
        if key not in data and (sec, key) not in _OPTIONAL:
            raise bad(f"{sec}.{key}", f"present ({want})")
        if not test(data.get(key)):
            raise bad(f"{sec}.{key}", want, data[key])
    hyper = cfg["hyperparameters"]
    known = set(hyper if known_params is None else known_params)
    unknown = sorted(set(hyper) - {"phases", "augment"} - known)
    if unknown:
        raise RunConfigError(f"{where}: hyperparameters.{unknown[0]} is not a parameter this "
                             "graftwork knows", "upgrade graftwork, or " + _RESTORE)
    try:
        check_params(hyper)
    except ConfigError as exc:
        raise RunConfigError(f"{where}: hyperparameters: {exc.message}", _RESTORE) from exc
    return cfg


def load_config(run_dir: str | Path, known_params: Collection[str] | None = None) -> dict[str, Any]:
    """config.json of a saved run, validated and checked against its integrity seal."""
    run = Path(run_dir)
    if not (run / CONFIG_FILE).is_file() or not (run / MODEL_FILE).is_file():
        raise RunDirError(f"{str(run)!r} is not a run directory with a saved model",
                          "pass a folder written by `graft train --out`")
    try:
        cfg = read_json(run / CONFIG_FILE)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise RunConfigError(f"{str(run / CONFIG_FILE)!r} is corrupt: {exc}", _RESTORE) from exc
    validate_config(cfg, run / CONFIG_FILE, known_params)
    check_integrity(run, cfg)
    return cfg


# ---------------------------------------------------------------------- integrity
def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def config_digest(cfg: dict[str, Any]) -> str:
    """SHA-256 of the canonical JSON of ``cfg`` without its ``integrity`` key."""
    body = {k: v for k, v in _clean(cfg).items() if k != "integrity"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def seal(run_dir: str | Path) -> dict[str, str]:
    """The integrity section for the run's current ``MODEL_FILE`` and ``CONFIG_FILE``."""
    run = Path(run_dir)
    return {MODEL_FILE: file_sha256(run / MODEL_FILE),
            "config": config_digest(read_json(run / CONFIG_FILE))}


def check_integrity(run_dir: str | Path, cfg: dict[str, Any]) -> None:
    """Raise ``RunModifiedError`` when ``cfg`` carries an integrity section that the run's files
    no longer match; runs without one (format 1) pass."""
    sealed = cfg.get("integrity")
    if sealed is None:
        return
    run = Path(run_dir)
    sealed = sealed if isinstance(sealed, dict) else {}
    changed = []
    if sealed.get("config") != config_digest(cfg):
        changed.append(CONFIG_FILE)
    model = run / MODEL_FILE
    if not model.is_file() or sealed.get(MODEL_FILE) != file_sha256(model):
        changed.append(MODEL_FILE)
    if changed == [MODEL_FILE]:
        raise RunModifiedError(f"{str(model)!r} is corrupt or does not match config.json: it "
                               "changed after the run was saved", _RESTORE)
    if changed:
        raise RunModifiedError(f"run {str(run)!r} was modified after it was saved: "
                               f"{' and '.join(changed)} changed", _RESTORE)


def write_config(run_dir: str | Path, cfg: dict[str, Any]) -> dict[str, Any]:
    """Write ``CONFIG_FILE`` stamped with ``FORMAT_VERSION`` and sealed; ``MODEL_FILE`` must
    already be written (its digest goes into the seal). Returns the config as written."""
    run = Path(run_dir)
    model = run / MODEL_FILE
    if not model.is_file():
        raise RunDirError(f"cannot seal {str(run)!r}: {MODEL_FILE} is not written yet",
                          "save the model file before its config")
    out = {k: v for k, v in _clean(cfg).items() if k != "integrity"}
    out["graftwork_format"] = FORMAT_VERSION
    out["integrity"] = {MODEL_FILE: file_sha256(model), "config": config_digest(out)}
    write_json(run / CONFIG_FILE, out)
    return out


def __getattr__(name: str) -> Any:
    """``RunLock`` and ``prepare_out`` live in :mod:`graftwork._outdir`, imported on first use
    (``from graftwork.rundir import RunLock`` keeps working without an import cycle)."""
    if name in ("RunLock", "prepare_out"):
        from graftwork import _outdir

        return getattr(_outdir, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
