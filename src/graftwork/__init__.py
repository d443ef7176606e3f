"""graftwork: turn a folder of labelled images into an accurate classifier by transfer learning.

The package tree is the architecture (``docs/architecture.md``): ``data`` (image folders) ->
``backbones`` (pretrained networks and their weights) -> ``model`` (backbone + head, BatchNorm
tools) -> ``features`` (the feature cache and inference engines) -> ``training`` (the loop,
callbacks, devices) -> ``phases`` (training strategies) -> ``estimator``
(``ImageClassifier``) -> ``rundir``, ``report``, ``deploy``; ``datacheck`` (``graftwork.audit``:
label errors, duplicates, outliers) -> ``cli``.

Exports are loaded lazily so that ``import graftwork`` (and the CLI's ``--help``) stay fast.
"""
from __future__ import annotations

import importlib
from typing import Any

from graftwork import _compat

__version__ = "0.1.0"

_EXPORTS = {
    "audit": "datacheck", "AuditResult": "datacheck",
    "ImageClassifier": "estimator.classifier", "STRATEGIES": "estimator.classifier",
    "Backbone": "backbones", "BackboneSpec": "backbones", "WeightsInfo": "backbones",
    "create_backbone": "backbones", "get_spec": "backbones", "list_backbones": "backbones",
    "register_backbone": "backbones",
    "AugmentConfig": "data.transforms",
    "GraftError": "errors", "DataError": "errors", "BadImageError": "errors",
    "BackboneNotFoundError": "errors", "WeightsNotFoundError": "errors",
    "NotFittedError": "errors", "RunDirError": "errors", "ModelFileError": "errors",
    "ConfigError": "errors",
}

__all__ = sorted([*_EXPORTS, "__version__"])

_compat.install()


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"graftwork.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'graftwork' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
