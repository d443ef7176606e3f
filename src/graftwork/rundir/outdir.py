"""The writer's side of a run directory: ``RunLock`` (one writing process at a time: a
``filelock.FileLock``, free again when its process dies), ``prepare_out`` (the ``graft train
--out`` policy: never mix a finished run with a new one unless ``--overwrite``, which builds the
new run beside the old one and replaces graftwork's files only once it is complete:
:mod:`graftwork.rundir.staging`) and ``check_out_place`` (``--out`` never inside DATA).

Torch-free, like :mod:`graftwork.rundir` (which re-exports both names).
"""
from __future__ import annotations

import datetime as dt
import json
import logging
import os
import socket
from pathlib import Path

from filelock import FileLock, Timeout

from graftwork.errors import ConfigError, RunDirError
from graftwork.rundir.files import (CHECKPOINTS_DIR, CONFIG_FILE, LOCK_FILE, METRICS_FILE,
                                    MODEL_FILE, PLOTS_DIR, STAGED_MARK, STAGING_DIR, read_json,
                                    read_metrics, remove_stale_temps)
from graftwork.errors import RunBusyError, RunExistsError
from graftwork.rundir.config import _is_num
from graftwork.rundir.staging import finish, lock_owner, remove_entry, staging_dirs

__all__ = ["RunLock", "prepare_out", "check_out_place", "ensure_out_dir"]

log = logging.getLogger("graftwork.rundir")


# ---------------------------------------------------------------------- the writer's lock
def ensure_out_dir(run: Path, what: str = "run folder") -> None:
    """Create ``--out`` (``run``) or raise ``RunDirError`` saying why graftwork cannot write
    its files there (``what``: the folder's role, for the message)."""
    if run.exists() and not run.is_dir():
        raise RunDirError(f"--out {str(run)!r} is a file, not a folder",
                          "choose another --out (a folder, new or existing)")
    try:
        run.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RunDirError(f"cannot create {what} {str(run)!r}: {exc.strerror or exc}",
                          "choose an --out in a folder you can write to") from exc
    if not os.access(run, os.W_OK | os.X_OK):
        raise RunDirError(f"cannot write to {what} {str(run)!r}",
                          "choose an --out in a folder you can write to, or fix its permissions")


class RunLock:
    """``with RunLock(run_dir):`` only one process writes a run at a time.

    ``run_dir/.graft.lock`` is a :class:`filelock.FileLock` (``flock`` on Unix, also across
    NFS clients; Windows' own file locking): the system releases it when its process ends,
    however it ends, so a lock left by a killed run is free at once. While held, the file holds
    ``{pid, host, started}`` for the message a second writer gets; it is removed on release,
    also when the block raises (a record a dead process left is replaced with a warning).
    """

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_FILE
        self._content: bytes | None = None
        self._previous = b""
        self._lock = FileLock(self.path, timeout=0, on_acquired=self._write_owner)

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def _write_owner(self, fd: int) -> None:
        """Called by filelock on the locked file: keep what was there, write our record."""
        os.lseek(fd, 0, os.SEEK_SET)
        self._previous = os.read(fd, 4096)
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, self._content or b"")

    def acquire(self) -> None:
        """Take the lock (creating the run folder); ``RunBusyError`` if a live process has it."""
        ensure_out_dir(self.run_dir)
        owner = {"pid": os.getpid(), "host": socket.gethostname(),
                 "started": dt.datetime.now().astimezone().isoformat(timespec="seconds")}
        self._content = json.dumps(owner).encode("utf-8")
        self._previous = b""
        left_over = self.path.exists()  # a release removes it: a leftover is stale
        try:
            self._lock.acquire()
        except Timeout:
            self._content = None
            raise self._busy() from None
        if left_over or self._previous:  # left by a process that ended while holding it
            left = lock_owner(self._previous)
            where = "" if left is None or left[1] == socket.gethostname() else f" on {left[1]}"
            log.warning("replaced stale lock %s (%s)", self.path,
                        "unreadable" if left is None else f"process {left[0]}{where} is gone")

    def _busy(self) -> RunBusyError:
        """The error for a lock another process holds, naming it when its record says."""
        try:
            owner = lock_owner(self.path.read_bytes())
        except OSError:  # Windows: the holder's locked byte cannot be read
            owner = None
        if owner is None:  # not written yet, or unreadable
            return RunBusyError(f"{str(self.run_dir)!r} is being written by another process",
                                f"wait for it to finish, or use another --out (it holds "
                                f"{self.path})")
        pid, host, since = owner
        where = "" if host == socket.gethostname() else f" on host {host}"
        return RunBusyError(f"{str(self.run_dir)!r} is being written by process {pid}{where} "
                            f"(since {since})", "wait for it to finish, or use another --out "
                            f"(process {pid}{where} holds {self.path})")

    def release(self) -> None:
        """Remove the lock file (if it is still ours) while still holding it, then release."""
        if self._content is None:
            return
        try:
            if self.path.read_bytes() == self._content:
                # A process that opened the file meanwhile finds it unlinked once it gets the
                # lock, and opens a new one (filelock checks); Windows removes it on release.
                self.path.unlink()
        except OSError:
            pass
        finally:
            self._content = None
            self._lock.release()


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


