"""Feature extraction on Ray Data: the backbone in actors, the cache written by the driver.

``ray.data.from_items(rows).map_batches(BackboneActor, concurrency=N, batch_size=B)``: each
actor builds the network once (its constructor), then decodes and runs its batches and returns
``(digest, feature)`` rows; the driver writes them into the content-addressed cache as shards.
A local Ray (``ray.init(num_cpus=...)``) or a cluster (``address="ray://host:10001"`` or
``"auto"``) — the images' paths must be readable by the actors (a shared file system).
Needs ``pip install 'graftwork[ray]'``.
"""
from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from graftwork.data.digests import file_digests
from graftwork.data.images import ImageDataset, collate_skip
from graftwork.data.discover import Sample, Skipped
from graftwork.data.preprocess import Preprocessing
from graftwork.errors import ConfigError
from graftwork.features.cache import SHARD_ROWS, FeatureCache
from graftwork.features.decode import FastEvalTransform
from graftwork.features.pipeline import ExtractResult, bind_backbone

__all__ = ["BackboneActor", "ray_extract"]

log = logging.getLogger(__name__)


class BackboneActor:
    """A Ray Data actor: the frozen backbone bound to an engine once, then batches of
    ``{"path", "digest"}`` -> ``{"digest", "features", "reason"}`` (reason "" when decoded)."""

    def __init__(self, backbone: Any, preprocessing: Preprocessing, store: str,
                 engine: str = "auto") -> None:
        torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1") or 1)))
        self.pre = preprocessing
        self.backbone = backbone.eval()
        if not os.access(store, os.W_OK):  # a cluster node without the driver's cache folder
            store = tempfile.mkdtemp(prefix="graftwork-ray-")
        holder = type("Store", (), {"dir": Path(store)})()
        self.run = bind_backbone(self.backbone, preprocessing, holder, engine, None)
        self.dim = backbone.feature_dim
        self.transform = FastEvalTransform(preprocessing)
        self.draft = preprocessing.resize_size

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        paths = [str(p) for p in batch["path"]]
        data = ImageDataset([Sample(p, 0) for p in paths], self.transform, self.draft)
        items = collate_skip([data[i] for i in range(len(paths))])
        feats = np.zeros((len(paths), self.dim), dtype=np.float32)
        reasons = np.array([""] * len(paths), dtype=object)
        if len(items["indices"]):
            with torch.inference_mode():
                out = self.run(items["images"]).float().numpy()
            feats[items["indices"].numpy()] = out
        for i, reason in items["failures"]:
            reasons[i] = reason or "cannot decode"
        return {"digest": batch["digest"], "features": feats, "reason": reasons}


def _init_ray(address: str | None, workers: int) -> Any:
    try:
        import ray
    except ImportError:
        raise ConfigError("--engine ray needs Ray", "pip install 'graftwork[ray]'") from None
    if not ray.is_initialized():
        quiet = {"log_to_driver": False, "logging_level": logging.WARNING}
        if address:
            ray.init(address=address, **quiet)
        else:
            ray.init(num_cpus=max(2, workers), include_dashboard=False, **quiet)
    ray.data.DataContext.get_current().enable_progress_bars = False  # our log line says it
    logging.getLogger("ray.data").setLevel(max(logging.WARNING, log.getEffectiveLevel()))
    return ray


def ray_extract(backbone: Any, samples: Sequence[Sample], preprocessing: Preprocessing,
                cache_root: str | Path, *, batch_size: int = 64, workers: int | None = None,
                address: str | None = None, engine: str = "auto") -> ExtractResult:
    """Fill the cache with the features of ``samples`` not cached yet, on ``workers`` Ray actors
    (default: one per CPU of a local Ray, 2 at least). Returns no features (``materialize=False``
    as in :func:`~graftwork.features.extract_features`)."""
    start = time.perf_counter()
    root = Path(cache_root)
    cache = FeatureCache(root, backbone, preprocessing)
    digests = file_digests([s.path for s in samples], root)
    skipped = [Skipped(s.path, "cannot read file") for s, d in zip(samples, digests) if d is None]
    index = cache.index()
    first: dict[bytes, str] = {}
    for s, d in zip(samples, digests):
        if d is not None and d not in index:
            first.setdefault(d, s.path)
    failed: dict[bytes, str] = {}
    if first:
        n = workers or max(2, (os.cpu_count() or 2) // 2)
        ray = _init_ray(address, n)
        cache.dir.mkdir(parents=True, exist_ok=True)
        rows = [{"path": p, "digest": d.hex()} for d, p in first.items()]
        try:  # a pool of n actors (`concurrency=n` before Ray 2.51)
            pool: dict[str, Any] = {"compute": ray.data.ActorPoolStrategy(size=n)}
        except TypeError:
            pool = {"concurrency": n}
        ds = ray.data.from_items(rows).map_batches(
            BackboneActor, fn_constructor_args=(backbone, preprocessing, str(cache.dir), engine),
            batch_size=batch_size, batch_format="numpy", num_cpus=1, **pool)
        feats: list[np.ndarray] = []
        keys: list[bytes] = []
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            ok = batch["reason"] == ""
            for d, r in zip(batch["digest"][~ok], batch["reason"][~ok]):
                failed[bytes.fromhex(str(d))] = str(r)
            feats.append(batch["features"][ok])
            keys += [bytes.fromhex(str(d)) for d in batch["digest"][ok]]
            if len(keys) >= SHARD_ROWS:
                cache.write_shard(torch.from_numpy(np.concatenate(feats)), keys)
                feats, keys = [], []
        if keys:
            cache.write_shard(torch.from_numpy(np.concatenate(feats)), keys)
    skipped += [Skipped(s.path, failed[d]) for s, d in zip(samples, digests) if d in failed]
    index = cache.index()
    ok_mask = torch.tensor([d is not None and d in index for d in digests], dtype=torch.bool)
    result = ExtractResult(None, ok_mask, skipped, len(first) - len(failed),
                           len(samples) - len(first), time.perf_counter() - start,
                           "ray" if first else "")
    log.info("extract (ray): %d images, %d from cache, %d extracted, %d skipped in %.1fs",
             len(samples), result.cached, result.extracted, len(skipped), result.seconds)
    return result
