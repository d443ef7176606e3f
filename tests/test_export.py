"""``graft export``: one verified ONNX / TorchScript file with uint8 pixels in, logits + probs out."""
from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from graftwork.deploy import export as export_mod
from graftwork.estimator.classifier import ImageClassifier
from graftwork.cli import main
from graftwork.deploy.export import ExportError, export_model
from tests.conftest import train_tiny_run


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_tiny_run(tmp_path_factory.mktemp("export"))


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_onnx_export_verifies_itself_and_carries_metadata(run: Path, tmp_path: Path) -> None:
    import onnx

    res = export_model(run, "onnx", tmp_path / "m.onnx")
    assert res.path.is_file() and res.format == "onnx"
    assert res.max_abs_logit_diff <= 1e-3 and res.agreement == 1.0
    assert res.image_source == "test" and res.n_images == 12 and res.batch_sizes == (1, 7)
    proto = onnx.load(str(res.path))
    meta = {p.key: p.value for p in proto.metadata_props}
    clf = ImageClassifier.load(run)
    assert json.loads(meta["classes"]) == clf.classes_
    assert meta["image_size"] == "32" and meta["backbone"] == "test_efficientnet"
    assert meta["strategy"] == "extract" and float(meta["test_accuracy"]) >= 0
    assert json.loads(meta["resize"])["crop"] == "center" and "torch_version" in meta
    assert len(json.loads(meta["mean"])) == 3 and len(json.loads(meta["std"])) == 3
    assert [i.name for i in proto.graph.input] == ["pixels"]
    assert [o.name for o in proto.graph.output] == ["logits", "probs"]
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert (tmp_path / "m.labels.txt").read_text().split() == clf.classes_
    spec = json.loads((tmp_path / "m.preprocess.json").read_text())
    assert spec["image_size"] == 32 and spec["resize_short_side"] >= 32
    assert spec["model"]["file"] == "m.onnx" and spec["model"]["labels"] == "m.labels.txt"
    assert _leftovers(tmp_path) == ["m.labels.txt", "m.onnx", "m.preprocess.json"]


def test_onnxruntime_alone_matches_predict(run: Path, tmp_path: Path) -> None:
    """PIL + numpy + onnxruntime, nothing of graftwork (the README recipe itself is run by
    tests/test_export_recipe.py)."""
    import onnxruntime as ort

    res = export_model(run, "onnx", tmp_path / "model.onnx")
    spec = json.loads((tmp_path / "model.preprocess.json").read_text())
    labels = (tmp_path / "model.labels.txt").read_text().splitlines()
    session = ort.InferenceSession(str(res.path), providers=["CPUExecutionProvider"])
    paths = sorted((run.parent / "data" / "test").rglob("*.png"))

    def pixels(path: Path) -> np.ndarray:
        img = Image.open(path).convert("RGB")
        scale = spec["resize_short_side"] / min(img.size)
        img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))),
                         Image.Resampling[spec["interpolation"].upper()])
        s = spec["image_size"]
        left, top = (img.width - s) // 2, (img.height - s) // 2
        return np.asarray(img.crop((left, top, left + s, top + s)), dtype=np.uint8)

    x = np.stack([pixels(p) for p in paths])
    (probs,) = session.run(["probs"], {"pixels": x})
    assert probs.shape == (len(paths), len(labels))
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
    expected = [r["label"] for r in ImageClassifier.load(run).predict([str(p) for p in paths])]
    assert [labels[i] for i in probs.argmax(1)] == expected


def test_torchscript_export_loads_with_its_metadata(run: Path, tmp_path: Path) -> None:
    res = export_model(run, "torchscript", tmp_path / "m.pt")
    assert res.max_abs_logit_diff <= 1e-3 and res.agreement == 1.0
    files = {"labels.txt": "", "preprocess.json": "", "metadata.json": ""}
    with warnings.catch_warnings():  # torch.jit.load is deprecated in favour of torch.export
        warnings.simplefilter("ignore", FutureWarning)
        module = torch.jit.load(str(res.path), _extra_files=files)
    text = {k: v.decode() if isinstance(v, bytes) else v for k, v in files.items()}
    assert text["labels.txt"].split() == ImageClassifier.load(run).classes_
    assert json.loads(text["preprocess.json"])["input"]["dtype"] == "uint8"
    x = torch.randint(0, 256, (5, 32, 32, 3), dtype=torch.uint8)
    logits, probs = module(x)
    assert logits.shape == probs.shape == (5, 3)
    torch.testing.assert_close(probs, logits.softmax(1))


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_a_failed_check_raises_and_leaves_no_file(run: Path, tmp_path: Path, fmt: str,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    real = export_mod._torch_logits
    monkeypatch.setattr(export_mod, "_torch_logits", lambda m, x: real(m, x) + 0.01)
    out = tmp_path / "out" / f"m.{fmt}"
    with pytest.raises(ExportError, match="disagrees") as err:
        export_model(run, fmt, out)
    assert err.value.fix
    assert _leftovers(out.parent) == []


def test_an_onnx_checker_failure_raises_and_leaves_no_file(run: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    import onnx.checker

    def broken(*args: object, **kwargs: object) -> None:
        raise onnx.checker.ValidationError("tampered graph")

    monkeypatch.setattr(onnx.checker, "check_model", broken)
    with pytest.raises(ExportError, match="tampered graph"):
        export_model(run, "onnx", tmp_path / "m.onnx")
    assert _leftovers(tmp_path) == []


def test_check_images_then_random_when_the_run_has_no_test_images(run: Path,
                                                                  tmp_path: Path) -> None:
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    (copy / "predictions_test.csv").unlink()
    imgs = sorted((run.parent / "data" / "val").rglob("*.png"))[:3]
    res = export_model(copy, "onnx", tmp_path / "a.onnx", check_images=imgs)
    assert (res.image_source, res.n_images, res.agreement) == ("check_images", 3, 1.0)
    res = export_model(copy, "onnx", tmp_path / "b.onnx")
    assert res.image_source == "random" and res.agreement == 1.0


def test_cli_export_prints_the_check_and_fails_with_exit_2(run: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "m.onnx"
    res = CliRunner().invoke(main, ["export", str(run), "--format", "onnx", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "max |logit diff|" in res.output and "agreement 100.0%" in res.output
    monkeypatch.setattr(export_mod, "_torch_logits", lambda m, x: np.zeros((len(x), 3)) + 5)
    res = CliRunner().invoke(main, ["export", str(run), "--format", "torchscript",
                                    "--out", str(tmp_path / "m.pt")])
    assert res.exit_code == 2 and "Error:" in res.output and "Fix:" in res.output
    assert not (tmp_path / "m.pt").exists()
    res = CliRunner().invoke(main, ["export", str(tmp_path / "nope")])
    assert res.exit_code == 2 and "Error:" in res.output
