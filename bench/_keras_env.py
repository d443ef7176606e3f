"""The Keras/TensorFlow virtual environment of the benchmark's peer (``bench/.venv-keras``).

TensorFlow is never a graftwork dependency: it lives only in this git-ignored venv, which
``ensure_keras_venv`` creates on first use (``python3 -m venv`` + pip from PyPI, about 1 GB)
and reuses afterwards (a stamp file records the pinned versions it was built with).
"""
from __future__ import annotations

from pathlib import Path

from _venv import ensure_venv

BENCH = Path(__file__).resolve().parent
VENV = BENCH / ".venv-keras"
# Pinned to what installed and ran here (Python 3.11, Linux x86-64).
PINS = ("tensorflow-cpu==2.21.0", "keras==3.15.1", "pillow==13.0.0", "numpy==2.4.6")

def ensure_keras_venv(path: Path = VENV, pins: tuple[str, ...] = PINS) -> Path:
    """Create the venv at ``path`` when missing or stale (~1 GB); return its python executable."""
    return ensure_venv(path, pins, "tensorflow, keras, PIL, numpy",
                       "check that PyPI is reachable and python3-venv is installed, or skip the "
                       "Keras comparison (bench/train.py --no-keras).")


if __name__ == "__main__":
    print(ensure_keras_venv())
