"""Image folders: finding classes and splits, robust decoding, transforms, datasets."""
from __future__ import annotations

import errno
import io
import logging
import os
import random
import stat
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from graftwork.errors import BadImageError, ConfigError, DataError

__all__ = [
    "IMAGE_EXTENSIONS", "Sample", "Splits", "Skipped", "discover", "list_images", "load_image",
    "ImageDataset", "collate_skip", "eval_transform", "train_transform", "AugmentConfig",
    "augment_ops", "AUGMENT_POLICIES",
]

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff",
                              ".ppm", ".pgm", ".pbm"})
SPLIT_NAMES = ("train", "val", "test")
ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is an error, not a grey image


@dataclass(frozen=True)
class Sample:
    path: str
    label: int


@dataclass(frozen=True)
class Skipped:
    path: str
    reason: str


@dataclass
class Splits:
    """Class names (sorted folder names) and the samples of each split."""

    classes: list[str]
    train: list[Sample]
    val: list[Sample]
    test: list[Sample]
    skipped: list[Skipped] = field(default_factory=list)
    explicit: bool = False  # True when train/val/test folders were given

    def counts(self) -> dict[str, int]:
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test)}


def _within(path: str, folder: str) -> bool:
    return (path + os.sep).startswith(folder.rstrip(os.sep) + os.sep)


def _link(path: str, data: str) -> tuple[str | None, str]:
    """(why the symlink ``path`` is skipped or None, its real path): folder links never count."""
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        return ("symlink loop: the link never resolves" if exc.errno == errno.ELOOP
                else "broken symlink"), ""
    real = os.path.realpath(path)
    if not stat.S_ISDIR(mode):
        return (None if stat.S_ISREG(mode) else "not a regular file"), real
    if _within(os.path.realpath(os.path.dirname(path)), real):
        return "symlink loop: points to a folder that contains it", real
    if _within(real, data):
        return "symlinked folder inside the data folder: not followed (counted where it is)", real
    return "symlinked folder outside the data folder: not followed", real


def _entries(folder: str | Path) -> list[os.DirEntry[str]]:
    """Sorted entries of ``folder``; hidden ones (.DS_Store, ._img.jpg, .git) are ignored."""
    with os.scandir(folder) as it:  # d_type: plain files and folders need no stat
        return sorted((e for e in it if not e.name.startswith(".")), key=lambda e: e.name)


def _image_files(folder: str, data: str, skipped: list[Skipped], seen: dict[str, str]) -> list[str]:
    """Images below ``folder``, sorted depth-first, symlinks as in ``discover``; ``seen`` maps
    real path -> first path (later copies are skipped); other files are recorded in ``skipped``."""
    images: list[str] = []
    stack = [(folder, os.path.realpath(folder))]
    while stack:
        top, real_top = stack.pop()
        try:
            entries = _entries(top)
        except OSError as exc:
            skipped.append(Skipped(str(exc.filename or top), f"cannot read folder: {exc.strerror}"))
            continue
        subdirs: list[tuple[str, str]] = []
        for e in entries:
            reason, real = None, os.path.join(real_top, e.name)
            try:
                if e.is_symlink():
                    reason, real = _link(e.path, data)
                elif e.is_dir(follow_symlinks=False):
                    subdirs.append((e.path, real))
                    continue
                elif not e.is_file(follow_symlinks=False):  # FIFOs, devices: block or never end
                    reason = "not a regular file"
            except OSError as exc:
                reason = f"cannot read: {exc.strerror}"
            if reason is None and os.path.splitext(e.name)[1].lower() not in IMAGE_EXTENSIONS:
                reason = ("system file" if e.name in ("Thumbs.db", "desktop.ini")
                          else "not an image file (extension)")
            elif reason is None and real in seen:
                reason = f"duplicate of {seen[real]!r} (same file)"
            if reason:
                skipped.append(Skipped(e.path, reason))
            else:
                seen[real] = e.path
                images.append(e.path)
        stack.extend(reversed(subdirs))
    return images


def list_images(folder: Path, skipped: list[Skipped] | None = None) -> list[Path]:
    """Image files below ``folder`` (symlinks as in ``discover``, ``folder`` being DATA);
    other files, folder links and second copies of one real file are recorded in ``skipped``."""
    found = _image_files(os.fspath(folder), os.path.realpath(folder),
                         skipped if skipped is not None else [], {})
    return [Path(p) for p in found]


