"""Feature extraction with an on-disk cache: one module per job.

- :mod:`.open` — ``open_features``: THE way to the features of a backbone (cache folder, the
  prepared record or the network); fitting, ``graft extract`` and ``graft audit`` use it
- :mod:`.prepared` — a backbone's weights and facts stored once, so cached re-runs build no
  network
- :mod:`.cache` — shards of features keyed by image content, checksummed, shared by processes
- :mod:`.decode` — uint8 resize + crop in workers, normalisation in the engine
- :mod:`.engines` — what runs a network: ONNX Runtime, eager torch, or the automatic choice
- :mod:`.pipeline` — ``extract_features``: digests, cache look-ups, decoding, the engine, shards
  (or an engine that fills the cache itself: a ``CacheFiller``)
- :mod:`.folder` — ``extract_folder``: a whole image folder, or shard i of n, into the cache
- :mod:`.ray_engine` — ``RayEngine``, registered in ``ENGINES`` as "ray": the backbone in Ray
  actors (``ray`` is optional, imported only when the engine runs)
"""
from __future__ import annotations

from graftwork.data.digests import file_digest
from graftwork.features.cache import FeatureCache, cache_root, default_cache_dir
from graftwork.features.decode import FastEvalTransform, FromPixels, Normalize, resize_size
from graftwork.features.engines import (ENGINES, AutoEngine, Engine, OnnxEngine, Runner,
                                        TorchEngine, create_engine, export_onnx, onnx_available,
                                        ort_session)
from graftwork.features.pipeline import (CacheFiller, ExtractResult, IndexBatches,
                                         bind_backbone, bind_pixels, default_workers,
                                         extract_features)
from graftwork.features.folder import extract_folder, shard_from_env, shard_samples
from graftwork.features.ray_engine import RayEngine

__all__ = ["open_features", "FeatureSource", "FeatureCache", "cache_root", "default_cache_dir", "FastEvalTransform", "FromPixels", "Normalize",
           "resize_size", "ENGINES", "AutoEngine", "Engine", "OnnxEngine", "Runner",
           "TorchEngine", "create_engine", "export_onnx", "onnx_available", "ort_session",
           "CacheFiller", "ExtractResult", "IndexBatches", "bind_backbone", "bind_pixels",
           "default_workers", "extract_features", "file_digest", "extract_folder",
           "shard_from_env", "shard_samples", "RayEngine"]
