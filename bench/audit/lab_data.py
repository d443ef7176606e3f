"""Loading a ``DATA/<split>/<class>/*`` folder for the audit lab: the arrays checks.py works on.

``load(root, cache)`` returns paths, labels, split names, class names, EfficientNet-Lite0 pooled
features (through graftwork's feature cache), sha256 file digests, decoded-pixel digests and
small normalised grayscale thumbnails, with the seconds each part took.
"""
from __future__ import annotations

import hashlib
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
THUMB = 32  # side of the thumbnail (area-averaged grayscale)


def list_folder(root: Path) -> tuple[list[str], list[str], list[str], list[str]]:
    """(paths, class names of each, split of each, sorted class names)."""
    paths, cls, split = [], [], []
    for s in sorted(p.name for p in root.iterdir() if p.is_dir()):
        for c in sorted(p.name for p in (root / s).iterdir() if p.is_dir()):
            for f in sorted((root / s / c).iterdir()):
                if f.suffix.lower() in EXTS:
                    paths.append(str(f))
                    cls.append(c)
                    split.append(s)
    return paths, cls, split, sorted(set(cls))


def decode_one(path: str) -> tuple[bytes, np.ndarray]:
    """(digest of the decoded RGB pixels and their shape, 32x32 grayscale thumbnail float32)."""
    with Image.open(path) as im:
        rgb = im.convert("RGB")
    a = np.asarray(rgb)
    h = hashlib.sha256(np.array(a.shape, np.int64).tobytes())
    h.update(a.tobytes())
    thumb = np.asarray(rgb.convert("L").resize((THUMB, THUMB), Image.BOX), dtype=np.float32)
    return h.digest(), thumb


def decode_all(paths: list[str], workers: int = 2) -> tuple[list[bytes], np.ndarray]:
    with ThreadPoolExecutor(workers) as ex:
        out = list(ex.map(decode_one, paths, chunksize=64))
    return [d for d, _ in out], np.stack([t for _, t in out])


def load(root: Path, cache: Path, backbone: str = "efficientnet_lite0") -> dict:
    import torch

    from graftwork.backbones.catalog import create_backbone
    from graftwork.data.digests import file_digests
    from graftwork.data.discover import Sample
    from graftwork.features.pipeline import extract_features

    t0 = time.perf_counter()
    paths, cls, split, classes = list_folder(root)
    labels = np.array([classes.index(c) for c in cls])
    torch.manual_seed(0)
    net = create_backbone(backbone)
    pre = net.spec.preprocessing()
    t1 = time.perf_counter()
    res = extract_features(net, [Sample(p, int(y)) for p, y in zip(paths, labels)], pre, cache,
                           progress=False)
    t2 = time.perf_counter()
    feats = res.features.numpy().astype(np.float32)
    digests = file_digests(paths, cache)
    pix, thumbs = decode_all(paths)
    t3 = time.perf_counter()
    return dict(paths=paths, labels=labels, splits=np.array(split), classes=classes,
                features=feats, ok=res.ok.numpy(), file_digests=digests, pixel_digests=pix,
                thumbs=thumbs, extracted=res.extracted,
                seconds=dict(backbone=t1 - t0, features=t2 - t1, decode=t3 - t2))
