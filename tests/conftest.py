"""Shared fixtures: tiny generated image folders and a tiny randomly initialised backbone."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

# A tiny timm network (random init, ~0.1M params) at 32 px: unit tests run in seconds.
TINY: dict[str, Any] = {"backbone": "test_efficientnet", "weights": "random", "image_size": 32,
                        "progress": False, "num_workers": 0}
COLOURS = [(220, 40, 40), (40, 200, 40), (40, 60, 220), (220, 200, 40), (200, 40, 200)]
REPO = Path(__file__).resolve().parents[1]
EMBEDDED = REPO / "data" / "fashion-mnist-small"


def make_image_folder(root: Path, classes: int = 3, counts: dict[str, int] | None = None,
                      size: int = 20, seed: int = 0, fmt: str = "png") -> Path:
    """``root/<split>/<class>/*.png``: each class a noisy colour, so a tiny model can learn it."""
    counts = counts if counts is not None else {"train": 8, "val": 4, "test": 4}
    rng = np.random.default_rng(seed)
    for split, n in counts.items():
        for c in range(classes):
            folder = root / split / f"class_{c}" if split else root / f"class_{c}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                base = np.array(COLOURS[c % len(COLOURS)], dtype=np.float32)
                noise = rng.normal(0, 25, size=(size, size, 3))
                arr = np.clip(base + noise, 0, 255).astype(np.uint8)
                Image.fromarray(arr).save(folder / f"{split or 'img'}_{c}_{i}.{fmt}")
    return root


def train_tiny_run(root: Path) -> Path:
    """``root/run``: a tiny extract run (1 epoch) trained offline on a generated folder, for
    module-scoped fixtures (the per-test ``_offline`` fixture does not reach them)."""
    from graftwork import ImageClassifier

    data = make_image_folder(root / "data")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GRAFT_OFFLINE", "1")
        mp.setenv("HF_HUB_OFFLINE", "1")
        clf = ImageClassifier(**TINY, epochs=1, cache_dir=str(root / "cache")).fit(data)
        return clf.save(root / "run")


class EvilPickle:
    """Unpickling this creates the file ``marker``: proof that pickled code ran."""

    def __init__(self, marker: str | Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (self.marker, "w"))


@pytest.fixture()
def tiny_data(tmp_path: Path) -> Path:
    return make_image_folder(tmp_path / "data")


@pytest.fixture()
def cache_dir(tmp_path: Path) -> str:
    return str(tmp_path / "cache")


@pytest.fixture()
def torch_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    """Eager torch extraction: no per-test ONNX export (the engines agree, tested elsewhere).
    A module opts in with ``pytestmark = pytest.mark.usefixtures("torch_engine")``."""
    monkeypatch.setenv("GRAFT_ENGINE", "torch")


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never touch the network (and never wait for it)."""
    monkeypatch.setenv("GRAFT_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
