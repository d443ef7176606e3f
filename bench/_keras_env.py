"""The Keras/TensorFlow virtual environment of the benchmark's peer (``bench/.venv-keras``).

TensorFlow is never a graftwork dependency: it lives only in this git-ignored venv, which
``ensure_keras_venv`` creates on first use (``python3 -m venv`` + pip from PyPI, about 1 GB)
and reuses afterwards (a stamp file records the pinned versions it was built with).
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
VENV = BENCH / ".venv-keras"
# Pinned to what installed and ran here (Python 3.11, Linux x86-64).
PINS = ("tensorflow-cpu==2.21.0", "keras==3.15.1", "pillow==13.0.0", "numpy==2.4.6")


class KerasEnvError(RuntimeError):
    """The Keras venv could not be created (no network, no venv module, pip failure)."""


def _python(path: Path) -> Path:
    return path / "bin" / "python"


def ensure_keras_venv(path: Path = VENV, pins: tuple[str, ...] = PINS) -> Path:
    """Create the venv at ``path`` when missing or stale; return its python executable."""
    path = Path(path)
    stamp = path / ".stamp.json"
    want = {"pins": list(pins)}
    py = _python(path)
    if stamp.exists() and py.exists():
        try:
            if json.loads(stamp.read_text()) == want:
                return py
        except ValueError:
            pass
    shutil.rmtree(path, ignore_errors=True)
    print(f"[bench] creating {path} ({' '.join(pins)}): a few minutes, ~1 GB",
          file=sys.stderr, flush=True)
    steps = [["python3", "-m", "venv", str(path)],
             [str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check", *pins]]
    for cmd in steps:
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True)
        except OSError as exc:
            raise KerasEnvError(f"cannot run {cmd[0]}: {exc}") from exc
        if proc.returncode != 0:
            shutil.rmtree(path, ignore_errors=True)
            tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
            raise KerasEnvError(
                f"creating the Keras venv failed at `{' '.join(cmd[:4])} ...` "
                f"(exit {proc.returncode}):\n{tail}\n"
                "Fix: check that PyPI is reachable and python3-venv is installed, or skip the "
                "Keras comparison (bench/train.py --no-keras).")
    check = subprocess.run([str(py), "-c", "import tensorflow, keras, PIL, numpy"],
                           capture_output=True, text=True)
    if check.returncode != 0:
        shutil.rmtree(path, ignore_errors=True)
        raise KerasEnvError(f"the Keras venv does not import tensorflow:\n{check.stderr[-2000:]}")
    stamp.write_text(json.dumps(want))
    return py


if __name__ == "__main__":
    print(ensure_keras_venv())
