"""A run with test-time augmentation and a calibration temperature: the ONNX and TorchScript
exports and ``graft serve`` give the probabilities ``predict_proba`` gives."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from graftwork.estimator.classifier import ImageClassifier
from graftwork.deploy.export import export_model, load_pixels
from tests.conftest import TINY, make_image_folder

#: Far from 1 so that a graph without the division fails (one epoch fits T close to 1).
TEMPERATURE = 2.5


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("calexport")
    data = make_image_folder(root / "data")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GRAFT_OFFLINE", "1")
        mp.setenv("HF_HUB_OFFLINE", "1")
        clf = ImageClassifier(**TINY, epochs=1, tta=True, calibrate=True,
                              cache_dir=str(root / "cache")).fit(data)
    assert clf.calibration_ and clf.session_.temperature == clf.calibration_["temperature"]
    clf.calibration_ = {"temperature": TEMPERATURE}  # as if fitted on a harder validation set
    clf.session_.temperature = TEMPERATURE
    run = clf.save(root / "run")
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["hyperparameters"]["tta"] is True
    assert cfg["calibration"]["temperature"] == TEMPERATURE
    return run


def _paths(run: Path) -> list[str]:
    return sorted(str(p) for p in (run.parent / "data" / "test").rglob("*.png"))


def _expected(run: Path) -> tuple[ImageClassifier, np.ndarray]:
    clf = ImageClassifier.load(run)
    clf.set_params(cache_dir=str(run.parent / "cache"))
    assert clf.tta and clf.session_.temperature == TEMPERATURE
    return clf, np.asarray(clf.predict_proba(_paths(run)), dtype=np.float64)


def _pixels(clf: ImageClassifier, run: Path) -> np.ndarray:
    return np.stack([load_pixels(p, clf.preprocessing_) for p in _paths(run)])


def _softmax(logits: np.ndarray) -> np.ndarray:
    return torch.from_numpy(np.asarray(logits, dtype=np.float64)).softmax(1).numpy()


def test_onnx_export_bakes_in_tta_and_temperature(run: Path, tmp_path: Path) -> None:
    import onnx
    import onnxruntime as ort

    clf, expected = _expected(run)
    res = export_model(run, "onnx", tmp_path / "m.onnx")
    session = ort.InferenceSession(str(res.path), providers=["CPUExecutionProvider"])
    logits, probs = session.run(["logits", "probs"], {"pixels": _pixels(clf, run)})
    np.testing.assert_allclose(_softmax(logits), expected, rtol=0, atol=1e-5)
    np.testing.assert_allclose(probs, expected, rtol=0, atol=1e-5)
    meta = {p.key: p.value for p in onnx.load(str(res.path)).metadata_props}
    assert json.loads(meta["tta"]) is True and float(meta["temperature"]) == TEMPERATURE
    spec = json.loads((res.preprocess_path).read_text())
    assert spec["postprocess"] == {"tta": True, "temperature": TEMPERATURE, "baked_in": True}


def test_torchscript_export_bakes_in_tta_and_temperature(run: Path, tmp_path: Path) -> None:
    clf, expected = _expected(run)
    res = export_model(run, "torchscript", tmp_path / "m.pt")
    files = {"metadata.json": ""}
    with warnings.catch_warnings():  # torch.jit.load's deprecation notice
        warnings.simplefilter("ignore")
        model = torch.jit.load(str(res.path), map_location="cpu", _extra_files=files)
    with torch.inference_mode():
        logits, probs = model(torch.from_numpy(_pixels(clf, run)))
    np.testing.assert_allclose(_softmax(logits.numpy()), expected, rtol=0, atol=1e-5)
    np.testing.assert_allclose(probs.numpy(), expected, rtol=0, atol=1e-5)
    meta = json.loads(files["metadata.json"])
    assert json.loads(meta["tta"]) is True and float(meta["temperature"]) == TEMPERATURE


def test_serve_probabilities_match_predict_proba(run: Path) -> None:
    pytest.importorskip("fastapi")
    pytest.importorskip("python_multipart")
    from fastapi.testclient import TestClient

    from graftwork.deploy.serve import create_app

    clf, expected = _expected(run)
    k = len(clf.classes_)
    with TestClient(create_app(run, top_k=k)) as client:
        model = client.get("/health").json()["model"]
        assert model["tta"] is True and model["temperature"] == TEMPERATURE
        for path, want in zip(_paths(run), expected):
            r = client.post("/predict", content=Path(path).read_bytes(),
                            headers={"content-type": "image/png"})
            assert r.status_code == 200, r.text
            (row,) = r.json()["predictions"]
            got = {t["label"]: t["prob"] for t in row["top_k"]}
            assert len(got) == k
            for label, p in zip(clf.classes_, want):
                assert abs(got[label] - p) <= 1e-4, (path, label, got[label], p)
