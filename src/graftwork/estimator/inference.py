"""Using a fitted model: evaluation on a folder, prediction on files, and the BatchNorm doctor
and recalibration on a training folder."""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from graftwork.features.session import Session
from graftwork.data.discover import Sample, Skipped, discover, list_images
from graftwork.data.transforms import eval_transform
from graftwork.errors import DataError

__all__ = ["folder_samples", "evaluate_folder", "predict_paths", "predict_proba", "top_classes",
           "doctor", "recalibrate"]


def folder_samples(classes: Sequence[str], data: str | Path) -> list[Sample]:
    """Labelled samples of a folder with one sub-folder per class (``DATA/test`` if present)."""
    folder = Path(data)
    if not folder.is_dir():
        raise DataError(f"folder {str(folder)!r} does not exist", "check the path")
    if (folder / "test").is_dir():
        folder = folder / "test"
    found = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    unknown = sorted(set(found) - set(classes))
    if not found or unknown:
        raise DataError(f"{str(folder)!r}: class folders {unknown or 'none'} are not among "
                        f"the model's classes {list(classes)}",
                        "pass a folder with one sub-folder per class the model knows")
    skipped: list[Skipped] = []
    return [Sample(str(p), list(classes).index(c)) for c in found
            for p in list_images(folder / c, skipped)]


def evaluate_folder(session: Session, classes: Sequence[str], data: str | Path) -> dict[str, Any]:
    """Accuracy and loss on a labelled folder; ``skipped`` counts unusable images."""
    samples = folder_samples(classes, data)
    result: dict[str, Any] = session.score(samples)
    result["skipped"] = len(samples) - int(result["n"])
    return result


def _paths(inputs: Sequence[str | Path] | str | Path) -> list[str]:
    if isinstance(inputs, (str, Path)):
        inputs = [inputs]
    paths: list[str] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            paths += [str(f) for f in list_images(p)]
        elif p.exists():
            paths.append(str(p))
        else:
            raise DataError(f"{str(p)!r} does not exist", "check the path")
    return paths


def predict_proba(session: Session, inputs: Sequence[str | Path] | str | Path
                  ) -> tuple[list[str], np.ndarray]:
    """(paths, probabilities (n, classes)); rows of images that cannot be decoded are NaN."""
    paths = _paths(inputs)
    logits, ok = session.logits([Sample(p, 0) for p in paths])
    probs = np.full((len(paths), session.head_outputs()), np.nan, dtype=np.float32)
    probs[ok.numpy()] = logits.softmax(1).numpy()
    return paths, probs


def predict_paths(session: Session, classes: Sequence[str],
                  inputs: Sequence[str | Path] | str | Path, top_k: int = 1) -> list[dict[str, Any]]:
    """Top-k labels and probabilities per image; an ``error`` row for undecodable files."""
    paths, probs = predict_proba(session, inputs)
    k = max(1, min(top_k, len(classes)))
    out = []
    for path, p in zip(paths, probs):
        if np.isnan(p).any():
            out.append({"path": path, "error": "cannot decode image"})
            continue
        top = top_classes(p, classes, k)
        out.append({"path": path, "label": top[0]["label"], "prob": top[0]["prob"],
                    "top_k": top})
    return out


def top_classes(probs: np.ndarray, classes: Sequence[str], k: int,
                ndigits: int | None = None) -> list[dict[str, Any]]:
    """The ``k`` most probable classes of one probability row, most probable first."""
    order = np.argsort(-probs, kind="stable")[:k]
    return [{"label": classes[int(i)],
             "prob": float(probs[i]) if ndigits is None else round(float(probs[i]), ndigits)}
            for i in order]


class _Reiterable:
    """Batches that can be iterated several times without holding the images in memory."""

    def __init__(self, make: Callable[[], Iterator[Any]]) -> None:
        self.make = make

    def __iter__(self) -> Iterator[Any]:
        return iter(self.make())


def _train_batches(session: Session, classes: Sequence[str], data: str | Path,
                   batch_size: int, to: Callable[[Any], Any]) -> _Reiterable:
    """DATA's training images in eval transforms, each batch passed through ``to``."""
    folder = Path(data) / "train" if (Path(data) / "train").is_dir() else Path(data)
    splits = discover(folder, val_fraction=0.0, test_fraction=0.0)
    if splits.classes != list(classes):
        raise DataError(f"classes in {str(folder)!r} differ from the model's",
                        "use the same class folders the model was trained on")
    tf = eval_transform(session.preprocessing)
    return _Reiterable(lambda: (to(b) for b in
                                session.image_batches(splits.train, tf, None, batch_size)))


@contextlib.contextmanager
def _on_device(session: Session) -> Iterator[Callable[[Any], Any]]:
    """The model on ``session.options.device`` inside the block (back on the CPU after it), and the
    function that moves a batch there."""
    device = torch.device(session.options.device)
    if device.type == "cpu":
        yield lambda b: b
        return
    session.model.to(device)
    try:
        yield lambda b: tuple(t.to(device, non_blocking=True) for t in b)
    finally:
        session.model.to("cpu")


def doctor(session: Session, classes: Sequence[str], data: str | Path,
           batch_size: int = 32) -> dict[str, Any]:
    """BatchNorm train-mode (batch statistics) vs eval-mode accuracy on DATA's images."""
    from graftwork.model.bn import diagnose

    with _on_device(session) as to:
        batches = _train_batches(session, classes, data, batch_size, to)
        return diagnose(session.model, batches).as_dict()


def recalibrate(session: Session, classes: Sequence[str], data: str | Path,
                batch_size: int = 32) -> dict[str, Any]:
    """Recompute every BN layer's statistics on DATA's images; eval accuracy before/after."""
    from graftwork.model.bn import recalibrate as recal
    from graftwork.training.loop import evaluate

    with _on_device(session) as to:
        batches = _train_batches(session, classes, data, batch_size, to)
        before = evaluate(session.model, batches)
        layers = recal(session.model, batches)
        after = evaluate(session.model, batches)
    session.pristine = False
    session.eval()
    return {"recalibrated": True, "layers": len(layers), "train_before": before,
            "train_after": after}
