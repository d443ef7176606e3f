"""File digests remembered across runs (CACHE/file-digests.json), never stale."""
from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
from pathlib import Path
from typing import Any

import pytest

from graftwork.data import digests as _digests
from graftwork.data.digests import INDEX_FILE, file_digests


@pytest.fixture()
def files(tmp_path: Path) -> list[str]:
    paths = []
    for i in range(5):
        p = tmp_path / "img" / f"{i}.jpg"
        p.parent.mkdir(exist_ok=True)
        p.write_bytes(bytes([i]) * 1000)
        os.utime(p, (1_600_000_000, 1_600_000_000))  # old: not "racy"
        paths.append(str(p))
    return paths


def _new_process(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Forget the in-process memos and count real hashing from now on."""
    monkeypatch.setattr(_digests, "_MEMO", {})
    monkeypatch.setattr(_digests, "_INDEXES", {})
    hashed: list[str] = []
    real = _digests.file_digest

    def counting(path: str) -> bytes | None:
        hashed.append(path)
        return real(path)

    monkeypatch.setattr(_digests, "file_digest", counting)
    return hashed


def test_digests_are_sha256_and_remembered_across_runs(files: list[str], tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "cache"
    hashed = _new_process(monkeypatch)
    first = file_digests(files, cache)
    assert first == [hashlib.sha256(Path(p).read_bytes()).digest() for p in files]
    assert len(hashed) == 5 and (cache / INDEX_FILE).is_file()
    hashed = _new_process(monkeypatch)
    assert file_digests(files, cache) == first
    assert hashed == []  # a fresh process reads the index instead of the files


def test_changed_file_is_hashed_again(files: list[str], tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "cache"
    file_digests(files, cache)
    Path(files[2]).write_bytes(b"other content, other size")
    os.utime(files[2], (1_600_000_100, 1_600_000_100))
    hashed = _new_process(monkeypatch)
    digests = file_digests(files, cache)
    assert hashed == [files[2]]
    assert digests[2] == hashlib.sha256(b"other content, other size").digest()
    # same size, same mtime, other inode (replaced file): hashed again too
    replacement = Path(files[3] + ".new")
    replacement.write_bytes(b"\xff" * 1000)
    os.replace(replacement, files[3])
    os.utime(files[3], (1_600_000_000, 1_600_000_000))
    hashed = _new_process(monkeypatch)
    assert file_digests(files, cache)[3] == hashlib.sha256(b"\xff" * 1000).digest()
    assert hashed == [files[3]]


def test_fresh_files_are_not_remembered(tmp_path: Path) -> None:
    p = tmp_path / "new.png"
    p.write_bytes(b"just written")
    cache = tmp_path / "cache"
    file_digests([str(p)], cache)
    assert not (cache / INDEX_FILE).exists()  # could change again within the same mtime tick


def test_unreadable_and_corrupt_index(files: list[str], tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / INDEX_FILE).write_text("{not json")
    _new_process(monkeypatch)
    assert file_digests([*files, str(tmp_path / "missing.jpg")], cache)[-1] is None
    index = json.loads((cache / INDEX_FILE).read_text())
    assert sorted(index) == sorted(files)
    # an index row with a wrong shape is ignored, not trusted
    index[files[0]] = ["garbage"]
    (cache / INDEX_FILE).write_text(json.dumps(index))
    hashed = _new_process(monkeypatch)
    assert file_digests(files, cache)[0] == hashlib.sha256(bytes([0]) * 1000).digest()
    assert hashed == [files[0]]


def _context() -> Any:
    """Processes that start at once (fork) where there is fork: they only call graftwork."""
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("fork" if "fork" in methods else "spawn")


def _remember_one_by_one(paths: list[str], cache: str, start: Any) -> None:
    """In another process: each file's digest saved by an index write of its own."""
    start.wait(timeout=120)
    for path in paths:
        file_digests([path], cache)


def test_index_writers_in_several_processes_lose_nothing(tmp_path: Path) -> None:
    """Four processes write one index at once, a file at a time: the lock around each
    read-merge-replace keeps every entry."""
    files = []
    for i in range(60):
        p = tmp_path / "img" / f"{i}.bin"
        p.parent.mkdir(exist_ok=True)
        p.write_bytes(i.to_bytes(2, "big") * 50)
        os.utime(p, (1_600_000_000, 1_600_000_000))
        files.append(str(p))
    cache = tmp_path / "cache"
    ctx = _context()
    start = ctx.Event()
    procs = [ctx.Process(target=_remember_one_by_one, args=(files[i::4], str(cache), start))
             for i in range(4)]
    for proc in procs:
        proc.start()
    start.set()
    for proc in procs:
        proc.join(timeout=120)
        assert proc.exitcode == 0
    assert set(json.loads((cache / INDEX_FILE).read_text())) == set(files)
