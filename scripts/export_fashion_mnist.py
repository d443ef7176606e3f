"""Export a small, balanced ImageFolder from Debian's ``dataset-fashion-mnist`` (MIT licence).

Usage: python scripts/export_fashion_mnist.py OUT [--train 30 --val 10 --test 20] [--size 0]

train/ and val/ are drawn from the official training file, test/ from the official test file,
taking the first N images of each class in file order (deterministic). ``--size`` resizes the
28x28 images (0 keeps them) and ``--format`` picks png or jpg (the benchmark uses larger JPEGs).
"""
from __future__ import annotations

import argparse
import gzip
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

SOURCE = Path("/usr/share/datasets/fashion-mnist")
LICENCE = Path("/usr/share/doc/dataset-fashion-mnist/copyright")
CLASSES = ("t-shirt_top", "trouser", "pullover", "dress", "coat",
           "sandal", "shirt", "sneaker", "bag", "ankle_boot")


def read_idx(path: Path) -> np.ndarray:
    """Read a gzipped IDX file (images: N x 28 x 28, labels: N)."""
    with gzip.open(path, "rb") as fh:
        data = fh.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def export(out: Path, counts: dict[str, tuple[str, int, int]], size: int, fmt: str) -> int:
    written = 0
    cache: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for split, (prefix, start, n) in counts.items():
        if n <= 0:
            continue
        if prefix not in cache:
            cache[prefix] = (read_idx(SOURCE / f"{prefix}-images-idx3-ubyte.gz"),
                             read_idx(SOURCE / f"{prefix}-labels-idx1-ubyte.gz"))
        images, labels = cache[prefix]
        for label, name in enumerate(CLASSES):
            folder = out / split / name
            folder.mkdir(parents=True, exist_ok=True)
            idx = np.flatnonzero(labels == label)[start:start + n]
            for i in idx:
                img = Image.fromarray(images[i], mode="L")
                if size:
                    img = img.convert("RGB").resize((size, size), Image.BICUBIC)
                img.save(folder / f"{prefix}_{i:05d}.{fmt}", optimize=fmt == "png", quality=90)
                written += 1
    return written


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--train", type=int, default=30)
    ap.add_argument("--val", type=int, default=10)
    ap.add_argument("--test", type=int, default=20)
    ap.add_argument("--size", type=int, default=0)
    ap.add_argument("--format", choices=("png", "jpg"), default="png")
    args = ap.parse_args()
    if not SOURCE.exists():
        raise SystemExit(f"{SOURCE} not found: apt-get install dataset-fashion-mnist")
    counts = {"train": ("train", 0, args.train),
              "val": ("train", args.train, args.val),
              "test": ("t10k", 0, args.test)}
    n = export(args.out, counts, args.size, args.format)
    if LICENCE.exists():
        shutil.copy(LICENCE, args.out / "LICENSE-fashion-mnist.txt")
    print(f"wrote {n} images to {args.out}")


if __name__ == "__main__":
    main()
