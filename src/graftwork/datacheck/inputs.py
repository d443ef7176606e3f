"""What every data check reads, gathered once: the images of DATA (all splits, paths relative to
DATA), their labels and splits, backbone features through the feature cache
(:func:`graftwork.features.open_features`: a cached re-run builds no network), file digests, and
pixel facts from one decode pass (a digest of the decoded pixels, a 32x32 grayscale thumbnail,
size, mode) kept in the cache too, keyed by file digest. Shared neighbour searches
(:mod:`~.neighbours`) are computed on first use (:meth:`AuditInputs.neighbours`), as
cleanlab's Datalab shares one k-NN graph.
"""
from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from graftwork.data.digests import file_digests
from graftwork.data.discover import Sample, Skipped, discover
from graftwork.data.images import load_image
from graftwork.datacheck.neighbours import EXACT_UP_TO, knn, unit
from graftwork.errors import BadImageError, DataError
from graftwork.features.open import open_features
from graftwork.rundir.files import atomic_file

__all__ = ["AuditInputs", "gather", "knn", "unit", "THUMB"]

log = logging.getLogger(__name__)

THUMB = 32  # side of the grayscale thumbnails the duplicate check compares
_GRAY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"})
_PIXELS_DIR = "audit-pixels-v1"


@dataclass
class AuditInputs:
    """The shared inputs of the checks; row ``i`` of every array is image ``paths[i]``."""

    data: Path
    paths: list[str]  # relative to DATA
    labels: np.ndarray  # (n,) class index
    splits: np.ndarray  # (n,) "train" | "val" | "test"
    classes: list[str]
    features: np.ndarray  # (n, d) float32 pooled backbone features
    file_digests: list[bytes]
    pixel_digests: list[bytes]
    thumbs: np.ndarray  # (n, THUMB, THUMB) uint8 grayscale, area-averaged
    sizes: np.ndarray  # (n, 2) width, height
    gray: np.ndarray  # (n,) bool: stored or decoded without colour
    # (n, c) pooled output of the backbone's mid layer (spec.mid_layer), None without one
    mid_features: np.ndarray | None = None
    skipped: list[Skipped] = field(default_factory=list)  # files no check could use
    seconds: dict[str, float] = field(default_factory=dict)
    exact_up_to: int = EXACT_UP_TO  # rows up to which neighbour searches are exact
    _knn: dict[int, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict, repr=False)

    def neighbours(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(cosine similarities, indices) of each image's ``k`` nearest others in feature
        space, nearest first: searched once, and a smaller ``k`` is read off a wider search
        already made (on a backbone without a mid layer the label check's 20 serve the
        duplicate and outlier checks' 10; with one, the label check searches its own rows)."""
        if k not in self._knn:
            wider = min((w for w in self._knn if w > k), default=None)
            self._knn[k] = (tuple(a[:, :k] for a in self._knn[wider])  # type: ignore[assignment]
                            if wider is not None
                            else knn(unit(self.features), k, exact_up_to=self.exact_up_to))
        return self._knn[k]


# ------------------------------------------------------------------------- pixel facts
def _pixel_facts(path: str) -> tuple[bytes, np.ndarray, tuple[int, int], bool] | str:
    """(pixel digest, thumbnail, (width, height), grayscale) or the reason it failed."""
    try:
        with Image.open(path) as img:
            mode = img.mode
        rgb = load_image(path)
    except (BadImageError, OSError) as exc:
        return str(getattr(exc, "message", exc))
    arr = np.asarray(rgb)
    h = hashlib.sha256(np.array(arr.shape, np.int64).tobytes())
    h.update(arr.tobytes())
    small = np.asarray(rgb.resize((THUMB, THUMB), Image.Resampling.BOX), dtype=np.int16)
    gray = mode in _GRAY_MODES or int(np.abs(np.diff(small, axis=2)).max()) <= 2
    thumb = np.asarray(rgb.convert("L").resize((THUMB, THUMB), Image.Resampling.BOX),
                       dtype=np.uint8)
    return h.digest(), thumb, rgb.size, gray


class _PixelStore:
    """Pixel facts by file digest, in npz shards under ``CACHE/audit-pixels-v1``."""

    def __init__(self, root: Path) -> None:
        self.dir = root / _PIXELS_DIR
        self.rows: dict[bytes, tuple[bytes, np.ndarray, tuple[int, int], bool]] = {}
        try:
            shards = sorted(self.dir.glob("shard-*.npz"))
        except OSError:
            shards = []
        for shard in shards:
            try:
                with np.load(shard) as z:
                    for d, p, t, s, g in zip(z["digests"], z["pixels"], z["thumbs"], z["sizes"],
                                             z["gray"]):
                        self.rows[d.tobytes()] = (p.tobytes(), t, (int(s[0]), int(s[1])),
                                                  bool(g))
            except (OSError, ValueError, KeyError) as exc:
                log.warning("audit pixel cache %s unreadable (%s): recomputing", shard.name, exc)

    def add(self, new: dict[bytes, tuple[bytes, np.ndarray, tuple[int, int], bool]]) -> None:
        if not new:
            return
        self.rows.update(new)
        keys = list(new)
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            path = self.dir / f"shard-{time.time_ns()}-{os.getpid()}.npz"
            with atomic_file(path) as tmp, open(tmp, "xb") as fh:
                np.savez(fh, digests=np.frombuffer(b"".join(keys), np.uint8).reshape(-1, 32),
                         pixels=np.frombuffer(b"".join(new[k][0] for k in keys),
                                              np.uint8).reshape(-1, 32),
                         thumbs=np.stack([new[k][1] for k in keys]),
                         sizes=np.array([new[k][2] for k in keys], np.int32),
                         gray=np.array([new[k][3] for k in keys], bool))
        except OSError as exc:  # a read-only cache only costs decoding again next time
            log.warning("audit pixel cache %s cannot be written (%s)", self.dir, exc)


def _pixels(paths: Sequence[str], digests: Sequence[bytes | None], root: Path, workers: int
            ) -> tuple[dict[int, tuple[bytes, np.ndarray, tuple[int, int], bool]], dict[int, str]]:
    store = _PixelStore(root)
    todo = [i for i, d in enumerate(digests) if d is not None and d not in store.rows]
    with ThreadPoolExecutor(max(1, workers)) as pool:  # PIL decodes without the GIL
        done = list(pool.map(_pixel_facts, [paths[i] for i in todo], chunksize=32))
    failed = {i: r for i, r in zip(todo, done) if isinstance(r, str)}
    store.add({digests[i]: r for i, r in zip(todo, done)  # type: ignore[misc]
               if not isinstance(r, str)})
    facts = {i: store.rows[d] for i, d in enumerate(digests)
             if d is not None and d in store.rows}
    return facts, failed


# ------------------------------------------------------------------------- gathering
def gather(data: str | Path, *, backbone: str = "efficientnet_lite0", weights: str | None = None,
           image_size: int | None = None, cache_dir: str | Path | None = None,
           num_workers: int | None = None, progress: bool = False, seed: int = 0) -> AuditInputs:
    """Everything the checks read about DATA; ``DataError`` when nothing can be audited.
    DATA is only read. ``seed`` seeds as ``graft train --seed`` does (``weights="random"``
    then gives the same network, and so the same cached features)."""
    from graftwork.training.loop import seed_everything

    t0 = time.perf_counter()
    seed_everything(seed)
    root = Path(data)
    splits = discover(root, val_fraction=0.0, test_fraction=0.0)
    samples: list[Sample] = []
    names: list[str] = []
    for name in ("train", "val", "test"):
        for s in getattr(splits, name):
            samples.append(s)
            names.append(name)
    source = open_features(backbone, weights, image_size, cache_dir)
    # one pass gives the final features and the mid layer's (cached apart from training's)
    wide = source.with_mid_layer()
    res = (wide or source).extract(samples, num_workers=num_workers, progress=progress,
                                   desc="features audit")
    t1 = time.perf_counter()
    paths = [s.path for s in samples]
    digests = file_digests(paths, source.root)
    facts, failed = _pixels(paths, digests, source.root, os.cpu_count() or 2)
    t2 = time.perf_counter()
    skipped = list(splits.skipped) + [Skipped(s.path, r) for s, r in
                                      ((samples[i], r) for i, r in failed.items())]
    bad = {s.path for s in skipped}
    keep = [i for i, s in enumerate(samples)
            if bool(res.ok[i]) and i in facts and s.path not in bad]
    skipped += [Skipped(samples[i].path, "cannot be decoded") for i in range(len(samples))
                if i not in keep and samples[i].path not in bad]
    if not keep:
        raise DataError(f"no image of {str(root)!r} could be decoded ({len(samples)} files)",
                        "check the files: the reasons are listed with --json under summary")
    rows = np.asarray(res.features[keep].numpy(), dtype=np.float32)  # type: ignore[index]
    final = source.backbone.feature_dim
    features, mid = (rows[:, :final], rows[:, final:]) if wide is not None else (rows, None)
    return AuditInputs(
        data=root, paths=[os.path.relpath(paths[i], root) for i in keep],
        labels=np.array([samples[i].label for i in keep]), splits=np.array([names[i] for i in keep]),
        classes=list(splits.classes), features=np.ascontiguousarray(features),
        mid_features=None if mid is None else np.ascontiguousarray(mid),
        file_digests=[digests[i] for i in keep],  # type: ignore[misc]
        pixel_digests=[facts[i][0] for i in keep],
        thumbs=np.stack([facts[i][1] for i in keep]).astype(np.uint8, copy=False),
        sizes=np.array([facts[i][2] for i in keep], np.int64),
        gray=np.array([facts[i][3] for i in keep], bool),
        skipped=[Skipped(os.path.relpath(s.path, root), s.reason) for s in skipped],
        seconds={"features": round(t1 - t0, 2), "pixels": round(t2 - t1, 2)})
