"""Replacing a run without losing it: the new run is built beside the old one, in
``RUN/.graft-new`` (:data:`~graftwork.rundir.files.STAGING_DIR`), and swapped in only once it is
complete.

The swap (:func:`commit`): the staging folder is marked complete (``.complete``, which lists the
old run's files the new one does not replace: they are removed), then each of its entries is
renamed into ``RUN`` (``model.safetensors`` first, ``config.json`` second; a folder's old copy
is moved aside first), then the staging folder is removed. Every rename is atomic, so a reader
sees the old run, the new one, or -- for the milliseconds between the model and its config -- a
pair whose seal does not match, while the mark says a swap is under way: readers wait for it
(:func:`swapping`), and name the writing process if it does not end. A swap cut short (the
process killed) is finished by the next writer (:func:`finish`, under the run's lock).

Torch-free, like :mod:`graftwork.rundir`.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import socket
from collections.abc import Iterable
from pathlib import Path

from graftwork.rundir.files import (CONFIG_FILE, LOCK_FILE, MODEL_FILE, RUN_FILES, STAGED_MARK,
                                    STAGING_DIR, read_json, write_json)

__all__ = ["commit", "finish", "swapping", "staging_dirs", "lock_owner", "live_writer",
           "remove_entry"]

log = logging.getLogger("graftwork.rundir")
_TRASH = ".old"


def lock_owner(record: bytes) -> tuple[int, str, str] | None:
    """(pid, host, started) of a run lock's record, or None if it is not one."""
    try:
        owner = json.loads(record)
        return int(owner["pid"]), str(owner["host"]), str(owner.get("started", "?"))
    except (ValueError, TypeError, KeyError, UnicodeDecodeError):
        return None


def live_writer(run: Path) -> str | None:
    """``process PID[ on host HOST]`` when the run's lock record names a process that still
    runs (one on another host is taken to), else None."""
    try:
        owner = lock_owner((run / LOCK_FILE).read_bytes())
    except OSError:
        return None
    if owner is None:
        return None
    pid, host, _ = owner
    if host == socket.gethostname():
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except OSError:  # it exists, and belongs to someone else
            pass
        return f"process {pid}"
    return f"process {pid} on host {host}"


def staging_dirs(run: Path) -> list[Path]:
    """The staging folders in ``run`` (``.graft-new`` and those of saves over a saved run)."""
    try:
        return sorted(p for p in Path(run).glob(f"{STAGING_DIR}*") if p.is_dir()
                      and not p.is_symlink())
    except OSError:
        return []


def swapping(run: Path) -> bool:
    """Whether a complete new run is being swapped into ``run`` (or its swap was cut short)."""
    return any((p / STAGED_MARK).is_file() for p in staging_dirs(run))


def remove_entry(path: Path) -> None:
    """Remove a file, link or folder (a folder's link is removed, not followed)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def commit(run: Path, staging: Path, remove: Iterable[str] = RUN_FILES) -> None:
    """Swap the complete run in ``staging`` into ``run``; of the names in ``remove`` (run files),
    those ``staging`` does not hold are removed from ``run`` (never mixed with the new run)."""
    staged = {p.name for p in staging.iterdir()}
    gone = sorted(n for n in remove if n in RUN_FILES and n not in staged)
    write_json(staging / STAGED_MARK, {"pid": os.getpid(), "remove": gone})
    finish(run, staging)


def _order(name: str) -> tuple[int, str]:
    """The model first, its config second (a reader then sees a seal mismatch, never a config
    that seals a model not yet there), the rest after."""
    return ({MODEL_FILE: 0, CONFIG_FILE: 1}.get(name, 2), name)


def finish(run: Path, staging: Path) -> None:
    """Complete the swap of ``staging`` (marked complete) into ``run``: idempotent, so a swap
    cut short is finished by running it again."""
    try:
        mark = read_json(staging / STAGED_MARK)
    except (OSError, ValueError):
        mark = {}
    remove = mark.get("remove") if isinstance(mark, dict) else None
    remove = [n for n in remove if n in RUN_FILES] if isinstance(remove, list) else []
    trash = staging / _TRASH
    entries = sorted((p for p in staging.iterdir() if p.name not in (STAGED_MARK, _TRASH)),
                     key=lambda p: _order(p.name))
    for src in entries:
        dst = run / src.name
        if dst.is_symlink() or (dst.exists() and (dst.is_dir() or src.is_dir())):
            trash.mkdir(exist_ok=True)
            remove_entry(trash / src.name)
            os.replace(dst, trash / src.name)
        os.replace(src, dst)
    for name in remove:
        remove_entry(run / name)
    shutil.rmtree(staging)
