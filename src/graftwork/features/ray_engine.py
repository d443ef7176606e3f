"""The ``"ray"`` engine: the backbone in Ray Data actors, the cache written by the driver.

``RayEngine`` (registered in ``ENGINES`` as "ray") fills the cache itself:
``ray.data.from_items(rows).map_batches(BackboneActor, compute=ActorPoolStrategy(size=N),
batch_size=B)``: each actor builds the network once (its constructor), then decodes and runs
its batches and returns ``(digest, feature)`` rows; the driver writes them into the
content-addressed cache as shards. A local Ray (``ray.init(num_cpus=...)``) or a cluster
(``address="ray://host:10001"`` or ``"auto"``) — the images' paths must be readable by the
actors (a shared file system). ``ray`` is imported only when the engine runs: ``pip install
'graftwork[ray]'``.
"""
from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from graftwork.data.discover import Sample
from graftwork.data.images import ImageDataset, collate_skip
from graftwork.data.preprocess import Preprocessing
from graftwork.errors import ConfigError
from graftwork.features.cache import SHARD_ROWS, FeatureCache
from graftwork.features.decode import FastEvalTransform
from graftwork.features.engines import ENGINES, Engine, Runner, create_engine
from graftwork.features.pipeline import bind_backbone

__all__ = ["RayEngine", "BackboneActor"]

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


@dataclass(frozen=True)
class RayEngine(Engine):
    """The backbone in ``workers`` Ray actors (default: one per CPU of a local Ray, 2 at least;
    ``address`` of a cluster, default a local Ray), each running it on ``actor_engine``.

    It fills the feature cache itself (:meth:`fill_cache`, which
    :func:`~graftwork.features.extract_features` uses for any engine that has it); where a
    network must run in this process (:meth:`bind`), it runs on ``actor_engine`` here.
    """

    name: ClassVar[str] = "ray"
    address: str | None = None
    workers: int | None = None
    actor_engine: str = "auto"

    def bind(self, module: nn.Module, example: torch.Tensor, store: Path | None = None,
             key: str = "", images: int | None = None) -> Runner:
        return create_engine(self.actor_engine).bind(module, example, store, key, images)

    def fill_cache(self, backbone: Any, cache: FeatureCache, samples: Sequence[Sample],
                   digests: Sequence[bytes], preprocessing: Preprocessing, *,
                   batch_size: int = 64, workers: int | None = None
                   ) -> tuple[list[tuple[int, str]], str]:
        """Write the features of ``samples`` (distinct ``digests``, none cached yet) into
        ``cache`` from the actors' results; returns the failures as (position, reason) and
        ``"ray"`` (``""`` when there was nothing to do)."""
        if not samples:
            return [], ""
        n = self.workers or workers or max(2, (os.cpu_count() or 2) // 2)
        ray = _init_ray(self.address, n)
        cache.dir.mkdir(parents=True, exist_ok=True)
        rows = [{"path": s.path, "digest": d.hex()} for s, d in zip(samples, digests)]
        try:  # a pool of n actors (`concurrency=n` before Ray 2.51)
            pool: dict[str, Any] = {"compute": ray.data.ActorPoolStrategy(size=n)}
        except TypeError:
            pool = {"concurrency": n}
        ds = ray.data.from_items(rows).map_batches(
            BackboneActor, fn_constructor_args=(backbone, preprocessing, str(cache.dir),
                                                self.actor_engine),
            batch_size=batch_size, batch_format="numpy", num_cpus=1, **pool)
        position = {d: i for i, d in enumerate(digests)}
        failed: list[tuple[int, str]] = []
        feats: list[np.ndarray] = []
        keys: list[bytes] = []
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            ok = batch["reason"] == ""
            failed += [(position[bytes.fromhex(str(d))], str(r))
                       for d, r in zip(batch["digest"][~ok], batch["reason"][~ok])]
            feats.append(batch["features"][ok])
            keys += [bytes.fromhex(str(d)) for d in batch["digest"][ok]]
            if len(keys) >= SHARD_ROWS:
                cache.write_shard(torch.from_numpy(np.concatenate(feats)), keys)
                feats, keys = [], []
        if keys:
            cache.write_shard(torch.from_numpy(np.concatenate(feats)), keys)
        return sorted(failed), self.name


ENGINES.register(RayEngine.name, RayEngine)  # a plug-in: one line
