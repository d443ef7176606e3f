"""One way to open the features of a backbone: ``open_features(backbone, weights, image_size,
cache_dir)``.

It resolves the cache folder, and gives the backbone's prepared record when one is stored (no
network is built: a re-run on cached features never imports timm or torchvision) or builds the
backbone and stores its record for next time. Fitting (``estimator.fit``), ``graft extract``
(:mod:`.folder`) and ``graft audit`` call it; :meth:`FeatureSource.extract` is their way to
the features of a list of images.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from graftwork.backbones.catalog import create_backbone
from graftwork.backbones.network import Backbone, WithMidLayer, mid_layer_width
from graftwork.data.digests import file_digests
from graftwork.data.discover import Sample
from graftwork.data.preprocess import Preprocessing
from graftwork.features.cache import SHARD_ROWS, FeatureCache, cache_root
from graftwork.features.engines import Engine
from graftwork.features.pipeline import ExtractResult, extract_features
from graftwork.features.prepared import PreparedBackbone, load_prepared, store_prepared

__all__ = ["FeatureSource", "MidLayerRecord", "open_features"]

log = logging.getLogger(__name__)


class MidLayerRecord:
    """A backbone (network or prepared record) read at its final features and at its
    ``spec.mid_layer`` (:class:`~graftwork.backbones.network.WithMidLayer`): what the feature
    cache keys by, with the network built only when something must be extracted."""

    def __init__(self, base: Backbone | PreparedBackbone, layer: str) -> None:
        self.base = base
        self.layer = layer
        self.spec = base.spec
        self.weights = base.weights
        self.feature_dim = mid_layer_width(base, layer)

    def module(self) -> WithMidLayer:
        """The network, reading both layers."""
        base = self.base.module() if isinstance(self.base, PreparedBackbone) else self.base
        return WithMidLayer(base, self.layer)


@dataclass
class FeatureSource:
    """The features of one backbone (its weights, at one preprocessing) in one cache folder.

    ``backbone`` is the network, or its prepared record while no feature needs computing.
    """

    root: Path
    backbone: Backbone | PreparedBackbone | MidLayerRecord
    preprocessing: Preprocessing

    @property
    def cache(self) -> FeatureCache:
        """The cache shards of this backbone and preprocessing."""
        return FeatureCache(self.root, self.backbone, self.preprocessing)

    def network(self) -> Backbone:
        """The backbone network (built from the prepared record on first use)."""
        if isinstance(self.backbone, PreparedBackbone):
            self.backbone = self.backbone.module()
        if isinstance(self.backbone, MidLayerRecord):
            raise TypeError("a mid-layer source extracts features; it is not a Backbone")
        return self.backbone

    def with_mid_layer(self) -> FeatureSource | None:
        """These features followed by the backbone's ``spec.mid_layer`` output (cached apart,
        the first ``feature_dim`` columns equal to these); None for backbones without one."""
        layer = self.backbone.spec.mid_layer
        if not layer:
            return None
        return FeatureSource(self.root, MidLayerRecord(self.backbone, layer), self.preprocessing)

    def extract(self, samples: Sequence[Sample], *, batch_size: int = 64,
                num_workers: int | None = None, progress: bool = False, strict: bool = False,
                materialize: bool = True, desc: str = "extract",
                engine: str | Engine | None = None) -> ExtractResult:
        """Features of ``samples`` from the cache, extracting (and caching) the missing ones;
        see :func:`graftwork.features.pipeline.extract_features`. A mid-layer source also
        stores the final features of what it extracted in the plain backbone's cache, so
        ``graft train`` after ``graft audit`` extracts nothing."""
        result = extract_features(self.backbone, samples, self.preprocessing, self.root,
                                  batch_size=batch_size, num_workers=num_workers,
                                  progress=progress, strict=strict, materialize=materialize,
                                  desc=desc, engine=engine)
        if isinstance(self.backbone, MidLayerRecord) and result.extracted and materialize:
            self._share_final(samples, result)
        return result

    def _share_final(self, samples: Sequence[Sample], result: ExtractResult) -> None:
        """Write the first ``feature_dim`` columns of the usable rows the plain backbone's
        cache lacks into it (one extraction serves the audit and training)."""
        base = self.backbone.base  # type: ignore[union-attr]
        cache = FeatureCache(self.root, base, self.preprocessing)
        index = cache.index()
        rows: dict[bytes, int] = {}
        for i, d in enumerate(file_digests([s.path for s in samples], self.root)):
            if d is not None and bool(result.ok[i]) and d not in index:
                rows.setdefault(d, i)
        keys, picked = list(rows), list(rows.values())
        for start in range(0, len(keys), SHARD_ROWS):
            part = picked[start:start + SHARD_ROWS]
            cache.write_shard(result.features[part, :base.feature_dim],
                              keys[start:start + SHARD_ROWS])


def open_features(backbone: str, weights: str | None = None, image_size: int | None = None,
                  cache_dir: str | Path | None = None, *, network: bool = False
                  ) -> FeatureSource:
    """The features of ``backbone`` (with ``weights``, at ``image_size``) in ``cache_dir``.

    Without ``network``, a stored prepared record serves and no network is built unless some
    feature is missing; otherwise (or when no record is stored) the backbone is built, and its
    record stored for later runs (best effort: hub and random weights have none).
    """
    root = cache_root(cache_dir)
    if not network:
        prepared = load_prepared(root, backbone, weights)
        if prepared is not None:
            log.info("backbone %s: prepared record %s", backbone, prepared.path.name)
            return FeatureSource(root, prepared, prepared.spec.preprocessing(image_size))
    net = create_backbone(backbone, weights)
    store_prepared(root, backbone, weights, net, image_size or net.spec.input_size)
    return FeatureSource(root, net, net.spec.preprocessing(image_size))
