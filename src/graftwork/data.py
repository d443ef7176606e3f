"""Image folders: robust decoding, transforms, datasets. Finding classes and splits lives in
:mod:`graftwork._discover`; its names are importable from here."""
from __future__ import annotations

import io
import logging
import os
import stat
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from graftwork._discover import (IMAGE_EXTENSIONS, SPLIT_NAMES, Sample, Skipped, Splits,
                                 _stratified_split, discover, list_images)
from graftwork.errors import BadImageError, ConfigError

__all__ = [
    "IMAGE_EXTENSIONS", "SPLIT_NAMES", "Sample", "Splits", "Skipped", "discover", "list_images",
    "_stratified_split", "load_image",
    "ImageDataset", "collate_skip", "eval_transform", "train_transform", "AugmentConfig",
    "augment_ops", "AUGMENT_POLICIES",
]

log = logging.getLogger(__name__)

ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is an error, not a grey image


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

