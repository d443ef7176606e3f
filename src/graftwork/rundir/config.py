"""A run's ``config.json``: validation of every field loading reads (the hyperparameters against
the one options table, :data:`graftwork.params.PARAMS`), and integrity seals."""
from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

from graftwork.errors import (ConfigError, RunBusyError, RunConfigError, RunDirError,
                              RunModifiedError)
from graftwork.params import PARAMS, check_choices, check_params
from graftwork.rundir.files import (CONFIG_FILE, FORMAT_VERSION, MODEL_FILE, _clean, read_json,
                                    write_json)
from graftwork.rundir.staging import live_writer, swapping

__all__ = ["validate_config", "load_config", "load_sealed", "config_digest", "file_sha256",
           "seal", "check_integrity", "write_config"]

_RESTORE = "restore the run directory, or re-train (graft train ... --overwrite)"




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
#: Fields that are choices of the options table, read from their registries (``choices=True``).
_CHOICE_FIELDS: tuple[tuple[str, str, Callable[[Any], bool], Callable[[], str]], ...] = (
    ("head", "kind", lambda v: PARAMS["head"].fits(v), lambda: PARAMS["head"].describe()),
)


def validate_config(cfg: Any, path: str | Path, known_params: Collection[str] | None = None, *,
                    choices: bool = False) -> dict[str, Any]:
    """Check that ``cfg`` (config.json at ``path``, parsed) holds what loading a run needs:
    one ``RunConfigError`` naming the file and the field instead of a KeyError or TypeError.
    ``known_params``: the classifier's parameter names (any other hyperparameter is an error).
    ``choices``: also check the head kind and the hyperparameters that are choices (head,
    optimizer, ...) against their registries, which imports the modules that hold them
    (torch): what loading a model does; a torch-free reader leaves it off."""
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
    fields = [*_FIELDS, *((s, k, t, w()) for s, k, t, w in _CHOICE_FIELDS if choices)]
    for sec, key, test, want in fields:
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
        if choices:
            check_choices(hyper)
    except ConfigError as exc:
        raise RunConfigError(f"{where}: hyperparameters: {exc.message}", _RESTORE) from exc
    return cfg


def load_config(run_dir: str | Path, known_params: Collection[str] | None = None) -> dict[str, Any]:
    """config.json of a saved run, validated and checked against its integrity seal."""
    return load_sealed(run_dir, known_params, model=False)[0]


def load_sealed(run_dir: str | Path, known_params: Collection[str] | None = None, *,
                model: bool = True, wait_s: float = 10.0) -> tuple[dict[str, Any], bytes]:
    """config.json of a saved run, validated, and (``model``) the bytes of its model file, both
    checked against the seal: the model loaded is the one the config describes, even if the
    run is replaced meanwhile. While a new run is swapped in (``graft train --overwrite``), waits
    up to ``wait_s`` for the swap to end; then names the writing process (``RunBusyError``)."""
    run = Path(run_dir)
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return _read_sealed(run, known_params, model)
        except RunDirError as exc:
            if not swapping(run):
                raise
            writer = live_writer(run)
            if writer is None or time.monotonic() > deadline:
                if writer is None:
                    raise RunModifiedError(
                        f"{str(run)!r} was left half-replaced by an interrupted `graft train "
                        f"--overwrite`", "run `graft train` with this --out once more (it "
                        "finishes the replacement first), or restore the run directory") from exc
                raise RunBusyError(f"{str(run)!r} is being replaced by {writer}",
                                   "wait a moment and try again") from exc
            time.sleep(0.05)


def _read_sealed(run: Path, known_params: Collection[str] | None,
                 model: bool) -> tuple[dict[str, Any], bytes]:
    if not (run / CONFIG_FILE).is_file() or not (run / MODEL_FILE).is_file():
        raise RunDirError(f"{str(run)!r} is not a run directory with a saved model",
                          "pass a folder written by `graft train --out`")
    try:
        cfg = read_json(run / CONFIG_FILE)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise RunConfigError(f"{str(run / CONFIG_FILE)!r} is corrupt: {exc}", _RESTORE) from exc
    validate_config(cfg, run / CONFIG_FILE, known_params, choices=True)
    data = b""
    if model:
        try:
            data = (run / MODEL_FILE).read_bytes()
        except OSError as exc:
            raise RunDirError(f"cannot read {str(run / MODEL_FILE)!r}: {exc.strerror or exc}",
                              "check the file's permissions, or restore the run") from exc
    check_integrity(run, cfg, hashlib.sha256(data).hexdigest() if model else None)
    return cfg, data


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


def check_integrity(run_dir: str | Path, cfg: dict[str, Any], model_sha: str | None = None
                    ) -> None:
    """Raise ``RunModifiedError`` when ``cfg`` carries an integrity section that the run's files
    no longer match, or none while its format (2 on) always has one; format 1 runs pass.
    ``model_sha``: the model file's digest when it was read already (else it is read)."""
    sealed = cfg.get("integrity")
    run = Path(run_dir)
    if sealed is None:
        fmt = cfg.get("graftwork_format", 1)
        if _is_int(fmt) and fmt >= 2:
            raise RunModifiedError(f"{str(run / CONFIG_FILE)!r} has lost its integrity seal "
                                   f"(format {fmt} always has one): it was edited after the run "
                                   "was saved", _RESTORE)
        return
    sealed = sealed if isinstance(sealed, dict) else {}
    changed = []
    if sealed.get("config") != config_digest(cfg):
        changed.append(CONFIG_FILE)
    model = run / MODEL_FILE
    if model_sha is None and model.is_file():
        model_sha = file_sha256(model)
    if model_sha is None or sealed.get(MODEL_FILE) != model_sha:
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


