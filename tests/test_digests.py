"""File digests remembered across runs (CACHE/file-digests.json), never stale."""
from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from graftwork.data import digests as _digests
from graftwork.data.digests import INDEX_FILE, file_digests


@pytest.fixture(autouse=True)
def _settled_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Files a test has just written count as settled (their ctime is now and cannot be set
    back); the tests of the racy window set ``_RACY_S`` themselves."""
    monkeypatch.setattr(_digests, "_RACY_S", 0.0)


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


def test_fresh_files_are_not_remembered(tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_digests, "_RACY_S", 3.0)
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


def _rewrite_in_place(path: str, content: bytes) -> None:
    """What ``exiftool -P``, ``rsync --inplace -t`` or ``cp -p`` onto an existing file do: the
    same file (inode), new bytes of the same size, the old mtime put back."""
    st = os.stat(path)
    assert len(content) == st.st_size
    with open(path, "r+b") as fh:
        fh.write(content)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    after = os.stat(path)
    assert (after.st_ino, after.st_size, after.st_mtime_ns) == (st.st_ino, st.st_size,
                                                                st.st_mtime_ns)


def test_a_file_rewritten_in_place_with_the_same_size_and_mtime_is_hashed_again(
        files: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Size, mtime, inode and device stay; ctime moves (no program can set it back)."""
    cache = tmp_path / "cache"
    assert file_digests(files, cache)[1] == hashlib.sha256(bytes([1]) * 1000).digest()
    time.sleep(0.05)  # past the clock tick of the first write
    _rewrite_in_place(files[1], b"\x07" * 1000)
    new = hashlib.sha256(b"\x07" * 1000).digest()
    assert file_digests(files, cache)[1] == new  # this process's memo
    hashed = _new_process(monkeypatch)
    assert file_digests(files, cache)[1] == new  # the index, in a later process
    assert hashed == []  # ... which remembered the new digest


def test_a_file_changed_within_the_racy_window_is_never_trusted(
        files: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A change within the same clock tick can keep the whole stat, ctime included: a file whose
    mtime or ctime is recent is hashed on every call and kept out of the index."""
    monkeypatch.setattr(_digests, "_RACY_S", 3.0)
    cache = tmp_path / "cache"
    old = file_digests(files, cache)  # mtime old, ctime just now (the fixture's utime)
    assert not (cache / INDEX_FILE).exists()
    for i, content in enumerate((b"\x08" * 1000, b"\x09" * 1000)):
        _rewrite_in_place(files[i], content)  # no pause: possibly the same ctime tick
    now = file_digests(files, cache)
    assert now[:2] == [hashlib.sha256(b"\x08" * 1000).digest(),
                       hashlib.sha256(b"\x09" * 1000).digest()]
    assert now[2:] == old[2:]
    future = tmp_path / "future.bin"  # a clock set back: a file from the future is never settled
    future.write_bytes(b"f")
    os.utime(future, (time.time() + 3600, time.time() + 3600))
    file_digests([str(future)], cache)
    assert not (cache / INDEX_FILE).exists()


def test_extracted_features_follow_an_in_place_rewrite(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """End to end: a BMP rewritten in place, same size and mtime, gets its new features."""
    from PIL import Image

    from graftwork.data.discover import Sample
    from graftwork.features.open import open_features

    monkeypatch.setattr(_digests, "_RACY_S", 3.0)
    path = tmp_path / "img.bmp"
    Image.new("RGB", (24, 24), (250, 10, 10)).save(path)
    os.utime(path, (1_600_000_000, 1_600_000_000))
    source = open_features("test_efficientnet", "random", 32, tmp_path / "cache")
    first = source.extract([Sample(str(path), 0)], num_workers=0).features.clone()
    rewritten = tmp_path / "other.bmp"
    Image.new("RGB", (24, 24), (10, 10, 250)).save(rewritten)
    _rewrite_in_place(str(path), rewritten.read_bytes())
    again = source.extract([Sample(str(path), 0)], num_workers=0)
    assert again.extracted == 1
    assert not torch.allclose(first, again.features)
