"""One line each for what needs no model: unreadable files, class imbalance, tiny images,
grayscale mixed with colour, extreme aspect ratios."""
from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

from graftwork.datacheck.inputs import AuditInputs

__all__ = ["find_notes", "TINY", "ASPECT", "IMBALANCE"]

TINY = 32  # px: a shorter side below this is upscaled several times by any backbone
ASPECT = 3.0  # long side / short side from which the centre crop loses most of the image
IMBALANCE = 3.0  # largest class / smallest class from which the note is given


def find_notes(inputs: AuditInputs) -> list[dict[str, Any]]:
    """{check, count, message} for each of the cheap checks that found something."""
    notes: list[dict[str, Any]] = []

    def note(check: str, count: int, message: str, paths: list[str] | None = None) -> None:
        notes.append({"check": check, "count": count, "message": message,
                      "examples": (paths or [])[:5]})

    if inputs.skipped:
        reasons = Counter(s.reason for s in inputs.skipped)
        common = "; ".join(f"{r} ({n})" for r, n in reasons.most_common(3))
        note("unreadable", len(inputs.skipped),
             f"{len(inputs.skipped)} files not used: {common}", [s.path for s in inputs.skipped])
    for split in ("train", "val", "test"):
        here = inputs.labels[inputs.splits == split]
        if not len(here):
            continue
        counts = np.bincount(here, minlength=len(inputs.classes))
        low, high = int(counts.argmin()), int(counts.argmax())
        if counts[low] == 0 or counts[high] / counts[low] >= IMBALANCE:
            note("imbalance", int(counts[high] - counts[low]),
                 f"{split}: classes are imbalanced ({inputs.classes[high]!r} {counts[high]} "
                 f"images, {inputs.classes[low]!r} {counts[low]}): accuracy favours the "
                 "large class; consider --class-weights auto")
    short = inputs.sizes.min(axis=1)
    tiny = np.flatnonzero(short < TINY)
    if len(tiny):
        note("tiny", len(tiny), f"{len(tiny)} images smaller than {TINY} px on a side",
             [inputs.paths[i] for i in tiny])
    gray = int(inputs.gray.sum())
    if 0 < gray < len(inputs.gray):
        minority = np.flatnonzero(inputs.gray if gray <= len(inputs.gray) / 2 else ~inputs.gray)
        note("grayscale", len(minority), f"{gray} grayscale images among "
             f"{len(inputs.gray) - gray} colour ones: if colour tells the classes apart, the "
             "gray ones will be hard", [inputs.paths[i] for i in minority])
    aspect = inputs.sizes.max(axis=1) / np.maximum(1, short)
    wide = np.flatnonzero(aspect >= ASPECT)
    if len(wide):
        note("aspect", len(wide), f"{len(wide)} images with an aspect ratio of {ASPECT:g}:1 or "
             "more: the centre crop sees only their middle", [inputs.paths[i] for i in wide])
    return notes
