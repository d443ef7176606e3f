"""A raw-pixel baseline: softmax regression on small grayscale thumbnails.

Transfer learning must beat it on the same split; ``graft baseline DATA`` prints its accuracy.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from graftwork.data.discover import Sample, discover
from graftwork.data.images import load_image
from graftwork.errors import BadImageError, DataError
from graftwork.training.metrics import with_interval
from graftwork.training.loop import (TrainConfig, evaluate, fit, seed_everything, tensor_batches,
                                     torch_threads)

__all__ = ["pixel_baseline"]


def _pixels(samples: Sequence[Sample], size: int,
            split: str) -> tuple[torch.Tensor, torch.Tensor]:
    rows, labels = [], []
    for s in samples:
        try:
            img = load_image(s.path).convert("L").resize((size, size))
        except BadImageError:
            continue
        rows.append(np.asarray(img, dtype=np.float32).reshape(-1) / 255.0)
        labels.append(s.label)
    if not rows:  # no accuracy of no image: an error, never NaN
        raise DataError(f"no image of the {split} split could be decoded ({len(samples)} files"
                        + (f", e.g. {samples[0].path})" if samples else ")"),
                        "fix or replace the images")
    return torch.from_numpy(np.stack(rows)), torch.tensor(labels, dtype=torch.long)


def pixel_baseline(data: str | Path, size: int = 28, epochs: int = 200, seed: int = 0,
                   val_fraction: float = 0.2, test_fraction: float = 0.2) -> dict[str, Any]:
    """Train softmax regression on standardised pixels; best epoch chosen on validation.
    Each split's score carries ``n`` and its 95% interval (``accuracy_ci``)."""
    seed_everything(seed)
    splits = discover(data, val_fraction, test_fraction, seed)
    x, y = _pixels(splits.train, size, "train")
    mean, std = x.mean(0), x.std(0) + 1e-3
    x = (x - mean) / std
    xv, yv = _pixels(splits.val, size, "val")
    xv = (xv - mean) / std
    model = nn.Linear(x.shape[1], len(splits.classes))
    cfg = TrainConfig(epochs=epochs, lr=1e-3, optimizer="adam", weight_decay=1e-3,
                      patience=20, seed=seed)
    with torch_threads(1):
        fit(model, lambda g: tensor_batches(x, y, 32, g), lambda: evaluate(model, [(xv, yv)]),
            cfg, steps_per_epoch=math.ceil(len(x) / 32), phase="pixels", progress=False)
    out: dict[str, Any] = {"val": with_interval(evaluate(model, [(xv, yv)]))}
    if splits.test:
        xt, yt = _pixels(splits.test, size, "test")
        out["test"] = with_interval(evaluate(model, [((xt - mean) / std, yt)]))
    return out
