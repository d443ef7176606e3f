"""Filling the feature cache for a whole image folder, or one shard of it (``graft extract``).

Shard ``i`` of ``n`` takes every ``n``-th image of the folder's files sorted by path: shards are
disjoint, cover every file, and need no coordination; any number of processes (a SLURM array,
torchrun ranks, machines sharing a file system) fill one cache at once (see
:mod:`graftwork.features.cache` and :mod:`graftwork._digests` for why that is safe).
"""
from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path

from graftwork.data.discover import Sample, discover
from graftwork.errors import ConfigError
from graftwork.features.engines import Engine, create_engine
from graftwork.features.pipeline import ExtractResult

__all__ = ["extract_folder", "shard_samples", "shard_from_env", "parse_shard"]

log = logging.getLogger(__name__)

_ENV_PAIRS = (("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT"), ("RANK", "WORLD_SIZE"))


def parse_shard(value: str) -> tuple[int, int]:
    """``"i/n"`` -> (i, n), 0 <= i < n; ConfigError otherwise."""
    try:
        i, n = (int(v) for v in value.split("/"))
    except ValueError:
        raise ConfigError(f"--shard {value!r} is not of the form i/N",
                          "pass e.g. --shard 0/4 (shards 0 to 3 of 4)") from None
    if n < 1 or not 0 <= i < n:
        raise ConfigError(f"--shard {value!r}: i must be in 0..N-1 and N at least 1",
                          "pass e.g. --shard 0/4 (shards 0 to 3 of 4)")
    return i, n


def shard_from_env(env: Mapping[str, str] | None = None) -> tuple[int, int]:
    """(i, n) from a SLURM array (``SLURM_ARRAY_TASK_ID``/``SLURM_ARRAY_TASK_COUNT``, IDs
    offset by ``SLURM_ARRAY_TASK_MIN``) or torchrun (``RANK``/``WORLD_SIZE``); (0, 1) if none."""
    env = os.environ if env is None else env
    for id_var, count_var in _ENV_PAIRS:
        if env.get(id_var, "").strip() and env.get(count_var, "").strip():
            first = int(env.get("SLURM_ARRAY_TASK_MIN", "0") or 0) if id_var.startswith(
                "SLURM") else 0
            return parse_shard(f"{int(env[id_var]) - first}/{int(env[count_var])}")
    return 0, 1


def shard_samples(samples: Sequence[Sample], shard: tuple[int, int]) -> list[Sample]:
    """Shard ``i`` of ``n``: every ``n``-th distinct file by sorted path, starting at ``i``."""
    i, n = shard
    by_path = {s.path: s for s in samples}
    return [by_path[p] for p in sorted(by_path)[i::n]]


def _with_address(engine: str | Engine | None, address: str) -> str | Engine | None:
    """``engine`` with the cluster ``address`` if it has that setting (Ray's), else as given."""
    resolved = create_engine(engine)
    return replace(resolved, address=address) if hasattr(resolved, "address") else engine


def extract_folder(data: str | Path, backbone: str = "efficientnet_lite0",
                   weights: str | None = None, image_size: int | None = None,
                   cache_dir: str | Path | None = None, *,
                   shard: tuple[int, int] | None = None, engine: str | Engine | None = None,
                   batch_size: int = 64, num_workers: int | None = None,
                   progress: bool = False, address: str | None = None,
                   seed: int = 0) -> ExtractResult:
    """Extract (only into the cache) the features of every image of ``data`` (all splits), or of
    shard ``(i, n)`` of them (default :func:`shard_from_env`). ``graft train`` on the same data,
    backbone, weights and image size then reads them from the cache. ``engine="ray"`` runs the
    backbone in Ray actors (``address`` of a cluster, default a local one; engines without an
    ``address`` setting ignore it). ``seed`` seeds as ``graft train --seed`` does:
    ``weights="random"`` then gives the same network (cache key)."""
    from graftwork.features.open import open_features
    from graftwork.training.loop import seed_everything

    shard = shard_from_env() if shard is None else parse_shard(f"{shard[0]}/{shard[1]}")
    seed_everything(seed)  # as fitting does before building the backbone
    splits = discover(data, seed=seed)
    mine = shard_samples([*splits.train, *splits.val, *splits.test], shard)
    source = open_features(backbone, weights, image_size, cache_dir)
    log.info("shard %d/%d: %d of %d images", shard[0], shard[1], len(mine),
             len(splits.train) + len(splits.val) + len(splits.test))
    if address is not None:
        engine = _with_address(engine, address)
    return source.extract(mine, batch_size=batch_size, num_workers=num_workers,
                          progress=progress, materialize=False,
                          desc=f"extract {shard[0]}/{shard[1]}", engine=engine)
