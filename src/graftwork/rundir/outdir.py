"""The writer's side of a run directory: ``RunLock`` (one writing process at a time, stale
locks taken over) and ``prepare_out`` (the ``graft train --out`` policy: never mix a finished
run with a new one unless ``--overwrite``, which removes graftwork's files only).

Torch-free, like :mod:`graftwork.rundir` (which re-exports both names).
"""
from __future__ import annotations

import datetime as dt
import json
import logging
import os
import secrets
import shutil
import socket
from pathlib import Path

from graftwork.errors import ConfigError, RunDirError
from graftwork.rundir.files import (CONFIG_FILE, LOCK_FILE, METRICS_FILE, MODEL_FILE, RUN_FILES,
                                    read_json, read_metrics)
from graftwork.errors import RunBusyError, RunExistsError
from graftwork.rundir.config import _is_num

__all__ = ["RunLock", "prepare_out"]

log = logging.getLogger("graftwork.rundir")


# ---------------------------------------------------------------------- the writer's lock
def _pid_alive(pid: int) -> bool:
    if os.name == "nt":  # os.kill(pid, 0) would send Ctrl-C there: assume alive
        return True
    try:
        os.kill(pid, 0)
    except PermissionError:  # another user's live process
        return True
    except (OverflowError, ValueError, OSError):  # ProcessLookupError: gone
        return False
    return True


def _ensure_dir(run: Path) -> None:
    """Create ``run`` or raise ``RunDirError`` saying why it cannot hold a run."""
    if run.exists() and not run.is_dir():
        raise RunDirError(f"--out {str(run)!r} is a file, not a folder",
                          "choose another --out (a folder, new or existing)")
    try:
        run.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RunDirError(f"cannot create run folder {str(run)!r}: {exc.strerror or exc}",
                          "choose an --out in a folder you can write to") from exc
    if not os.access(run, os.W_OK | os.X_OK):
        raise RunDirError(f"cannot write to run folder {str(run)!r}",
                          "choose an --out in a folder you can write to, or fix its permissions")


class RunLock:
    """``with RunLock(run_dir):`` only one process writes a run at a time.

    ``run_dir/.graft.lock`` is created exclusively and holds ``{pid, host, started}``. A lock
    whose process is gone (or that cannot be read) is stale: it is replaced with a warning.
    The lock file is removed on exit, also when the block raises.
    """

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_FILE
        self._content: bytes | None = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def acquire(self) -> None:
        """Take the lock (creating the run folder); ``RunBusyError`` if a live process has it."""
        _ensure_dir(self.run_dir)
        owner = {"pid": os.getpid(), "host": socket.gethostname(),
                 "started": dt.datetime.now().astimezone().isoformat(timespec="seconds")}
        content = json.dumps(owner).encode("utf-8")
        for _ in range(5):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._break_if_stale()
                continue
            with os.fdopen(fd, "wb") as fh:
                fh.write(content)
            self._content = content
            return
        raise RunBusyError(f"cannot lock {str(self.run_dir)!r}: other processes keep taking it",
                           "wait for them to finish, or use another --out")

    def _break_if_stale(self) -> None:
        """Raise ``RunBusyError`` if the lock's owner is alive, else remove the stale lock."""
        try:
            seen = self.path.read_bytes()
        except FileNotFoundError:
            return
        try:
            owner = json.loads(seen)
            pid, host, since = int(owner["pid"]), str(owner["host"]), owner.get("started", "?")
        except (ValueError, TypeError, KeyError):
            pid, host, since = None, "", "?"
        if pid is not None and (host != socket.gethostname() or _pid_alive(pid)):
            where = "" if host == socket.gethostname() else f" on host {host}"
            raise RunBusyError(f"{str(self.run_dir)!r} is being written by process {pid}{where} "
                               f"(since {since})", "wait for it to finish, or use another --out "
                               f"(if process {pid}{where} is not graftwork, delete {self.path})")
        log.warning("removing stale lock %s (%s)", self.path,
                    f"process {pid} is gone" if pid is not None else "unreadable")
        # Move it aside before deleting, and put it back if it was not the stale one we read:
        # two processes breaking the same stale lock must not delete each other's new lock.
        aside = self.path.with_name(f"{LOCK_FILE}.{os.getpid()}.{secrets.token_hex(4)}.stale")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return
        if aside.read_bytes() != seen:
            try:
                os.link(aside, self.path)
            except OSError:
                pass
        aside.unlink(missing_ok=True)

    def release(self) -> None:
        """Remove the lock file if it is still ours."""
        if self._content is None:
            return
        try:
            if self.path.read_bytes() == self._content:
                self.path.unlink()
        except FileNotFoundError:
            pass
        self._content = None


# ---------------------------------------------------------------------- the --out policy
def _describe_run(run: Path) -> str:
    try:
        cfg = read_json(run / CONFIG_FILE)
    except (OSError, UnicodeDecodeError, ValueError):
        return "its config.json is unreadable"
    cfg = cfg if isinstance(cfg, dict) else {}
    backbone = cfg.get("backbone") if isinstance(cfg.get("backbone"), dict) else {}
    test = read_metrics(run).get("test") if (run / METRICS_FILE).is_file() else None
    accuracy = test.get("accuracy") if isinstance(test, dict) else None
    parts = [f"trained {cfg.get('created') or 'at an unknown time'}", backbone.get("name"),
             cfg.get("strategy"), f"test accuracy {accuracy:.1%}" if _is_num(accuracy) else None]
    return ", ".join(str(p) for p in parts if p)


def _remove_run_files(run: Path) -> None:
    for name in RUN_FILES:
        target = run / name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        elif target.exists() or target.is_symlink():
            target.unlink()
    for leftover in run.glob(".*.tmp"):  # temporary files of an interrupted atomic write
        if any(leftover.name.startswith(f".{name}.") for name in RUN_FILES):
            leftover.unlink(missing_ok=True)


def prepare_out(run_dir: str | Path, *, overwrite: bool, resume: bool) -> None:
    """Make ``run_dir`` ready for ``graft train --out``: create it, refuse to mix a finished run
    with a new one unless ``overwrite`` (which removes only graftwork's files, never others).
    Call it while holding ``RunLock(run_dir)``."""
    run = Path(run_dir)
    if overwrite and resume:
        raise ConfigError("--overwrite and --resume cannot be combined",
                          "use --resume to continue an interrupted run, or --overwrite to "
                          "start again")
    _ensure_dir(run)
    finished = (run / MODEL_FILE).is_file() and (run / CONFIG_FILE).is_file()
    if finished and not overwrite:
        what = f"{str(run)!r} already holds a finished run ({_describe_run(run)})"
        if resume:
            raise RunExistsError(f"{what}: there is nothing to resume",
                                 "pass --overwrite to train it again from scratch, or choose "
                                 "another --out")
        raise RunExistsError(what, "choose another --out, or pass --overwrite to replace it")
    if overwrite:
        _remove_run_files(run)
