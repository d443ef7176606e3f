"""Fast JPEG decoding with libjpeg-turbo DCT scaling (optional ``simplejpeg``, the ``fast`` extra).

``decode_scaled(source, min_side)`` decodes to an HxWx3 uint8 RGB array at the same reduced scale
PIL's ``draft`` picks (1/2, 1/4 or 1/8, keeping both sides >= ``min_side``), or returns None when
the caller must use PIL instead: not a JPEG, CMYK/YCCK, not 8-bit, an EXIF orientation other than
1, a corrupt or truncated file, or ``simplejpeg`` not installed. It never raises for bad input.
"""
from __future__ import annotations

import logging
import os
import struct
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["available", "decode_scaled", "draft_scale", "jpeg_info"]

log = logging.getLogger(__name__)

_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_STANDALONE = {0x01, *range(0xD0, 0xD8)}  # TEM, RST0-7: no length field
_MAX_HEADER = 1 << 20  # look for SOF/APP1 only in the first MiB


def available() -> bool:
    """Whether the fast path can be used at all (``simplejpeg`` importable)."""
    return _simplejpeg() is not None


def _simplejpeg() -> Any:
    try:
        import simplejpeg
    except ImportError:
        return None
    return simplejpeg


def draft_scale(width: int, height: int, min_side: int | None) -> int:
    """The reduction PIL's ``Image.draft`` picks for a ``(min_side, min_side)`` request."""
    if not min_side:
        return 1
    scale = min(width // min_side, height // min_side)
    for s in (8, 4, 2, 1):
        if scale >= s:
            return s
    return 1


def _exif_orientation(seg: bytes) -> int:
    """Orientation tag (0x0112) of IFD0 in an APP1 Exif payload; 1 when absent, -1 if unreadable."""
    tiff = seg[6:]
    if len(tiff) < 8 or tiff[:2] not in (b"II", b"MM"):
        return -1
    end = "<" if tiff[:2] == b"II" else ">"
    try:
        ifd = struct.unpack(end + "I", tiff[4:8])[0]
        count = struct.unpack(end + "H", tiff[ifd:ifd + 2])[0]
        for i in range(count):
            entry = tiff[ifd + 2 + 12 * i: ifd + 14 + 12 * i]
            tag, typ = struct.unpack(end + "HH", entry[:4])
            if tag == 0x0112:
                fmt = end + ("H" if typ == 3 else "I")
                return int(struct.unpack(fmt, entry[8:8 + struct.calcsize(fmt)])[0])
    except struct.error:
        return -1
    return 1


def jpeg_info(data: bytes) -> dict[str, Any] | None:
    """Facts from the JPEG markers before the scan, or None if ``data`` is not a JPEG.

    Keys: ``width``, ``height``, ``components``, ``precision``, ``sof`` (marker byte),
    ``orientation`` (EXIF; 1 when absent, -1 when unreadable), ``adobe`` (APP14 present).
    """
    if data[:3] != b"\xff\xd8\xff":
        return None
    info: dict[str, Any] = {"orientation": 1, "adobe": False}
    pos, n = 2, min(len(data), _MAX_HEADER)
    while pos + 4 <= n:
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in _STANDALONE:
            pos += 2
            continue
        length = struct.unpack(">H", data[pos + 2:pos + 4])[0]
        seg = data[pos + 4:pos + 2 + length]
        if marker == 0xE1 and seg[:6] == b"Exif\x00\x00":
            orientation = _exif_orientation(seg)
            if info["orientation"] == 1:  # the first Exif block counts (as in PIL)
                info["orientation"] = orientation
        elif marker == 0xEE and seg[:5] == b"Adobe":
            info["adobe"] = True
        elif marker in _SOF and len(seg) >= 6:
            info.update(sof=marker, precision=seg[0], height=struct.unpack(">H", seg[1:3])[0],
                        width=struct.unpack(">H", seg[3:5])[0], components=seg[5])
        elif marker in (0xDA, 0xD9):  # start of scan / end of image
            break
        pos += 2 + length
    return info if "sof" in info else None


def _read(source: str | os.PathLike[str] | bytes) -> bytes | None:
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source)
    try:
        with open(Path(source), "rb") as fh:
            return fh.read()
    except OSError:
        return None


def decode_scaled(source: str | os.PathLike[str] | bytes, min_side: int | None) -> np.ndarray | None:
    """RGB uint8 (H, W, 3) decoded at PIL's draft scale for ``min_side``, or None (use PIL)."""
    sj = _simplejpeg()
    if sj is None:
        return None
    data = _read(source)
    if not data:
        return None
    info = jpeg_info(data)
    if (info is None or info["orientation"] != 1 or info["precision"] != 8
            or info["components"] not in (1, 3)):
        return None
    w, h = info["width"], info["height"]
    if not w or not h:  # height 0 means it is defined later by DNL: rare, let PIL handle it
        return None
    s = draft_scale(w, h, min_side)
    want = ((h + s - 1) // s, (w + s - 1) // s)
    try:
        _, _, colorspace, _ = sj.decode_jpeg_header(data)
        if str(colorspace).upper() in ("CMYK", "YCCK"):
            return None
        arr = sj.decode_jpeg(data, colorspace="RGB", min_factor=s, min_height=want[0],
                             min_width=want[1], strict=True)
    except (ValueError, RuntimeError, OSError, MemoryError) as exc:
        log.debug("fast JPEG decode failed, falling back to PIL: %s", exc)
        return None
    if arr.ndim != 3 or arr.shape[:2] != want or arr.shape[2] != 3 or arr.dtype != np.uint8:
        return None
    return arr
