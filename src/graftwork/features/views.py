"""Augmented views of images as cached backbone features.

A view is an image transformed by a recipe (the training augmentation, or a horizontal flip for
test-time augmentation), then resized and cropped like extraction does, run once through the
frozen backbone. Its features are cached under a derived digest,
``sha256(file digest + recipe JSON + view index)``, in the same shards as the images' own, so a
re-run extracts nothing. The random augmentation of view ``v`` of an image is seeded by that
digest: the same image always gets the same views.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from graftwork.data.digests import file_digests
from graftwork.data.transforms import AugmentConfig, augment_ops
from graftwork.data.images import ImageDataset
from graftwork.data.discover import Sample, Skipped
from graftwork.data.preprocess import Preprocessing
from graftwork.features.cache import FeatureCache
from graftwork.features.decode import FastEvalTransform
from graftwork.features.pipeline import ExtractResult, _run_extraction

__all__ = ["HFLIP", "augment_recipe", "view_digest", "ViewDataset", "extract_views"]

log = logging.getLogger(__name__)

#: The test-time-augmentation view: the image mirrored left-right.
HFLIP: dict[str, Any] = {"view": "hflip"}


def augment_recipe(aug: AugmentConfig | None, policy: str) -> dict[str, Any]:
    """The recipe of training-augmentation views (what their cache keys depend on)."""
    return {"view": "augment", "policy": policy, "augment": aug.as_dict() if aug else None}


def view_digest(digest: bytes, recipe: dict[str, Any], index: int) -> bytes:
    """The 32-byte cache key of view ``index`` of the image whose file digest is ``digest``."""
    text = json.dumps(recipe, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(digest + text.encode() + f"/{index}".encode()).digest()


def _ops(recipe: dict[str, Any]) -> list[Any]:
    from torchvision.transforms import v2

    if recipe["view"] == "hflip":
        return [v2.RandomHorizontalFlip(p=1.0)]
    aug = AugmentConfig(**recipe["augment"]) if recipe["augment"] else None
    return augment_ops(aug, recipe["policy"])


class ViewDataset(ImageDataset):
    """Views of samples as uint8 HWC tensors; item ``i``'s randomness is seeded by ``seeds[i]``
    (the global torch generator is left as it was)."""

    def __init__(self, samples: Sequence[Sample], seeds: Sequence[int], recipe: dict[str, Any],
                 pre: Preprocessing) -> None:
        from torchvision.transforms import v2

        super().__init__(samples, v2.Compose([*_ops(recipe), FastEvalTransform(pre)]),
                         draft_size=pre.resize_size)
        self.seeds = list(seeds)

    def __getitem__(self, index: int) -> tuple[Any, ...]:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seeds[index])
            return super().__getitem__(index)


def extract_views(backbone: Any, samples: Sequence[Sample], preprocessing: Preprocessing,
                  cache_root: Path, recipe: dict[str, Any], views: int, desc: str, *,
                  batch_size: int = 64, num_workers: int | None = None, progress: bool = False,
                  engine: Any = None) -> ExtractResult:
    """Features of ``views`` views of every sample (rows view-major: all samples' view 0, then
    view 1, ...), from the cache in ``cache_root`` where possible; ``ok`` marks the usable
    rows. ``backbone`` is a network or its prepared record (built only to extract)."""
    start = time.perf_counter()
    pre = preprocessing
    cache = FeatureCache(cache_root, backbone, pre)
    digests = file_digests([s.path for s in samples], cache_root)
    keys = [view_digest(d, recipe, v) if d is not None else None
            for v in range(views) for d in digests]
    items = [s for _ in range(views) for s in samples]
    index = cache.index()
    first: dict[bytes, int] = {}
    for i, k in enumerate(keys):
        if k is not None and k not in index:
            first.setdefault(k, i)
    todo = list(first.values())
    skipped: list[Skipped] = []
    if todo:
        net = backbone.module() if hasattr(backbone, "module") else backbone
        chosen = [items[i] for i in todo]
        dataset = ViewDataset(chosen, [int.from_bytes(keys[i][:7], "little") for i in todo],  # type: ignore[index]
                              recipe, pre)
        bad, _ = _run_extraction(net, cache, chosen, [keys[i] for i in todo], pre, batch_size,
                                 num_workers, progress, desc, engine, dataset=dataset)
        skipped = [Skipped(chosen[i].path, r) for i, r in bad]
    features, ok = cache.gather(keys)
    result = ExtractResult(features, ok, skipped, len(todo) - len(skipped),
                           len(keys) - len(todo), time.perf_counter() - start)
    log.info("%s: %d views, %d from cache, %d extracted", desc, len(keys), result.cached,
             result.extracted)
    return result
