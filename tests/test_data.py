"""The data layer on hostile input: bad files are reported, never crash, never eat memory."""
from __future__ import annotations

import functools
import io
import os
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from graftwork.data.images import ImageDataset, collate_skip, load_image
from graftwork.data.discover import Sample, Skipped, discover, list_images
from graftwork.data.preprocess import Preprocessing
from graftwork.errors import BadImageError, DataError
from tests.conftest import make_image_folder


# ------------------------------------------------------------------------------ file makers
def _noise(size: int = 20, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))


def _encode(img: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb_png(side: int = 20_000) -> bytes:
    """A valid 1-bit ``side`` x ``side`` PNG (400M pixels at 20000) that compresses to ~50 KB."""
    row = b"\x00" * (1 + (side + 7) // 8)  # filter byte + packed bits
    comp = zlib.compressobj(9)
    body = b"".join(comp.compress(row * 1000) for _ in range(side // 1000)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)  # 1-bit greyscale
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", body)
            + _png_chunk(b"IEND", b""))


@functools.lru_cache(maxsize=None)
def bad_files() -> dict[str, bytes]:
    """name -> content of files with an image extension that must be skipped."""
    jpg, png = _encode(_noise(64), "JPEG"), _encode(_noise(64), "PNG")
    return {
        "zero_bytes.jpg": b"",
        "zero_bytes.png": b"",
        "truncated.jpg": jpg[: len(jpg) // 2],
        "truncated.png": png[: len(png) // 2],
        "text_named.jpg": b"this is not an image at all\n",
        "html_named.png": b"<html><body>404 not found</body></html>",
        "bomb.png": bomb_png(),
    }


@functools.lru_cache(maxsize=None)
def odd_good_files() -> dict[str, bytes]:
    """name -> content of unusual but valid images that must load as RGB."""
    palette = _noise().convert("P", palette=Image.Palette.ADAPTIVE)
    frames = [_noise(seed=i) for i in range(3)]
    gif = io.BytesIO()
    frames[0].save(gif, "GIF", save_all=True, append_images=frames[1:])
    sixteen = Image.fromarray((np.arange(400, dtype=np.uint16) * 150).reshape(20, 20))
    return {
        "cmyk.jpg": _encode(_noise().convert("CMYK"), "JPEG"),
        "sixteen_bit.png": _encode(sixteen, "PNG"),
        "palette_transparent.png": _encode(palette, "PNG", transparency=0),
        "rgba.png": _encode(_noise().convert("RGBA"), "PNG"),
        "grey_alpha.png": _encode(_noise().convert("LA"), "PNG"),
        "animated.gif": gif.getvalue(),
        "tiny_1x1.png": _encode(_noise(1), "PNG"),
        "huge_1500.jpg": _encode(_noise(1500), "JPEG", quality=50),
        "float.tif": _encode(Image.fromarray(np.random.default_rng(0).random((20, 20))
                                             .astype(np.float32)), "TIFF"),
        "jpeg named.png": _encode(_noise(), "JPEG"),  # wrong extension, still an image
        "ünïcødé naмe 猫.png": _encode(_noise(), "PNG"),
    }


# ------------------------------------------------------------------------------ load_image
@pytest.mark.parametrize("name", list(bad_files()))
def test_bad_image_is_a_bad_image_error(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(bad_files()[name])
    with pytest.raises(BadImageError) as err:
        load_image(path, 32)
    assert str(path) in err.value.message and err.value.fix
    expected = {"zero_bytes": "empty file", "truncated": "truncated", "text_named": "not an image",
                "html_named": "not an image", "bomb": "too many pixels"}
    assert expected[name.split(".")[0]] in err.value.message


@pytest.mark.parametrize("name", list(odd_good_files()))
def test_odd_images_load_as_rgb(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(odd_good_files()[name])
    img = load_image(path, 32)
    assert img.mode == "RGB" and min(img.size) >= 1


def test_palette_transparency_goes_on_white(tmp_path: Path) -> None:
    img = Image.new("P", (4, 4), 0)
    img.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    img.putpixel((0, 0), 1)
    img.save(tmp_path / "p.png", transparency=0)
    out = np.asarray(load_image(tmp_path / "p.png"))
    assert tuple(out[0, 0]) == (255, 0, 0) and tuple(out[1, 1]) == (255, 255, 255)


def test_sixteen_bit_keeps_its_range(tmp_path: Path) -> None:
    arr = np.array([[0, 65535]], dtype=np.uint16)
    Image.fromarray(arr).save(tmp_path / "s.png")
    out = np.asarray(load_image(tmp_path / "s.png"))
    assert out[0, 0, 0] == 0 and out[0, 1, 0] == 255


def test_animated_gif_gives_first_frame(tmp_path: Path) -> None:
    frames = [Image.new("RGB", (8, 8), c) for c in ((250, 0, 0), (0, 250, 0))]
    frames[0].save(tmp_path / "a.gif", save_all=True, append_images=frames[1:])
    r, g, _ = np.asarray(load_image(tmp_path / "a.gif"))[4, 4]
    assert r > 200 and g < 50


def test_decompression_bomb_is_refused_before_decoding(tmp_path: Path) -> None:
    import resource

    path = tmp_path / "bomb.png"
    path.write_bytes(bomb_png(40_000))  # 1.6G pixels: 4.8 GB as RGB
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(BadImageError, match="too many pixels"):
        load_image(path)
    grown_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown_kb < 200_000  # far less than decoding it would take (KB on Linux)


def test_pil_bomb_warning_zone_is_skipped_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _noise(40).save(tmp_path / "big.png")  # 1600 pixels: between the limit and twice it
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(BadImageError, match="too many pixels"):
        load_image(tmp_path / "big.png")


def test_load_image_from_bytes_and_missing_file(tmp_path: Path) -> None:
    assert load_image(_encode(_noise(), "PNG")).size == (20, 20)
    with pytest.raises(BadImageError, match="empty file"):
        load_image(b"")
    with pytest.raises(BadImageError, match="cannot read file"):
        load_image(tmp_path / "nope.png")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_fifo_is_not_opened(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe.png")  # opening it would block forever
    with pytest.raises(BadImageError, match="not a regular file"):
        load_image(tmp_path / "pipe.png")
    skipped: list[Skipped] = []
    assert list_images(tmp_path, skipped) == []
    assert skipped == [Skipped(str(tmp_path / "pipe.png"), "not a regular file")]


def test_eps_with_image_extension_is_not_run_through_ghostscript(tmp_path: Path) -> None:
    path = tmp_path / "evil.png"
    path.write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n")
    with pytest.raises(BadImageError, match="not an image"):
        load_image(path)


# ------------------------------------------------------------------------------ dataset
def test_dataset_and_collate_skip_bad_files(tmp_path: Path) -> None:
    from graftwork.data.transforms import eval_transform

    files = {**bad_files(), **odd_good_files()}
    samples = []
    for i, (name, content) in enumerate(sorted(files.items())):
        (tmp_path / name).write_bytes(content)
        samples.append(Sample(str(tmp_path / name), i % 2))
    pre = Preprocessing(16, (0.5,) * 3, (0.5,) * 3, interpolation="bilinear", crop_pct=1.0)
    loader = torch.utils.data.DataLoader(ImageDataset(samples, eval_transform(pre)),
                                         batch_size=5, collate_fn=collate_skip)
    good, failures = 0, []
    for batch in loader:
        assert batch["images"].shape[1:] == (3, 16, 16) or not len(batch["indices"])
        good += len(batch["indices"])
        failures += batch["failures"]
    assert good == len(odd_good_files())
    failed = {Path(samples[i].path).name: reason for i, reason in failures}
    assert set(failed) == set(bad_files())
    assert all(reason and not reason.startswith(str(tmp_path)) for reason in failed.values())


def test_dataset_survives_a_failing_transform(tmp_path: Path) -> None:
    _noise().save(tmp_path / "a.png")

    def boom(img: Image.Image) -> torch.Tensor:
        raise RuntimeError("weird")

    item = ImageDataset([Sample(str(tmp_path / "a.png"), 0)], boom)[0]
    assert item[0] is None and "weird" in item[3]


# ------------------------------------------------------------------------------ hypothesis
_VALID = [_encode(_noise(8), "PNG"), _encode(_noise(8), "JPEG"), _encode(_noise(8), "GIF"),
          _encode(_noise(8), "BMP"), _encode(_noise(8), "TIFF"), _encode(_noise(8), "WEBP")]


@st.composite
def hostile_bytes(draw: st.DrawFn) -> bytes:
    """Random bytes, a valid header followed by junk, or a valid image with bytes flipped/cut."""
    kind = draw(st.sampled_from(["random", "header", "mutate"]))
    if kind == "random":
        return draw(st.binary(max_size=2048))
    base = draw(st.sampled_from(_VALID))
    if kind == "header":
        keep = draw(st.integers(0, min(64, len(base))))
        return base[:keep] + draw(st.binary(max_size=1024))
    data = bytearray(base)
    for _ in range(draw(st.integers(1, 8))):
        pos = draw(st.integers(0, len(data) - 1))
        data[pos] = draw(st.integers(0, 255))
    return bytes(data[: draw(st.integers(0, len(data)))])


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(content=hostile_bytes(), ext=st.sampled_from([".png", ".jpg", ".gif", ".webp", ".tif"]))
def test_random_bytes_never_crash_the_data_layer(tmp_path: Path, content: bytes, ext: str) -> None:
    path = tmp_path / f"fuzz{ext}"
    path.write_bytes(content)
    try:
        img = load_image(path, 16)
        assert img.mode == "RGB" and img.size[0] >= 1 and img.size[1] >= 1
    except BadImageError as exc:
        assert exc.message.startswith(str(path))
    from graftwork.data.transforms import eval_transform

    pre = Preprocessing(8, (0.5,) * 3, (0.5,) * 3, interpolation="bilinear", crop_pct=1.0)
    item = ImageDataset([Sample(str(path), 1)], eval_transform(pre), draft_size=8)[0]
    assert (item[0] is None and item[3]) or tuple(item[0].shape) == (3, 8, 8)
    batch = collate_skip([item])
    assert len(batch["indices"]) + len(batch["failures"]) == 1


# ------------------------------------------------------------------------------ folders
def _two_classes(root: Path, n: int = 6) -> Path:
    return make_image_folder(root, classes=2, counts={"": n}, size=16)


def test_discover_ignores_hidden_and_lists_non_images(tmp_path: Path) -> None:
    root = _two_classes(tmp_path / "d")
    (root / ".hidden_class").mkdir()
    _noise().save(root / ".hidden_class" / "x.png")
    (root / "class_0" / ".thumbs").mkdir()
    _noise().save(root / "class_0" / ".thumbs" / "x.png")
    (root / "class_0" / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (root / "class_0" / "._img_0.png").write_bytes(b"\x00\x05\x16\x07AppleDouble")
    (root / "class_0" / "notes.txt").write_text("labels are folders")
    (root / "class_1" / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0")
    splits = discover(root, 0.0, 0.0)
    assert splits.classes == ["class_0", "class_1"]
    assert len(splits.train) == 12 and not any("/." in s.path for s in splits.train)
    reasons = {Path(s.path).name: s.reason for s in splits.skipped}
    assert reasons == {"notes.txt": "not an image file (extension)", "Thumbs.db": "system file"}


def test_unicode_and_space_names(tmp_path: Path) -> None:
    root = tmp_path / "dätä sèt"
    for c in ("chat noir", "猫"):
        (root / c).mkdir(parents=True)
        for i in range(4):
            _noise(seed=i).save(root / c / f"ïmage {i} ✓.png")
    splits = discover(root, 0.25, 0.0)
    assert splits.classes == ["chat noir", "猫"]
    assert all(load_image(s.path).mode == "RGB" for s in splits.train + splits.val)


@pytest.mark.skipif(sys.platform == "win32", reason="symlinks")
def test_file_symlinks_followed_folder_symlinks_reported(tmp_path: Path) -> None:
    # Issue 11.3 changed this test: a symlinked folder outside DATA ("linked_dir") used to be
    # followed (in_linked_dir.png counted); it is now reported and not followed.
    root = _two_classes(tmp_path / "d", n=4)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    _noise().save(elsewhere / "linked_file.png")
    (elsewhere / "sub").mkdir()
    _noise().save(elsewhere / "sub" / "in_linked_dir.png")
    os.symlink(elsewhere / "linked_file.png", root / "class_0" / "link.png")
    os.symlink(elsewhere / "sub", root / "class_0" / "linked_dir")
    os.symlink(root / "class_0", root / "class_0" / "loop")  # points at its own parent
    os.symlink(tmp_path / "gone.png", root / "class_1" / "broken.png")
    skipped: list[Skipped] = []
    names = sorted(p.name for p in list_images(root / "class_0", skipped))
    assert names == ["img_0_0.png", "img_0_1.png", "img_0_2.png", "img_0_3.png", "link.png"]
    loop = "symlink loop: points to a folder that contains it"
    outside = "symlinked folder outside the data folder: not followed"
    assert skipped == [Skipped(str(root / "class_0" / "linked_dir"), outside),
                       Skipped(str(root / "class_0" / "loop"), loop)]
    splits = discover(root, 0.0, 0.0)
    assert len(splits.train) == 5 + 4
    assert {Path(s.path).name: s.reason for s in splits.skipped} == {
        "loop": loop, "linked_dir": outside, "broken.png": "broken symlink"}
    assert len(splits.skipped) == 3


def _expect_data_error(root: Path, match: str, **kw: float) -> DataError:
    with pytest.raises(DataError, match=match) as err:
        discover(root, **kw)
    assert err.value.fix
    return err.value


def test_bad_folders_raise_data_errors_with_a_fix(tmp_path: Path) -> None:
    _expect_data_error(tmp_path / "missing", "does not exist")
    (tmp_path / "file.png").write_bytes(b"x")
    _expect_data_error(tmp_path / "file.png", "is a file")
    (tmp_path / "flat").mkdir()
    _noise().save(tmp_path / "flat" / "a.png")
    _expect_data_error(tmp_path / "flat", "no class folders")
    one = make_image_folder(tmp_path / "one", classes=1, counts={"": 5})
    _expect_data_error(one, "only one class")
    empty = _two_classes(tmp_path / "empty")
    (empty / "class_2").mkdir()
    (empty / "class_2" / "readme.txt").write_text("nothing here")
    _expect_data_error(empty, "class_2.*has no images")
    few = _two_classes(tmp_path / "few", n=2)
    err = _expect_data_error(few, "'class_0' has 2 images, too few", val_fraction=0.2,
                             test_fraction=0.2)
    assert "at least 3" in err.fix


def test_train_val_test_class_sets_must_match(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "d", classes=3, counts={"train": 3, "val": 2, "test": 2})
    import shutil

    shutil.rmtree(root / "val" / "class_2")
    (root / "test" / "class_9").mkdir()
    _noise().save(root / "test" / "class_9" / "x.png")
    err = _expect_data_error(root, "val/ classes differ")
    assert "missing: ['class_2']" in err.message
    shutil.copytree(root / "train" / "class_2", root / "val" / "class_2")
    err = _expect_data_error(root, "test/ classes differ")
    assert "extra: ['class_9']" in err.message


def test_explicit_split_with_an_empty_val_class(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "d", classes=2, counts={"train": 3, "val": 2})
    for f in (root / "val" / "class_1").iterdir():
        f.unlink()
    _expect_data_error(root, "val.*class_1.*has no images")
