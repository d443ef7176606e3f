"""``graft audit DATA``: what is wrong with a folder of labelled images, from the cached
features, in seconds: likely label errors, duplicates (leaks across splits first), images of
no class, and one-line notes (unreadable files, imbalance, tiny, grayscale, aspect).

    result = graftwork.audit("DATA")
    result.label_issues[:3], result.leaks, result.outliers

Each check is one function over the shared :class:`~.inputs.AuditInputs` (features, digests,
thumbnails, a shared k-NN search), registered by name in :data:`CHECKS`: a new check is one
module here and one ``CHECKS.register`` line below. :func:`audit` only orchestrates.
DATA is never written to.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from graftwork.datacheck.duplicates import find_duplicates
from graftwork.datacheck.inputs import AuditInputs, gather, unit
from graftwork.datacheck.labels import find_label_issues
from graftwork.datacheck.outliers import find_outliers
from graftwork.datacheck.result import AuditResult
from graftwork.datacheck.summary import find_notes
from graftwork.registry import Registry

__all__ = ["audit", "AuditResult", "AuditInputs", "CHECKS"]

log = logging.getLogger(__name__)

CHECKS: Registry[Callable[[AuditInputs], list[dict[str, Any]]]] = Registry("data check")
CHECKS.register("label_issues", find_label_issues)
CHECKS.register("duplicates", find_duplicates)
CHECKS.register("outliers", find_outliers)
CHECKS.register("notes", find_notes)


def audit(data: str | Path, *, backbone: str = "efficientnet_lite0", weights: str | None = None,
          image_size: int | None = None, cache_dir: str | Path | None = None,
          num_workers: int | None = None, progress: bool = False, seed: int = 0) -> AuditResult:
    """Run every registered check on DATA (``DATA/train|val|test/<class>`` or
    ``DATA/<class>``); features come from the cache (extracted once)."""
    t0 = time.perf_counter()
    inputs = gather(data, backbone=backbone, weights=weights, image_size=image_size,
                    cache_dir=cache_dir, num_workers=num_workers, progress=progress, seed=seed)
    found: dict[str, list[dict[str, Any]]] = {}
    seconds = dict(inputs.seconds)
    for name, check in CHECKS.items():
        t = time.perf_counter()
        found[name] = check(inputs)
        seconds[name] = round(time.perf_counter() - t, 2)
        log.info("%s: %d found in %.1fs", name, len(found[name]), seconds[name])
    result = AuditResult(Path(data), found.get("label_issues", []), found.get("duplicates", []),
                         found.get("outliers", []))
    result.neighbours = _nearest_of_suggested(inputs, result.label_issues)
    counts = {split: int((inputs.splits == split).sum()) for split in ("train", "val", "test")}
    result.summary = {
        "images": len(inputs.paths), "classes": inputs.classes, "splits": counts,
        "label_issues": len(result.label_issues), "duplicate_groups": len(result.duplicates),
        "leaks": len(result.leaks), "outliers": len(result.outliers),
        "notes": found.get("notes", []), "backbone": backbone,
        "seconds": {**seconds, "total": round(time.perf_counter() - t0, 2)},
    }
    return result


def _nearest_of_suggested(inputs: AuditInputs, issues: list[dict[str, Any]], k: int = 3
                          ) -> dict[str, list[str]]:
    """For each flagged image, the ``k`` images of its suggested class nearest to it."""
    z = unit(inputs.features)
    row = {p: i for i, p in enumerate(inputs.paths)}
    out = {}
    for issue in issues:
        i, c = row[issue["path"]], inputs.classes.index(issue["suggested"])
        members = np.flatnonzero((inputs.labels == c) & (np.arange(len(z)) != i))
        near = members[np.argsort(-(z[members] @ z[i]))[:k]]
        out[issue["path"]] = [inputs.paths[j] for j in near]
    return out
