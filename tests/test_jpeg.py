"""Fast JPEG path: pixel-identical to load_image(path, draft_size) or None (fall back to PIL)."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from graftwork import _jpeg
from graftwork._jpeg import decode_scaled, draft_scale, jpeg_info
from graftwork.data import load_image

pytest.importorskip("simplejpeg")


def _picture(w: int, h: int, seed: int = 0) -> np.ndarray:
    """Smooth colour noise (compresses like a photo, unlike pure noise)."""
    rng = np.random.default_rng(seed)
    small = (rng.random((h // 8 + 2, w // 8 + 2, 3)) * 255).astype(np.uint8)
    return np.asarray(Image.fromarray(small).resize((w, h), Image.BICUBIC))


def _encode(arr: np.ndarray, mode: str = "RGB", **save: object) -> bytes:
    buf = io.BytesIO()
    img = Image.fromarray(arr)
    img = img.convert(mode) if mode != "RGB" else img
    img.save(buf, "JPEG", quality=90, **save)
    return buf.getvalue()


SIZES = [(400, 400), (447, 300), (449, 260), (1000, 700), (640, 1280), (64, 48), (9, 5)]


@pytest.mark.parametrize("progressive", [False, True])
@pytest.mark.parametrize("subsampling", [0, 2])  # 4:4:4 and 4:2:0
@pytest.mark.parametrize(("w", "h"), SIZES)
def test_pixel_identical_to_pil_draft(w, h, progressive, subsampling):
    data = _encode(_picture(w, h), progressive=progressive, subsampling=subsampling)
    for min_side in (None, 256, 224, 100, 32):
        fast = decode_scaled(data, min_side)
        ref = np.asarray(load_image(data, draft_size=min_side))
        assert fast is not None and fast.dtype == np.uint8
        assert fast.shape == ref.shape, (min_side, fast.shape, ref.shape)
        assert np.array_equal(fast, ref)  # same libjpeg-turbo, same IDCT and upsampling


def test_reduced_scale_matches_draft_rule():
    data = _encode(_picture(1000, 700))
    assert decode_scaled(data, 224).shape == (350, 500, 3)  # 700 // 224 = 3 -> 1/2
    assert decode_scaled(data, 100).shape == (175, 250, 3)  # 700 // 100 = 7 -> 1/4
    assert decode_scaled(data, 10).shape == (88, 125, 3)  # 1/8 (ceil)
    assert draft_scale(447, 300, 224) == 1 and draft_scale(449, 449, 224) == 2
    assert draft_scale(10, 10, 224) == 1 and draft_scale(5000, 5000, 224) == 8


def test_path_and_grayscale(tmp_path: Path):
    path = tmp_path / "g.jpg"
    path.write_bytes(_encode(_picture(120, 90), mode="L"))
    assert jpeg_info(path.read_bytes())["components"] == 1
    fast = decode_scaled(path, 40)
    ref = np.asarray(load_image(path, draft_size=40))
    assert fast.shape == ref.shape == (45, 60, 3)
    assert np.array_equal(fast, ref)
    assert np.array_equal(fast[..., 0], fast[..., 2])


def test_cmyk_is_left_to_pil():
    data = _encode(_picture(64, 64), mode="CMYK")
    assert jpeg_info(data)["components"] == 4
    assert decode_scaled(data, 32) is None
    assert load_image(data).mode == "RGB"  # PIL handles it


def _with_orientation(data: bytes, orientation: int) -> bytes:
    img = Image.open(io.BytesIO(data))
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90, exif=exif.tobytes())
    return buf.getvalue()


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_rotated_is_left_to_pil(orientation):
    data = _with_orientation(_encode(_picture(80, 40)), orientation)
    assert jpeg_info(data)["orientation"] == orientation
    assert decode_scaled(data, 32) is None


def test_exif_orientation_1_still_fast():
    data = _with_orientation(_encode(_picture(80, 40)), 1)
    fast = decode_scaled(data, None)
    assert fast is not None and np.array_equal(fast, np.asarray(load_image(data)))


@pytest.mark.parametrize("cut", [0.3, 0.6, 0.95])
def test_truncated_and_garbage_give_none(cut):
    data = _encode(_picture(200, 150))
    assert decode_scaled(data[: int(len(data) * cut)], 64) is None
    assert decode_scaled(data[:50], 64) is None
    assert decode_scaled(b"\xff\xd8\xff" + b"\x00" * 100, 64) is None
    assert decode_scaled(b"", 64) is None


def test_not_a_jpeg_gives_none(tmp_path: Path):
    buf = io.BytesIO()
    Image.fromarray(_picture(32, 32)).save(buf, "PNG")
    assert decode_scaled(buf.getvalue(), 16) is None
    assert decode_scaled(tmp_path / "missing.jpg", 16) is None


def test_without_simplejpeg(monkeypatch):
    monkeypatch.setattr(_jpeg, "_simplejpeg", lambda: None)
    assert not _jpeg.available()
    assert decode_scaled(_encode(_picture(32, 32)), 16) is None
