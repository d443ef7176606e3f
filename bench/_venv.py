"""Virtual environments for the benchmarks' peers, never graftwork dependencies.

``ensure_venv(path, pins, imports)`` creates ``path`` on first use (``python3 -m venv`` + pip
from PyPI) and reuses it afterwards: a stamp file records the pins it was built with, and a
changed pin list rebuilds it.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path


class VenvError(RuntimeError):
    """A venv could not be created (no network, no venv module, pip failure, import failure)."""


def python_of(path: Path) -> Path:
    """The python executable of the venv at ``path``."""
    return Path(path) / "bin" / "python"


def ensure_venv(path: Path, pins: tuple[str, ...], imports: str, fix: str) -> Path:
    """Create the venv at ``path`` when missing or stale; return its python executable.
    ``imports`` is a comma-separated module list that must import afterwards; ``fix`` ends the
    error message of a failed install."""
    path = Path(path)
    stamp = path / ".stamp.json"
    want = {"pins": list(pins)}
    py = python_of(path)
    if stamp.exists() and py.exists():
        try:
            if json.loads(stamp.read_text()) == want:
                return py
        except ValueError:
            pass
    shutil.rmtree(path, ignore_errors=True)
    print(f"[bench] creating {path} ({' '.join(pins)}): a few minutes",
          file=sys.stderr, flush=True)
    steps = [["python3", "-m", "venv", str(path)],
             [str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check", *pins]]
    for cmd in steps:
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True)
        except OSError as exc:
            raise VenvError(f"cannot run {cmd[0]}: {exc}") from exc
        if proc.returncode != 0:
            shutil.rmtree(path, ignore_errors=True)
            tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
            raise VenvError(f"creating {path} failed at `{' '.join(cmd[:4])} ...` "
                            f"(exit {proc.returncode}):\n{tail}\nFix: {fix}")
    check = subprocess.run([str(py), "-c", f"import {imports}"], capture_output=True, text=True)
    if check.returncode != 0:
        shutil.rmtree(path, ignore_errors=True)
        raise VenvError(f"{path} does not import {imports}:\n{check.stderr[-2000:]}")
    stamp.write_text(json.dumps(want))
    return py
