"""The feature cache: safetensors shards of backbone features keyed by image content.

Features live under ``cache_root/features/<model key>/``, where the model key hashes (backbone,
weights digest, preprocessing) and each row is keyed by the sha256 of the image file's bytes (or,
for augmented views, of the file plus the view's recipe). Shards are written atomically and carry
a checksum checked on load; a bad shard is deleted and its images are extracted again. Several
processes may fill one cache at once: every writer makes shards of its own (unique names), and
the index is rebuilt from the shards, so no entry is ever lost.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from graftwork.data.digests import stat_key
from graftwork.data.preprocess import Preprocessing
from graftwork.rundir.files import atomic_file

__all__ = ["FeatureCache", "default_cache_dir", "cache_root", "SHARD_ROWS"]

log = logging.getLogger(__name__)
SHARD_ROWS = 2048
_VERIFIED: dict[tuple[str, tuple[int, ...]], bytes] = {}  # verified shard -> row digests
#: Shards that could not be written (a read-only or full cache), per cache folder: kept in
#: memory for the rest of the process, so every FeatureCache of that folder sees them and the
#: warning is given once.
_IN_MEMORY: dict[Path, list[tuple[Path, torch.Tensor, list[bytes]]]] = {}


def default_cache_dir() -> Path:
    """``$GRAFT_CACHE_DIR`` or ``~/.cache/graftwork``."""
    env = os.environ.get("GRAFT_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "graftwork"


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """The cache folder a run uses: ``cache_dir`` when given, else :func:`default_cache_dir`
    (the one place this rule is written)."""
    return Path(cache_dir) if cache_dir else default_cache_dir()


def _checksum(features: torch.Tensor, digests: torch.Tensor) -> str:
    h = hashlib.sha256(features.contiguous().numpy().tobytes())
    h.update(digests.contiguous().numpy().tobytes())
    return h.hexdigest()


class FeatureCache:
    """The shards of one (backbone, weights, preprocessing) combination."""

    def __init__(self, root: str | Path, backbone: Any, preprocessing: Preprocessing) -> None:
        # the stored dict form keeps the keys of every cache written before (tests pin them)
        fields = {"backbone": backbone.spec.name, "arch": backbone.spec.arch,
                  "weights": backbone.weights.digest, "pre": preprocessing.as_dict()}
        layer = getattr(backbone, "layer", None)  # WithMidLayer / MidLayerRecord features
        if isinstance(layer, str):
            fields["mid_layer"] = layer
        key = json.dumps(fields, sort_keys=True)
        self.key = hashlib.sha256(key.encode()).hexdigest()[:20]
        self.dir = Path(root) / "features" / self.key
        self.dim = backbone.feature_dim
        self._index: dict[bytes, tuple[Path, int]] | None = None
        self._loaded: dict[Path, torch.Tensor] = {}

    def _read_shard(self, path: Path) -> tuple[torch.Tensor, torch.Tensor] | None:
        try:
            tensors = load_file(str(path))
            with safe_open(str(path), "pt") as fh:
                meta = fh.metadata() or {}
            feats, digests = tensors["features"], tensors["digests"]
            if (feats.dim() != 2 or digests.dim() != 2 or digests.shape[1] != 32
                    or digests.dtype != torch.uint8 or len(feats) != len(digests)
                    or feats.shape[1] != self.dim):
                raise ValueError("not the shapes graftwork writes")
            if meta.get("checksum") != _checksum(feats, digests):
                raise ValueError("checksum mismatch")
            return feats, digests
        except FileNotFoundError:  # another process replaced it meanwhile
            return None
        except Exception as exc:  # noqa: BLE001  a cache entry: whatever is wrong, rebuild it
            log.warning("feature cache shard %s is corrupt (%s): deleting it, will re-extract",
                        path.name, exc)
            try:
                path.unlink(missing_ok=True)
            except OSError:  # a read-only cache: the shard stays, and is not used
                pass
            return None

    def index(self, refresh: bool = False) -> dict[bytes, tuple[Path, int]]:
        """digest -> (shard, row) for every verified shard (``refresh`` re-reads the folder,
        e.g. to see shards another process wrote)."""
        if self._index is None or refresh:
            self._index = {}
            try:
                paths = sorted(self.dir.glob("shard-*.safetensors"))
            except OSError:  # the cache folder cannot be read (e.g. its parent is a file)
                paths = []
            for path in paths:
                raw = self._verified_digests(path)
                for row in range(len(raw) // 32):
                    self._index[raw[row * 32:(row + 1) * 32]] = (path, row)
            for path, feats, digests in _IN_MEMORY.get(self.dir, []):
                self._loaded[path] = feats
                for row, d in enumerate(digests):
                    self._index.setdefault(d, (path, row))
        return self._index

    def _verified_digests(self, path: Path) -> bytes:
        """The row digests of a shard whose checksum holds (b"" if it is corrupt); a shard
        verified earlier in this process (same stat: inode, size, mtime, ctime) is not read
        again."""
        try:
            st = path.stat()
        except OSError:
            return b""
        key = (str(path), stat_key(st))
        raw = _VERIFIED.get(key)
        if raw is None:
            shard = self._read_shard(path)
            if shard is None:
                return b""
            raw = _VERIFIED[key] = shard[1].contiguous().numpy().tobytes()
        return raw

    def _shard(self, path: Path) -> torch.Tensor:
        if path not in self._loaded:
            self._loaded[path] = load_file(str(path))["features"]
        return self._loaded[path]

    def get(self, digest: bytes) -> torch.Tensor | None:
        hit = self.index().get(digest)
        return None if hit is None else self._shard(hit[0])[hit[1]]

    def gather(self, digests: Sequence[bytes | None]) -> tuple[torch.Tensor, torch.Tensor]:
        """(features, found): one row per digest, zeros where it is not cached."""
        index = self.index()
        by_shard: dict[Path, tuple[list[int], list[int]]] = {}
        for i, d in enumerate(digests):
            hit = index.get(d) if d is not None else None
            if hit is not None:
                pos, rows = by_shard.setdefault(hit[0], ([], []))
                pos.append(i)
                rows.append(hit[1])
        out = torch.zeros(len(digests), self.dim)
        found = torch.zeros(len(digests), dtype=torch.bool)
        for path, (pos, rows) in by_shard.items():
            out[pos] = self._shard(path)[rows]
            found[pos] = True
        return out, found

    def write_shard(self, features: torch.Tensor, digests: list[bytes]) -> Path:
        """Write one shard atomically and add it to the index. A cache that cannot be written
        (read-only, full) keeps the rows in memory only: warned once, never fatal."""
        feats = features.detach().to(torch.float32).contiguous()
        dig = torch.tensor([list(d) for d in digests], dtype=torch.uint8)
        path = self.dir / f"shard-{time.time_ns()}-{os.getpid()}.safetensors"
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            with atomic_file(path) as tmp:
                save_file({"features": feats, "digests": dig}, tmp,
                          metadata={"checksum": _checksum(feats, dig)})
        except (OSError, SafetensorError, RuntimeError) as exc:
            memory = _IN_MEMORY.setdefault(self.dir, [])
            if not memory:
                log.warning("feature cache %s cannot be written (%s): keeping features in "
                            "memory for this run", self.dir, exc)
            path = self.dir / f"memory-{len(memory)}-{time.time_ns()}"
            memory.append((path, feats, list(digests)))
        self._loaded[path] = feats
        index = self.index()
        for row, d in enumerate(digests):
            index[d] = (path, row)
        return path
