"""Content digests of image files: the feature cache's row keys.

Hashing every file costs a read of the whole dataset, so digests are remembered: in this process
and in ``CACHE/file-digests.json``, keyed by path and the file's stat: device, inode, size,
modification time and status-change time (ctime, as git's index does). mtime alone is not
enough: tools that rewrite a file in place and keep its mtime (``exiftool -P``, ``rsync
--inplace -t``, ``cp -p`` onto an existing file, ``os.utime``) leave size and mtime as they were,
but every write (and every ``utime``) sets ctime to the current time, which no program can set
back; a replaced file has a new inode too. A digest is trusted only when its file's last change
(the later of mtime and ctime) is older than a few seconds when it was hashed: a change in the
same clock tick (coarse timestamps: 2 s on FAT, jiffies on Linux) could keep the whole stat
(git's "racy" case). Such a file is hashed again on every call, in this process too. A file
whose stat changed while it was read is not remembered either. Several processes may share one
cache (``graft extract --shard``): the index is re-read and merged under a lock file before each
write, so no process drops another's entries. (On Windows before Python 3.12 ``st_ctime`` is the
creation time: there an in-place rewrite that keeps size and mtime is not seen.)
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock

from graftwork.rundir.files import atomic_write_text

__all__ = ["file_digest", "file_digests", "stat_key", "settled"]

log = logging.getLogger(__name__)

INDEX_FILE = "file-digests.json"
LOCK_FILE = "file-digests.lock"
_RACY_S = 3.0
_MEMO_MAX = 500_000  # ~150 MB at most; cleared when full
_Key = tuple[int, int, int, int, int]  # device, inode, size, mtime_ns, ctime_ns
_MEMO: dict[str, tuple[_Key, bytes]] = {}
_INDEXES: dict[str, dict[str, list]] = {}  # cache root -> its index as loaded/updated


def file_digest(path: str) -> bytes | None:
    """sha256 of a file's bytes, or None if it cannot be read."""
    h = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    except OSError:
        return None
    return h.digest()


def stat_key(st: os.stat_result) -> _Key:
    """What identifies a file's content without reading it: device, inode, size, mtime, ctime."""
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def settled(st: os.stat_result, now: float) -> bool:
    """Whether the file last changed (mtime or ctime, whichever is later) at least ``_RACY_S``
    before ``now``: only then can its stat stand for its content (a file from the future never
    does)."""
    return now - max(st.st_mtime, st.st_ctime) >= _RACY_S


def _read_index(root: Path) -> dict[str, list]:
    try:
        data = json.loads((root / INDEX_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _load_index(root: Path) -> dict[str, list]:
    key = str(root)
    if key not in _INDEXES:
        _INDEXES[key] = _read_index(root)
    return _INDEXES[key]


@contextmanager
def _index_lock(root: Path) -> Iterator[None]:
    """An exclusive lock on ``root``'s index: a :class:`filelock.FileLock` (``flock`` on Unix,
    Windows' own file locking; released when the process dies). Where the lock file cannot be
    made (a read-only cache), no lock: the merge still keeps what it read."""
    lock: FileLock | None = FileLock(root / LOCK_FILE)
    try:
        lock.acquire()
    except OSError as exc:
        log.debug("file digests of %s merged without a lock: %s", root, exc)
        lock = None
    try:
        yield
    finally:
        if lock is not None:
            lock.release()


def _save_index(root: Path, index: dict[str, list], added: dict[str, list] | None = None) -> None:
    """Write the index, merged with what other processes wrote meanwhile: under the lock the
    file is read again and this process's ``added`` entries (all of ``index`` if None) are laid
    over it, then it is replaced atomically."""
    try:
        root.mkdir(parents=True, exist_ok=True)
        with _index_lock(root):
            merged = _read_index(root)
            merged.update(index if added is None else added)
            # json.dumps uses the C encoder; json.dump to a file would use the pure-Python one
            atomic_write_text(root / INDEX_FILE, json.dumps(merged, separators=(",", ":")))
        index.update(merged)  # this process now knows the others' files too
    except OSError as exc:  # a read-only cache only costs re-hashing next time
        log.debug("file digests not saved in %s: %s", root, exc)


def _known(index: dict[str, list] | None, path: str, key: _Key) -> bytes | None:
    row = index.get(path) if index is not None else None
    if isinstance(row, list) and len(row) == len(key) + 1 and tuple(row[:-1]) == key:
        try:
            return bytes.fromhex(row[-1])
        except (TypeError, ValueError):
            return None
    return None


def file_digests(paths: Sequence[str], cache_root: str | Path | None = None) -> list[bytes | None]:
    """Digests of ``paths`` (None where unreadable), remembered under ``cache_root``.

    Files not seen before are hashed in threads (reading and sha256 release the GIL).
    """
    root = Path(cache_root) if cache_root is not None else None
    index = _load_index(root) if root is not None else None
    now = time.time()
    out: list[bytes | None] = [None] * len(paths)
    todo: list[tuple[int, str, _Key, bool]] = []
    added: dict[str, list] = {}
    for i, p in enumerate(paths):
        path = os.path.abspath(p)
        try:
            st = os.stat(path)
        except OSError:
            continue
        key, stable = stat_key(st), settled(st, now)
        hit = _MEMO.get(path) if stable else None
        known = _known(index, path, key) if stable else None
        digest = hit[1] if hit is not None and hit[0] == key else known
        if digest is None:
            todo.append((i, path, key, stable))
            continue
        out[i] = digest
        _MEMO[path] = (key, digest)
        if index is not None and known is None:
            index[path] = added[path] = [*key, digest.hex()]
    if todo:
        step = max(64, -(-len(todo) // 16))  # a few large tasks: a future per file costs more
        parts = [todo[i:i + step] for i in range(0, len(todo), step)]
        with ThreadPoolExecutor(max_workers=min(4, len(parts))) as pool:
            hashed = [d for part in pool.map(lambda ps: [_hash_unchanged(t[1], t[2]) for t in ps],
                                             parts)
                      for d in part]
        if len(_MEMO) + len(todo) > _MEMO_MAX:
            _MEMO.clear()
        for (i, path, key, stable), (digest, unchanged) in zip(todo, hashed):
            if digest is None:
                continue
            out[i] = digest
            if not (stable and unchanged):  # could still change, or changed while read
                _MEMO.pop(path, None)
                continue
            _MEMO[path] = (key, digest)
            if index is not None:
                index[path] = added[path] = [*key, digest.hex()]
    if root is not None and index is not None and added:
        _save_index(root, index, added)
    return out


def _hash_unchanged(path: str, key: _Key) -> tuple[bytes | None, bool]:
    """(digest, whether the file's stat after reading is still ``key``)."""
    digest = file_digest(path)
    try:
        return digest, stat_key(os.stat(path)) == key
    except OSError:
        return digest, False
