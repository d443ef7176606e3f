"""Decoding image files robustly (any mode to RGB, EXIF orientation, bomb guard, a reason for
every failure) and the dataset that yields decoded, transformed images or the reason they failed."""
from __future__ import annotations

import io
import logging
import os
import stat
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from graftwork.data.discover import Sample
from graftwork.errors import BadImageError

__all__ = ["load_image", "ImageDataset", "collate_skip", "DECODING"]

log = logging.getLogger(__name__)

ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is an error, not a grey image


# Only the decoders of IMAGE_EXTENSIONS are tried (never e.g. EPS, which runs Ghostscript).
_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "DIB", "WEBP", "TIFF", "PPM")
_HIGH_DEPTH = ("I;16", "I;16B", "I;16L", "I", "F")

#: How :func:`load_image` decodes, step by step, in words an implementation can follow (an
#: exported model's ``preprocess.json`` carries it; README's onnxruntime recipe implements it).
DECODING: dict[str, str] = {
    "library": "Pillow: Image.open(file, formats=formats), the first frame only",
    "formats": ", ".join(_FORMATS),
    "jpeg_draft": "JPEG only: img.draft('RGB', (resize_short_side, resize_short_side)) before "
                  "img.load() (a reduced DCT scale, no side below resize_short_side)",
    "exif_orientation": "ImageOps.exif_transpose(img) after loading",
    "high_bit_depth": f"modes {', '.join(_HIGH_DEPTH)}: as float32, NaN and infinities -> 0, "
                      "then lo, hi = min, max; if hi > lo: (x - float32(lo)) * "
                      "float32(255 / (hi - lo)) clipped to 0..255, else 0; truncated to uint8, "
                      "mode L (per image: 16-bit images are stretched, not shifted by 8 bits)",
    "palette": "mode P: convert('RGBA') if 'transparency' in img.info, else convert('RGB')",
    "alpha": "modes RGBA, LA, PA: convert('RGBA'), then Image.alpha_composite over an opaque "
             "white RGBA image (transparent pixels become white)",
    "other_modes": "any other mode but RGB (L, 1, CMYK, YCbCr, LAB, I;16 after the above, ...): "
                   "convert('RGB')",
    "order": "jpeg_draft, load, exif_orientation, high_bit_depth, palette, alpha, other_modes",
}


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode (palette, alpha, 16-bit, CMYK, ...) to 8-bit RGB on a white background."""
    if img.mode in _HIGH_DEPTH:
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

