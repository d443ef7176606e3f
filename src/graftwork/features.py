"""Feature extraction with an on-disk cache.

Features are stored in safetensors shards under ``cache_root/<model key>/``, where the model key
hashes (backbone, weights digest, preprocessing, image size) and each row is keyed by the sha256
of the image file's bytes. Re-running with another head or more epochs never re-extracts.
Shards are written atomically (temp file + rename) and carry a checksum checked on load; a bad
shard is deleted and its images extracted again.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from graftwork.backbones import Backbone
from graftwork.data import ImageDataset, Sample, Skipped, collate_skip, eval_transform
from graftwork.errors import BadImageError

__all__ = ["FeatureCache", "ExtractResult", "extract_features", "file_digest",
           "default_cache_dir", "default_workers"]

log = logging.getLogger(__name__)
_SHARD_ROWS = 2048


def default_cache_dir() -> Path:
    """``$GRAFT_CACHE_DIR`` or ``~/.cache/graftwork``."""
    env = os.environ.get("GRAFT_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "graftwork"


def default_workers() -> int:
    """DataLoader workers: decode in parallel but leave the cores to the forward pass."""
    return max(1, min(4, (os.cpu_count() or 1) - 1))


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


def _checksum(features: torch.Tensor, digests: torch.Tensor) -> str:
    h = hashlib.sha256(features.contiguous().numpy().tobytes())
    h.update(digests.contiguous().numpy().tobytes())
    return h.hexdigest()


class FeatureCache:
    """The shards of one (backbone, weights, preprocessing) combination."""

    def __init__(self, root: str | Path, backbone: Backbone, preprocessing: dict[str, Any]) -> None:
        key = json.dumps({"backbone": backbone.spec.name, "arch": backbone.spec.arch,
                          "weights": backbone.weights.digest, "pre": preprocessing},
                         sort_keys=True)
        self.key = hashlib.sha256(key.encode()).hexdigest()[:20]
        self.dir = Path(root) / "features" / self.key
        self.dim = backbone.feature_dim
        self._index: dict[bytes, tuple[Path, int]] | None = None
        self._loaded: dict[Path, torch.Tensor] = {}

    def _read_shard(self, path: Path) -> tuple[torch.Tensor, torch.Tensor] | None:
        try:
            tensors = load_file(str(path))
            from safetensors import safe_open

            with safe_open(str(path), "pt") as fh:
                meta = fh.metadata() or {}
            feats, digests = tensors["features"], tensors["digests"]
            if meta.get("checksum") != _checksum(feats, digests) or feats.shape[1] != self.dim:
                raise ValueError("checksum mismatch")
            return feats, digests
        except (SafetensorError, ValueError, KeyError, OSError, RuntimeError) as exc:
            log.warning("feature cache shard %s is corrupt (%s): deleting it, will re-extract",
                        path.name, exc)
            path.unlink(missing_ok=True)
            return None

    def index(self) -> dict[bytes, tuple[Path, int]]:
        """digest -> (shard, row) for every verified shard."""
        if self._index is None:
            self._index = {}
            for path in sorted(self.dir.glob("shard-*.safetensors")):
                shard = self._read_shard(path)
                if shard is None:
                    continue
                for row, d in enumerate(shard[1]):
                    self._index[bytes(d.tolist())] = (path, row)
        return self._index

    def get(self, digest: bytes) -> torch.Tensor | None:
        hit = self.index().get(digest)
        if hit is None:
            return None
        path, row = hit
        if path not in self._loaded:
            self._loaded[path] = load_file(str(path))["features"]
        return self._loaded[path][row]

    def write_shard(self, features: torch.Tensor, digests: list[bytes]) -> Path:
        """Write one shard atomically and add it to the index."""
        self.dir.mkdir(parents=True, exist_ok=True)
        feats = features.detach().to(torch.float32).contiguous()
        dig = torch.tensor([list(d) for d in digests], dtype=torch.uint8)
        fd, tmp = tempfile.mkstemp(dir=self.dir, suffix=".tmp")
        os.close(fd)
        try:
            save_file({"features": feats, "digests": dig}, tmp,
                      metadata={"checksum": _checksum(feats, dig)})
            path = self.dir / f"shard-{time.time_ns()}-{os.getpid()}.safetensors"
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        index = self.index()
        for row, d in enumerate(digests):
            index[d] = (path, row)
        return path


@dataclass
class ExtractResult:
    """Features of every sample (zeros where ``ok`` is False) and what happened."""

    features: torch.Tensor | None
    ok: torch.Tensor
    skipped: list[Skipped] = field(default_factory=list)
    extracted: int = 0
    cached: int = 0
    seconds: float = 0.0


def _hash_all(samples: Sequence[Sample]) -> list[bytes | None]:
    with ThreadPoolExecutor(max_workers=4) as pool:
        return list(pool.map(file_digest, (s.path for s in samples), chunksize=64))


def extract_features(backbone: Backbone, samples: Sequence[Sample], preprocessing: dict[str, Any],
                     cache_root: str | Path | None = None, *, batch_size: int = 64,
                     num_workers: int | None = None, progress: bool = True, strict: bool = False,
                     materialize: bool = True, desc: str = "extract") -> ExtractResult:
    """Features of ``samples``, from the cache where possible, extracting (and caching) the rest.

    ``materialize=False`` only fills the cache (memory stays flat for any number of images).
    """
    start = time.perf_counter()
    cache = FeatureCache(cache_root or default_cache_dir(), backbone, preprocessing)
    digests = _hash_all(samples)
    skipped = [Skipped(s.path, "cannot read file") for s, d in zip(samples, digests) if d is None]
    if skipped and strict:
        raise BadImageError(f"{skipped[0].path}: {skipped[0].reason}", "fix or remove the file")
    index = cache.index()
    first: dict[bytes, int] = {}  # one extraction per distinct file content
    for i, d in enumerate(digests):
        if d is not None and d not in index:
            first.setdefault(d, i)
    todo = list(first.values())
    bad = _run_extraction(backbone, cache, [samples[i] for i in todo], [digests[i] for i in todo],
                          preprocessing, batch_size, num_workers, progress, desc)
    if bad and strict:
        raise BadImageError(f"{bad[0].path}: {bad[0].reason}",
                            "fix or remove the file, or run without --strict")
    skipped += bad
    ok = torch.tensor([d is not None and d in cache.index() for d in digests], dtype=torch.bool)
    features = None
    if materialize:
        features = torch.zeros(len(samples), backbone.feature_dim)
        for i, d in enumerate(digests):
            if ok[i]:
                features[i] = cache.get(d)  # type: ignore[arg-type]
    result = ExtractResult(features, ok, skipped, len(todo) - len(bad), len(samples) - len(todo),
                           time.perf_counter() - start)
    log.info("%s: %d images, %d from cache, %d extracted, %d skipped in %.1fs", desc,
             len(samples), result.cached, result.extracted, len(skipped), result.seconds)
    return result


def _run_extraction(backbone: Backbone, cache: FeatureCache, samples: list[Sample],
                    digests: list[bytes | None], preprocessing: dict[str, Any], batch_size: int,
                    num_workers: int | None, progress: bool, desc: str) -> list[Skipped]:
    """Extract features of ``samples`` in batches, writing shards as they fill up."""
    if not samples:
        return []
    workers = default_workers() if num_workers is None else num_workers
    dataset = ImageDataset(samples, eval_transform(preprocessing),
                           draft_size=int(preprocessing["image_size"]))
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=workers,
                                         collate_fn=collate_skip,
                                         persistent_workers=False,
                                         prefetch_factor=4 if workers else None)
    was_training = backbone.training
    backbone.eval()
    backbone.to(memory_format=torch.channels_last)
    bad: list[Skipped] = []
    buf_feats: list[torch.Tensor] = []
    buf_digests: list[bytes] = []
    with torch.inference_mode(), tqdm(total=len(samples), desc=desc, unit="img",
                                      disable=not progress, leave=False) as bar:
        for batch in loader:
            bad += [Skipped(samples[i].path, reason) for i, reason in batch["failures"]]
            if len(batch["indices"]):
                x = batch["images"].contiguous(memory_format=torch.channels_last)
                buf_feats.append(backbone(x).float())
                buf_digests += [digests[i] for i in batch["indices"].tolist()]  # type: ignore[misc]
            if len(buf_digests) >= _SHARD_ROWS:
                cache.write_shard(torch.cat(buf_feats), buf_digests)
                buf_feats, buf_digests = [], []
            bar.update(len(batch["indices"]) + len(batch["failures"]))
    if buf_digests:
        cache.write_shard(torch.cat(buf_feats), buf_digests)
    backbone.train(was_training)
    return bad
