"""JPEG decode (+ eval resize) per image: PIL draft path vs simplejpeg (graftwork._jpeg).

    PYTHONPATH=src python bench/jpeg_probe.py

Writes a few Fashion-MNIST images upscaled to 400 px (and 800 px, where DCT scaling applies) as
quality-90 JPEGs in a temporary folder, then prints one JSON line of milliseconds per image
(best of 5 passes over 16 images). The resize is the eval transform of efficientnet_lite0
(short side 256 bicubic, centre crop 224) on the PIL image in both paths, so outputs are equal.
"""
from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
N, PASSES = 16, 5


def _best_ms(fn: Callable[[Path], Any], paths: list[Path]) -> float:
    best = float("inf")
    for _ in range(PASSES):
        t = time.perf_counter()
        for p in paths:
            fn(p)
        best = min(best, time.perf_counter() - t)
    return round(1000 * best / len(paths), 3)


def main() -> None:
    from graftwork._jpeg import decode_scaled
    from graftwork.backbones import get_spec
    from graftwork.data import _resize_crop, list_images, load_image

    from torchvision.transforms import v2

    pre = get_spec("efficientnet_lite0").preprocessing()
    resize = v2.Compose(_resize_crop(pre))
    draft = int(round(pre["image_size"] / pre["crop_pct"]))  # 256: the resize target
    sources = sorted(list_images(REPO / "data" / "fashion-mnist-small" / "train"))[::11][:N]
    out: dict[str, Any] = {"images": len(sources), "draft_size": draft}
    with tempfile.TemporaryDirectory() as tmp:
        for side in (400, 800):
            paths = []
            for i, src in enumerate(sources):
                path = Path(tmp) / f"{side}_{i}.jpg"
                Image.open(src).convert("RGB").resize((side, side), Image.BICUBIC).save(
                    path, "JPEG", quality=90)
                paths.append(path)
            fast = [decode_scaled(p, draft) for p in paths]
            ref = [np.asarray(load_image(p, draft)) for p in paths]
            out[f"{side}px_identical"] = all(np.array_equal(a, b) for a, b in zip(fast, ref))
            out[f"{side}px_decoded_shape"] = list(fast[0].shape)
            out[f"{side}px_pil_decode_ms"] = _best_ms(lambda p: load_image(p, draft), paths)
            out[f"{side}px_fast_decode_ms"] = _best_ms(lambda p: decode_scaled(p, draft), paths)
            out[f"{side}px_pil_decode_resize_ms"] = _best_ms(
                lambda p: resize(load_image(p, draft)), paths)
            out[f"{side}px_fast_decode_resize_ms"] = _best_ms(
                lambda p: resize(Image.fromarray(decode_scaled(p, draft))), paths)
    print(json.dumps(out))


if __name__ == "__main__":
    sys.exit(main())