def _class_folders(folder: Path, data: str, skipped: list[Skipped]) -> tuple[list[str], str]:
    """Sorted class folder names, and a note naming the symlinked folders left out."""
    names: list[str] = []
    links: list[str] = []
    try:
        for e in _entries(folder):
            reason = _link(e.path, data)[0] if e.is_symlink() else None
            if reason and reason != "not a regular file":  # links to files: ignored like files
                skipped.append(Skipped(e.path, reason))
                links.append(e.name)
            elif not e.is_symlink() and e.is_dir():
                names.append(e.name)
    except OSError as exc:
        raise DataError(f"cannot read folder {str(folder)!r}: {exc.strerror}",
                        "check the path and its permissions") from exc
    return names, f" (symlinked folders are not followed: {links})" if links else ""


def _scan_split(folder: Path, classes: list[str], data: str, skipped: list[Skipped],
                seen: dict[str, str]) -> list[Sample]:
    samples = []
    for label, name in enumerate(classes):
        files = _image_files(str(folder / name), data, skipped, seen)
        if not files:
            raise DataError(f"class folder {str(folder / name)!r} has no images",
                            "add images to it or remove the folder (symlinked folders and "
                            "second copies of an image do not count)")
        samples.extend(Sample(p, label) for p in files)
    return samples


def _stratified_split(samples: list[Sample], fractions: Sequence[float], seed: int,
                      classes: list[str]) -> list[list[Sample]]:
    """Split per class with a seeded shuffle; every part gets at least one image of each class."""
    rng = random.Random(seed)
    parts: list[list[Sample]] = [[] for _ in range(len(fractions) + 1)]
    for label, name in enumerate(classes):
        items = [s for s in samples if s.label == label]
        rng.shuffle(items)
        sizes = [max(1, round(f * len(items))) if f > 0 else 0 for f in fractions]
        if sum(sizes) >= len(items):
            need = sum(1 for f in fractions if f > 0) + 1
            raise DataError(f"class {name!r} has {len(items)} images, too few for this split",
                            f"give each class at least {need} images, or lower the val/test "
                            "fractions, or provide train/ and val/ folders")
        start = 0
        for i, size in enumerate(sizes):
            parts[i + 1].extend(items[start:start + size])
            start += size
        parts[0].extend(items[start:])
    return parts