def _tidy(run: Path) -> None:
    """What killed writers left in ``run`` (called holding its lock): a swap cut short is
    finished, temporary files of interrupted writes are removed."""
    for staging in staging_dirs(run):
        if (staging / STAGED_MARK).is_file():
            log.warning("finishing the replacement of %s that an interrupted run left half-done",
                        run)
            finish(run, staging)
    for folder in (run, run / CHECKPOINTS_DIR, run / PLOTS_DIR,
                   run / STAGING_DIR / CHECKPOINTS_DIR):
        for name in remove_stale_temps(folder):
            log.info("removed %s, left by an interrupted write", folder / name)


def _drop_staging(run: Path, keep: Path | None = None) -> None:
    """Remove the unfinished new runs that interrupted ``--overwrite`` runs left (not ``keep``)."""
    for staging in staging_dirs(run):
        if staging != keep:
            log.warning("removing %s: an unfinished new run an interrupted run left", staging)
            remove_entry(staging)


def prepare_out(run_dir: str | Path, *, overwrite: bool, resume: bool) -> Path:
    """Make ``run_dir`` ready for ``graft train --out`` and return the folder to train into.

    Refuses to mix a finished run with a new one unless ``overwrite``: then the new run is
    built in ``run_dir/.graft-new`` (returned) and swapped in by
    :func:`graftwork.rundir.staging.commit` once complete, so the old run is kept until then
    (files that are not graftwork's are never touched). ``overwrite`` with ``resume`` continues
    such a replacement that was interrupted. Call it while holding ``RunLock(run_dir)``."""
    run = Path(run_dir)
    ensure_out_dir(run)
    _tidy(run)
    staging = run / STAGING_DIR
    interrupted = (staging / CHECKPOINTS_DIR).is_dir()
    if overwrite and resume and not interrupted:
        raise ConfigError(f"--overwrite and --resume cannot be combined here: {str(run)!r} holds "
                          "no interrupted --overwrite to resume",
                          "use --resume to continue an interrupted run, or --overwrite to "
                          "start again")
    finished = (run / MODEL_FILE).is_file() and (run / CONFIG_FILE).is_file()
    if finished and not overwrite:
        what = f"{str(run)!r} already holds a finished run ({_describe_run(run)})"
        if resume:
            fix = ("pass --overwrite --resume to continue replacing it (an --overwrite was "
                   "interrupted)" if interrupted else "pass --overwrite to train it again from "
                   "scratch, or choose another --out")
            raise RunExistsError(f"{what}: there is nothing to resume", fix)
        raise RunExistsError(what, "choose another --out, or pass --overwrite to replace it")
    if not overwrite:
        _drop_staging(run)
        return run
    if resume:
        _drop_staging(run, keep=staging)
        for entry in staging.iterdir():
            if entry.name != CHECKPOINTS_DIR:
                remove_entry(entry)
        return staging
    _drop_staging(run)
    staging.mkdir()
    return staging


def check_out_place(out: str | Path, data: str | Path, cache_dir: str | Path | None = None
                    ) -> None:
    """Refuse an ``--out`` (or a cache folder) inside DATA before anything is created: it would
    be found as a class of DATA, and DATA is never modified."""
    try:
        root = Path(data).resolve()
    except (OSError, RuntimeError):
        return
    for flag, path in (("--out", out), ("--cache-dir", cache_dir)):
        if path is None:
            continue
        try:
            where = Path(path).resolve()
        except (OSError, RuntimeError):
            continue
        if where == root or root in where.parents:
            raise ConfigError(f"{flag} {str(path)!r} is inside DATA {str(data)!r}: graftwork "
                              "would write into your data (and find it as a class)",
                              f"choose a {flag} outside {str(data)!r}")
