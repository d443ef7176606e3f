"""Prepared backbones: a pretrained backbone's weights and facts, stored once per weights source.

A re-run whose features all come from the cache never runs the backbone. It still needs the
backbone's identity (weights digest, for the cache key), its facts (spec, feature size, counts)
and its weights (the saved model holds them). A :class:`PreparedBackbone` gives all of that
from one safetensors file without building the network, so such a run never imports timm or
torchvision (~2 s of a ~4 s run); :meth:`PreparedBackbone.module` builds it when it is needed.

Records live in ``CACHE/backbones/<key>.safetensors``, keyed by the backbone's spec, the identity
of its weights source as :func:`graftwork._weights.resolve_weights` gives it (for a file: path,
size, mtime) and the timm and graftwork versions. Hub and random weights are not recorded
(nothing cheap identifies them).
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
from dataclasses import asdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

import graftwork.backbones.weights as _weights
from graftwork.backbones.network import Backbone
from graftwork.backbones.spec import BackboneSpec, WeightsInfo
from graftwork.backbones.catalog import create_backbone, get_spec, is_registered
from graftwork.errors import WeightsNotFoundError
from graftwork.model.graft import freeze_backbone, parameter_counts
from graftwork.rundir.files import atomic_file, atomic_write_text
from graftwork.model.summary import backbone_table

__all__ = ["PreparedBackbone", "load_prepared", "store_prepared"]

log = logging.getLogger(__name__)
_FORMAT = 1


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return ""


def _source_key(name: str, weights: str | None, loaded: WeightsInfo | None = None,
                sources: Sequence[_weights.WeightSource] | None = None) -> str | None:
    """A key that changes whenever the weights would: None where nothing cheap says so.

    The weights source is the one :func:`graftwork._weights.resolve_weights` picks; ``loaded``
    (what a backbone actually got) must have come from it, else there is no key.
    """
    if weights == "random" or not is_registered(name):
        return None
    spec = get_spec(name)
    try:
        found, _ = _weights.resolve_weights(spec, weights, sources)
    except WeightsNotFoundError:
        return None
    if found.identity is None:  # e.g. the hub: only timm knows what it would fetch
        return None
    if loaded is not None and (loaded.source, loaded.location) != (found.source, found.location):
        return None
    facts = {"format": _FORMAT, "spec": asdict(spec), "source": found.source, **found.identity,
             "timm": _version("timm"), "graftwork": _version("graftwork")}
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:24]


def _path(root: str | Path, key: str) -> Path:
    return Path(root) / "backbones" / f"{key}.safetensors"


class PreparedBackbone:
    """A backbone known by its stored weights and facts; the network is built on demand."""

    def __init__(self, path: Path, spec: BackboneSpec, weights: WeightsInfo, feature_dim: int,
                 counts: dict[str, int], trunk_state: dict[str, torch.Tensor]) -> None:
        self.path = path
        self.spec = spec
        self.weights = weights
        self.feature_dim = feature_dim
        self.counts = counts  # parameter_counts() of the frozen backbone
        self._trunk_state = trunk_state
        self._module: Backbone | None = None

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The backbone's state dict, keys as in ``Backbone.state_dict()``."""
        return {f"trunk.{k}": v for k, v in self._trunk_state.items()}

    def summary(self, image_size: int) -> str:
        """The frozen backbone's per-layer table at ``image_size`` (stored beside the record;
        made, and the network built, only the first time)."""
        path = _summary_path(self.path, image_size)
        try:
            text = path.read_text(encoding="utf-8")
            if text.strip():
                return text
        except (OSError, UnicodeDecodeError):  # missing or damaged: made again
            pass
        text = backbone_table(self.module(), image_size)
        _write_text(path, text)
        return text

    def module(self) -> Backbone:
        """The network with these weights, frozen (built once)."""
        if self._module is None:
            backbone = create_backbone(self.spec.name, pretrained=False)
            backbone.load_state_dict(self.state_dict())
            backbone.weights = self.weights
            freeze_backbone(backbone, 0)
            self._module = backbone
        return self._module


def _summary_path(record: Path, image_size: int) -> Path:
    return record.with_name(f"{record.stem}.summary-{image_size}.txt")


def _write_text(path: Path, text: str) -> None:
    """Atomic, best effort: the cache may be read-only."""
    try:
        atomic_write_text(path, text)
    except OSError as exc:
        log.debug("could not write %s: %s", path, exc)


def load_prepared(root: str | Path, name: str, weights: str | None) -> PreparedBackbone | None:
    """The stored record for these weights, or None (not stored, stale, or unreadable)."""
    key = _source_key(name, weights)
    if key is None:
        return None
    path = _path(root, key)
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), "pt") as fh:
            meta = json.loads((fh.metadata() or {})["graftwork"])
        spec = BackboneSpec(**{k: (tuple(tuple(b) for b in v) if k == "blocks" else
                                   tuple(v) if isinstance(v, list) else v)
                               for k, v in meta["spec"].items()})
        info = WeightsInfo.from_dict(meta["weights"])
        counts, feature_dim = meta["counts"], meta["feature_dim"]
        if (not isinstance(counts, dict) or not all(isinstance(v, int) for v in counts.values())
                or not isinstance(feature_dim, int) or feature_dim < 1 or spec.name != name):
            raise ValueError("its facts are not what graftwork writes")
        trunk = load_file(str(path))
        if _weights.state_digest(trunk) != info.digest:  # ~10 ms per 10 MB
            raise ValueError("weights do not match their digest")
        return PreparedBackbone(path, spec, info, feature_dim, counts, trunk)
    except Exception as exc:  # noqa: BLE001  a cache entry: whatever is wrong, rebuild it
        log.warning("prepared backbone %s is unreadable (%s): deleting it", path.name, exc)
        try:
            path.unlink(missing_ok=True)
        except OSError:  # a read-only cache: the record stays, and is not used
            pass
        return None


def store_prepared(root: str | Path, name: str, weights: str | None, backbone: Backbone,
                   image_size: int | None = None) -> None:
    """Record ``backbone`` (as loaded from its weights source) for later runs, with its
    summary at ``image_size``; best effort."""
    key = _source_key(name, weights, backbone.weights)
    if key is None:
        return
    path = _path(root, key)
    summary = _summary_path(path, image_size) if image_size else None
    if path.is_file() and (summary is None or summary.is_file()):
        return
    flags = [p.requires_grad for p in backbone.parameters()]
    freeze_backbone(backbone, 0)
    try:
        counts = parameter_counts(backbone)
        table = backbone_table(backbone, image_size) if summary is not None else ""
    finally:
        for p, flag in zip(backbone.parameters(), flags):
            p.requires_grad = flag
    if path.is_file():
        if summary is not None:
            _write_text(summary, table)
        return
    meta: dict[str, Any] = {"spec": asdict(backbone.spec), "weights": asdict(backbone.weights),
                            "feature_dim": backbone.feature_dim, "counts": counts}
    state = {k: v.detach().contiguous() for k, v in backbone.trunk.state_dict().items()}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(path) as tmp:
            save_file(state, tmp, metadata={"graftwork": json.dumps(meta)})
        if summary is not None:
            _write_text(summary, table)
    except (OSError, RuntimeError, SafetensorError) as exc:  # e.g. a read-only cache, tied weights
        log.warning("could not store prepared backbone in %s: %s", path.parent, exc)