def discover(root: str | Path, val_fraction: float = 0.2, test_fraction: float = 0.2,
             seed: int = 0) -> Splits:
    """Read an image folder: ``root/train|val|test/<class>/*`` or ``root/<class>/*``.

    Without a ``val/`` (or ``test/``) folder, a stratified seeded split of the training images
    takes its place. Raises ``DataError`` with a fix for every unusable layout.
    Symlinks (DATA = ``realpath(root)``): links to files are followed wherever they point;
    symlinked folders, at the class level or deeper, are never followed (inside DATA they would
    count images twice or under another label, outside it they reach system paths): each is
    listed once in ``skipped`` with its reason, and is no class. A ``train/``, ``val/`` or
    ``test/`` that is a symlinked folder is a ``DataError``. One real file counts once: later
    copies (order train, val, test; sorted walk) are skipped as duplicates.
    """
    root = Path(root)
    if not root.exists():
        raise DataError(f"folder {str(root)!r} does not exist", "check the path")
    if not root.is_dir():
        raise DataError(f"{str(root)!r} is a file, not a folder",
                        "pass the folder that holds one sub-folder per class")
    data = os.path.realpath(root)
    skipped: list[Skipped] = []
    seen: dict[str, str] = {}  # real path -> first path: one real file counts once
    explicit = (root / "train").is_dir()
    for split in SPLIT_NAMES if explicit else ():
        if (root / split).is_symlink() and (root / split).is_dir():
            raise DataError(f"{str(root / split)!r} is a symlinked folder: not followed",
                            f"replace the link by the folder it points to, "
                            f"{os.path.realpath(root / split)!r}")
    train_dir = root / "train" if explicit else root
    classes, note = _class_folders(train_dir, data, skipped)
    if not classes:
        raise DataError(f"no class folders in {str(train_dir)!r}{note}",
                        "put images in one sub-folder per class, e.g. DATA/cats, DATA/dogs")
    if len(classes) < 2:
        raise DataError(f"only one class ({classes[0]!r}) in {str(train_dir)!r}{note}",
                        "a classifier needs at least two class folders")
    train = _scan_split(train_dir, classes, data, skipped, seen)
    given: dict[str, list[Sample]] = {}
    for split in ("val", "test"):
        folder = root / split
        if explicit and folder.is_dir():
            found, note = _class_folders(folder, data, skipped)
            if found != classes:
                extra = sorted(set(found) - set(classes))
                lacking = sorted(set(classes) - set(found))
                raise DataError(f"{split}/ classes differ from train/ (extra: {extra}, "
                                f"missing: {lacking}){note}",
                                "use the same class folders in train/, val/ and test/")
            given[split] = _scan_split(folder, classes, data, skipped, seen)
    fractions = [val_fraction if "val" not in given else 0.0,
                 test_fraction if ("test" not in given and not explicit) else 0.0]
    parts = _stratified_split(train, fractions, seed, classes)
    splits = Splits(classes, parts[0], given.get("val", parts[1]), given.get("test", parts[2]),
                    skipped, explicit)
    log.info("data %s: %d classes, %s", root, len(classes), splits.counts())
    return splits


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode (palette, alpha, 16-bit, CMYK, ...) to 8-bit RGB on a white background."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # float32 and in place: a 32-bit image near PIL's pixel limit must not need gigabytes
        arr = np.array(img, dtype=np.float32)
        np.nan_to_num(arr, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
        lo, hi = float(arr.min()), float(arr.max())
        if hi > lo:
            with np.errstate(over="ignore", invalid="ignore"):  # extreme floats: clipped below
                arr -= np.float32(lo)
                arr *= np.float32(255.0 / (hi - lo))
            np.clip(arr, 0.0, 255.0, out=arr)
        else:
            arr.fill(0.0)
        img = Image.fromarray(arr.astype(np.uint8), mode="L")
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "PA"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    return img.convert("RGB") if img.mode != "RGB" else img


def load_image(source: str | Path | bytes, draft_size: int | None = None) -> Image.Image:
    """Decode an image file (or its bytes) to RGB, EXIF orientation applied, first frame only.

    ``draft_size`` lets JPEG decode at a reduced scale no smaller than that size (fast).
    Raises ``BadImageError`` for anything that is not a decodable image.
    """
    name = "<bytes>" if isinstance(source, bytes) else str(source)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "Corrupt EXIF data" etc.: still usable
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            fh = io.BytesIO(source) if isinstance(source, bytes) else _open_file(source)
            with fh, Image.open(fh, formats=_open_formats()) as img:
                if draft_size and img.format == "JPEG":
                    img.draft("RGB", (draft_size, draft_size))
                img.load()
                img = ImageOps.exif_transpose(img) or img
                return _to_rgb(img)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise BadImageError(f"{name}: too many pixels (decompression bomb guard): {exc}",
                            "shrink the image or remove it") from exc
    except Exception as exc:  # any decoder failure on a hostile file is a bad image, not a crash
        raise BadImageError(f"{name}: {_failure_reason(source, exc)}",
                            "re-export or remove the file") from exc


# Only the decoders of IMAGE_EXTENSIONS are tried (never e.g. EPS, which runs Ghostscript).
_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "DIB", "WEBP", "TIFF", "PPM")


def _open_file(path: str | Path) -> io.BufferedReader:
    if not stat.S_ISREG(os.stat(path).st_mode):  # a FIFO or device would block or never end
        raise ValueError("not a regular file")
    return open(path, "rb")


def _open_formats() -> list[str]:
    Image.init()
    return [f for f in _FORMATS if f in Image.OPEN]


def _failure_reason(source: str | Path | bytes, exc: Exception) -> str:
    """A short human reason for a decode failure (without the file name)."""
    if _is_empty(source):
        return "empty file"
    if isinstance(exc, UnidentifiedImageError):
        return "not an image (unrecognised or unsupported format)"
    if isinstance(exc, MemoryError):
        return "out of memory while decoding"
    if isinstance(exc, OSError) and exc.strerror:  # FileNotFoundError, PermissionError, ...
        return f"cannot read file: {exc.strerror}"
    text = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
    if "truncated" in text:
        return f"truncated file: {text}"
    return f"corrupt image: {text}"


def _is_empty(source: str | Path | bytes) -> bool:
    if isinstance(source, bytes):
        return not source
    try:
        st = os.stat(source)
        return stat.S_ISREG(st.st_mode) and st.st_size == 0
    except OSError:
        return False


@dataclass(frozen=True)
class AugmentConfig:
    """Keras-tutorial augmentation; each part can be switched off (0 or False)."""

    rotation: float = 40.0  # degrees
    shift: float = 0.2  # fraction of width/height
    shear: float = 0.2  # radians (about 11.5 degrees)
    zoom: float = 0.2  # scale in [1-zoom, 1+zoom]
    hflip: bool = True
    fill: float = 0.0  # constant fill, on the 0..255 scale

    def as_dict(self) -> dict[str, Any]:
        return {"rotation": self.rotation, "shift": self.shift, "shear": self.shear,
                "zoom": self.zoom, "hflip": self.hflip, "fill": self.fill}


