"""The README's onnxruntime recipe, run as written (issue 29, items 3 and 4): it decodes,
resizes and crops as graftwork does, so an export used without graftwork predicts what
``graft predict`` predicts; each export's side files are named after it and name it."""
from __future__ import annotations

import json
import platform
import re
import runpy
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from graftwork.data.preprocess import Preprocessing
from graftwork.deploy.export import ExportError, export_model, load_pixels
from graftwork.estimator.classifier import ImageClassifier
from tests.conftest import REPO, TINY, make_image_folder, train_tiny_run

MARKER = "<!-- recipe: predict_onnx.py"


def recipe(doc: Path) -> str:
    """The python block that follows the recipe marker in ``doc``."""
    text = doc.read_text(encoding="utf-8")
    found = re.search(re.escape(MARKER) + r".*?-->\s*```python\n(.*?)```", text, re.DOTALL)
    assert found, f"no recipe block in {doc}"
    return found.group(1)


def hostile_images(folder: Path) -> list[Path]:
    """Ordinary images graftwork decodes with care: alpha cut-outs (RGBA, LA, palette with a
    transparent index), 16-bit grayscale, CMYK and EXIF-rotated JPEGs, JPEGs large enough to
    decode at a reduced scale, odd sizes (centre-crop rounding)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    out: list[Path] = []

    def save(img: Image.Image, name: str, **kw: Any) -> None:
        img.save(folder / name, **kw)
        out.append(folder / name)

    yy, xx = np.mgrid[0:45, 0:61]
    inside = (yy - 22) ** 2 + (xx - 30) ** 2 < 18 ** 2
    for c, colour in enumerate([(220, 40, 40), (40, 200, 40), (40, 60, 220)]):
        rgb = np.clip(np.array(colour) + rng.normal(0, 25, (45, 61, 3)), 0, 255).astype(np.uint8)
        alpha = np.where(inside, 255, rng.integers(0, 60, (45, 61))).astype(np.uint8)
        save(Image.fromarray(np.dstack([rgb, alpha]), "RGBA"), f"cutout_{c}.png")
        save(Image.fromarray(np.dstack([rgb[..., c], alpha]), "LA"), f"la_{c}.png")
        pal = Image.fromarray(rgb[:33, :47]).quantize(16)
        save(pal, f"palette_{c}.png", transparency=3)
        save(pal, f"palette_{c}.gif", transparency=5)
        g16 = (rng.integers(0, 200, (31, 53)) * 50 + 1000 + 20000 * c).astype(np.uint16)
        save(Image.fromarray(g16), f"gray16_{c}.png")
        big = np.clip(np.array(colour) + rng.normal(0, 30, (300, 401, 3)), 0, 255).astype(np.uint8)
        save(Image.fromarray(big).convert("CMYK"), f"cmyk_{c}.jpg", quality=90)
        photo = Image.fromarray(big[:90, :150])
        exif = photo.getexif()
        exif[0x0112] = 6  # shown rotated by 90 degrees
        save(photo, f"rotated_{c}.jpg", exif=exif.tobytes(), quality=90)
        save(Image.fromarray(big), f"large_{c}.jpg", quality=85)
        save(Image.fromarray(big[:39, :58]), f"odd_{c}.bmp")
    modes = {Image.open(p).mode for p in out}
    assert {"RGBA", "LA", "P", "I;16", "CMYK"} <= modes, modes
    return out


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_tiny_run(tmp_path_factory.mktemp("recipe"))


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return hostile_images(tmp_path_factory.mktemp("hostile"))


def test_readme_and_docs_carry_the_same_recipe() -> None:
    assert recipe(REPO / "README.md") == recipe(REPO / "docs" / "export-serving.md")


def test_the_readme_recipe_predicts_what_graft_predicts(run: Path, images: list[Path],
                                                         tmp_path: Path) -> None:
    script = tmp_path / "predict_onnx.py"
    script.write_text(recipe(REPO / "README.md"))
    model = export_model(run, "onnx", tmp_path / "export" / "model.onnx").path
    ns = runpy.run_path(str(script), run_name="recipe")
    paths = [str(p) for p in images]
    classes, probs = ns["predict"](str(model), paths)
    clf = ImageClassifier.load(run)
    expected = clf.predict_proba(paths)
    assert classes == clf.classes_
    assert [classes[i] for i in probs.argmax(1)] == [r["label"] for r in clf.predict(paths)]
    np.testing.assert_allclose(probs, expected, rtol=0, atol=1e-4)
    # the recipe's input pixels are graftwork's, bit for bit
    _, pre = ns["load"](str(model))
    for path in images:
        np.testing.assert_array_equal(ns["pixels"](path, pre),
                                      load_pixels(path, clf.preprocessing_), err_msg=path.name)
    # as a script, the way the README runs it
    out = subprocess.run([sys.executable, str(script), str(model), *paths[:4]], check=True,
                         capture_output=True, text=True, timeout=120).stdout.splitlines()
    assert [line.split("\t")[1] for line in out] == [classes[i] for i in probs[:4].argmax(1)]


# torchvision's own condition for resizing bilinear uint8 natively (else in float)
NATIVE_BILINEAR = (torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")
                   or platform.machine() in ("aarch64", "arm64"))


@pytest.mark.skipif(not NATIVE_BILINEAR, reason="torchvision resizes bilinear uint8 in float here")
@pytest.mark.parametrize("size", [32, 224])
def test_the_recipe_resizes_bilinear_and_bicubic_as_graftwork(run: Path, images: list[Path],
                                                              tmp_path: Path, size: int) -> None:
    script = tmp_path / "predict_onnx.py"
    script.write_text(recipe(REPO / "README.md"))
    ns = runpy.run_path(str(script), run_name="recipe")
    export_model(run, "onnx", tmp_path / "m.onnx")
    spec = json.loads((tmp_path / "m.preprocess.json").read_text())
    for interpolation in ("bilinear", "bicubic"):
        pre = Preprocessing(size, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), interpolation)
        spec = {**spec, "image_size": size, "resize_short_side": pre.resize_size,
                "interpolation": interpolation}
        for path in images:
            np.testing.assert_array_equal(ns["pixels"](path, spec), load_pixels(path, pre),
                                          err_msg=f"{path.name} {interpolation}")


def test_exports_into_one_folder_keep_their_own_labels(run: Path, tmp_path: Path) -> None:
    other_data = make_image_folder(tmp_path / "other", classes=2, counts={"train": 4, "val": 2})
    other = ImageClassifier(**TINY, epochs=1, cache_dir=str(tmp_path / "cache")).fit(
        other_data).save(tmp_path / "other_run")
    out = tmp_path / "deploy"
    a = export_model(run, "onnx", out / "a.onnx")
    b = export_model(other, "onnx", out / "b.onnx")
    assert a.labels_path == out / "a.labels.txt" and b.labels_path == out / "b.labels.txt"
    assert a.labels_path.read_text().split() == ImageClassifier.load(run).classes_
    assert b.labels_path.read_text().split() == ["class_0", "class_1"]
    for res in (a, b):
        spec = json.loads(res.preprocess_path.read_text())
        assert spec["model"]["file"] == res.path.name
        assert spec["model"]["labels"] == res.labels_path.name
        assert len(spec["model"]["sha256"]) == 64
        assert {"decode", "resize"} <= set(spec) and "alpha" in spec["decode"]
    # another model file under the same name: its side files are not taken over
    with pytest.raises(ExportError, match="a.preprocess.json") as err:
        export_model(other, "torchscript", out / "a.pt")
    assert err.value.fix and not (out / "a.pt").exists()
    assert a.labels_path.read_text().split() == ImageClassifier.load(run).classes_
    # exporting the same name again replaces its own files
    again = export_model(other, "onnx", out / "a.onnx")
    assert again.labels_path.read_text().split() == ["class_0", "class_1"]


def test_the_recipe_refuses_side_files_of_another_model(run: Path, tmp_path: Path) -> None:
    script = tmp_path / "predict_onnx.py"
    script.write_text(recipe(REPO / "README.md"))
    ns = runpy.run_path(str(script), run_name="recipe")
    model = export_model(run, "onnx", tmp_path / "m.onnx").path
    model.write_bytes(model.read_bytes() + b"\0")  # replaced by some other file
    with pytest.raises(SystemExit, match="another"):
        ns["load"](str(model))
