"""Run directory files: config.json, metrics.json, history.csv, predictions and skipped lists."""
from __future__ import annotations

import csv
import importlib.metadata
import json
import math
import os
import platform
import secrets
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = ["atomic_file", "atomic_write_text", "write_json", "read_json", "write_csv", "read_csv", "package_versions",
           "HISTORY_COLUMNS", "PREDICTION_COLUMNS"]

HISTORY_COLUMNS = ("phase", "epoch", "loss", "accuracy", "val_loss", "val_accuracy", "lr")
PREDICTION_COLUMNS = ("path", "label", "pred", "prob", "prob_true", "loss")


def _clean(value: Any) -> Any:
    """JSON-safe: NaN/inf become None, tuples lists."""
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
    atomic_write_text(path, json.dumps(_clean(data), indent=2, sort_keys=False) + "\n")


def read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def write_csv(path: Path, columns: Sequence[str], rows: Iterable[dict[str, Any]]) -> None:
    with atomic_file(path) as tmp, open(tmp, "x", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if v is None else v) for k, v in row.items()})


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