def _resize_crop(pre: dict[str, Any]) -> list[Any]:
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import v2

    size = int(pre["image_size"])
    interp = InterpolationMode(pre.get("interpolation", "bilinear"))
    return [v2.Resize(int(round(size / pre.get("crop_pct", 1.0))), interpolation=interp,
                      antialias=True), v2.CenterCrop(size)]


def _to_tensor(pre: dict[str, Any]) -> list[Any]:
    from torchvision.transforms import v2

    return [v2.PILToTensor(), v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(mean=list(pre["mean"]), std=list(pre["std"]))]


def eval_transform(pre: dict[str, Any]) -> Any:
    """Resize the short side to size/crop_pct, centre-crop, scale, normalise."""
    from torchvision.transforms import v2

    return v2.Compose([*_resize_crop(pre), *_to_tensor(pre)])


AUGMENT_POLICIES = ("classic", "mild", "trivialwide", "none")
#: ``mild``: smaller affine changes than the classic (Keras-tutorial) recipe, no shear.
MILD = AugmentConfig(rotation=10.0, shift=0.1, shear=0.0, zoom=0.1, hflip=True)


def augment_ops(aug: AugmentConfig | None, policy: str = "classic") -> list[Any]:
    """The random augmentation ops of ``policy`` (they work on PIL images and tensors):
    ``classic`` = ``aug``, ``mild`` = :data:`MILD`, ``trivialwide`` = torchvision's
    TrivialAugmentWide + flips, ``none`` (or ``aug`` None) = no augmentation."""
    import math

    from torchvision.transforms import v2

    if policy not in AUGMENT_POLICIES:
        raise ConfigError(f"augment_policy={policy!r} is not one of {list(AUGMENT_POLICIES)}",
                          "pass --augment-policy " + "|".join(AUGMENT_POLICIES))
    if aug is None or policy == "none":
        return []
    if policy == "trivialwide":
        return [v2.TrivialAugmentWide(fill=int(aug.fill)), v2.RandomHorizontalFlip()]
    if policy == "mild":
        aug = MILD
    ops: list[Any] = []
    if aug.rotation or aug.shift or aug.shear or aug.zoom:
        shear = math.degrees(aug.shear)
        ops.append(v2.RandomAffine(
            degrees=aug.rotation, translate=(aug.shift, aug.shift) if aug.shift else None,
            scale=(1 - aug.zoom, 1 + aug.zoom) if aug.zoom else None,
            shear=(-shear, shear, -shear, shear) if aug.shear else None,
            fill=int(aug.fill)))
    if aug.hflip:
        ops.append(v2.RandomHorizontalFlip())
    return ops


def train_transform(pre: dict[str, Any], aug: AugmentConfig | None,
                    policy: str = "classic") -> Any:
    """``eval_transform`` plus the augmentation of ``policy`` (see :func:`augment_ops`;
    ``classic``: random affine (rotation, shift, shear, zoom) and flips from ``aug``)."""
    from torchvision.transforms import v2

    ops = augment_ops(aug, policy)
    if not ops:
        return eval_transform(pre)
    return v2.Compose([*_resize_crop(pre), *ops, *_to_tensor(pre)])


class ImageDataset(torch.utils.data.Dataset):
    """Samples -> (tensor, label, index); a bad image yields (None, label, index, reason)."""

    def __init__(self, samples: Sequence[Sample], transform: Any,
                 draft_size: int | None = None) -> None:
        self.samples = list(samples)
        self.transform = transform
        self.draft_size = draft_size

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Any, ...]:
        sample = self.samples[index]
        try:
            img = load_image(sample.path, self.draft_size)
            return self.transform(img), sample.label, index, ""
        except BadImageError as exc:  # the reason alone: the path travels next to it
            return None, sample.label, index, exc.message.removeprefix(f"{sample.path}: ")
        except Exception as exc:  # a transform failing on a strange image must not kill the run
            return None, sample.label, index, f"cannot transform: {type(exc).__name__}: {exc}"


def collate_skip(batch: list[tuple[Any, ...]]) -> dict[str, Any]:
    """Stack the good images; report the bad ones as (index, reason)."""
    good = [b for b in batch if b[0] is not None]
    images = torch.stack([b[0] for b in good]) if good else torch.empty(0)
    return {"images": images,
            "labels": torch.tensor([b[1] for b in good], dtype=torch.long),
            "indices": torch.tensor([b[2] for b in good], dtype=torch.long),
            "failures": [(b[2], b[3]) for b in batch if b[0] is None]}

