"""Using a fitted model: evaluation on a folder, prediction on files, and the BatchNorm doctor
and recalibration on a training folder."""
from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from graftwork.features.session import Session
from graftwork.data.discover import Sample, Skipped, discover, list_images
from graftwork.data.transforms import eval_transform
from graftwork.errors import DataError

__all__ = ["HeldOut", "folder_samples", "evaluate_folder", "predict_paths", "predict_proba", "top_classes",
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
    if found and set(found) <= {"train", "val"} and not set(found) & set(classes):
        val = folder / "val"
        raise DataError(f"{str(folder)!r} has {' and '.join(f'{n}/' for n in found)} but no "
                        "test/ folder: its images trained or selected the model",
                        f"pass {str(val)!r} (the validation images: they chose the model, so "
                        "the figure is optimistic), or add held-out images as "
                        f"{str(folder / 'test')!r}/<class>/" if val.is_dir() else
                        "add held-out images as "
                        f"{str(folder / 'test')!r}/<class>/ and pass {str(folder)!r} again")
    if not found or unknown:
        raise DataError(f"{str(folder)!r}: class folders {unknown or 'none'} are not among "
                        f"the model's classes {list(classes)}",
                        "pass a folder with one sub-folder per class the model knows")
    skipped: list[Skipped] = []
    return [Sample(str(p), list(classes).index(c)) for c in found
            for p in list_images(folder / c, skipped)]


@dataclass(frozen=True)
class HeldOut:
    """How a run split a flat training folder: its fractions and seed, and the split sizes it
    recorded (``config.json``'s ``splits``)."""

    val_fraction: float
    test_fraction: float
    seed: int
    counts: Mapping[str, int]
    #: files the run's ``--exclude`` left out, relative to its DATA (config.json "excluded")
    excluded: frozenset[str] = frozenset()


def _left_out(samples: list[Sample], folder: Path, excluded: frozenset[str]) -> list[Sample]:
    """``samples`` without the files a run excluded (paths relative to ``folder``)."""
    if not excluded:
        return samples
    return [s for s in samples
            if Path(os.path.relpath(s.path, folder)).as_posix() not in excluded]


def _held_out(classes: Sequence[str], folder: Path, held: HeldOut | None
              ) -> tuple[list[Sample], str] | None:
    """The images a run held out of ``folder`` when ``folder`` (flat: one sub-folder per class)
    is the folder it was trained on: the same seeded split gives the sizes it recorded. Its
    test split, else its validation split; None when ``folder`` is not recognised."""
    if held is None or not held.counts:
        return None
    try:
        splits = discover(folder, held.val_fraction, held.test_fraction, held.seed)
    except DataError:
        return None
    # --exclude left files out of each split after the seeded split: so are they here
    splits = replace(splits, **{name: _left_out(getattr(splits, name), folder, held.excluded)
                                for name in ("train", "val", "test")})
    if splits.explicit or splits.classes != list(classes) or splits.counts() != dict(held.counts):
        return None
    total = sum(splits.counts().values())
    if splits.test:
        return splits.test, (f"the held-out test split: {len(splits.test)} of the {total} "
                             f"images of {str(folder)!r} (the seeded split training used); "
                             "the others trained or selected the model")
    return splits.val, (f"the validation split: {len(splits.val)} of the {total} images of "
                        f"{str(folder)!r}; the run held out no test images, and these selected "
                        "the model, so the figure is optimistic")


def _caveat(folder: Path) -> str:
    """What the accuracy on every image of a flat folder means, by what the folder is."""
    name = folder.resolve().name
    where = f"every image in {str(folder)!r}"
    if name == "test":
        return where
    if name == "train":
        return (f"{where}: a train/ folder; if this run trained on it, this is training "
                "accuracy, not held-out accuracy")
    if name == "val":
        return (f"{where}: a val/ folder; if this run used it to select the model, the figure "
                "is optimistic")
    return (f"{where}: not the flat folder this run was trained on, as far as its seeded split "
            "tells; if any of these images trained the model, this is not held-out accuracy")


def evaluate_folder(session: Session, classes: Sequence[str], data: str | Path,
                    held: HeldOut | None = None) -> dict[str, Any]:
    """Accuracy and loss on a labelled folder; ``skipped`` counts unusable images, ``scored``
    says which images were scored. ``DATA/test`` when there is one; for the flat folder a run
    was trained on (``held``), only the images that run held out; any other flat folder whole,
    saying that images which trained the model would make it no held-out accuracy. A folder
    without one usable image is a ``DataError``, never a NaN accuracy."""
    folder = Path(data)
    samples = folder_samples(classes, folder)
    if (folder / "test").is_dir():
        scored = f"every image in {str(folder / 'test')!r}"
        if held is not None and held.excluded:
            kept = _left_out(samples, folder, held.excluded)
            if len(kept) < len(samples):
                scored += (f" but the {len(samples) - len(kept)} the run's --exclude left out "
                           "(as its test accuracy did)")
            samples = kept
    else:
        found = _held_out(classes, folder, held)
        samples, scored = found if found is not None else (samples, _caveat(folder))
    if not samples:
        raise DataError(f"no images in the class folders of {str(folder)!r}",
                        "pass a folder with images in one sub-folder per class")
    result: dict[str, Any] = session.score(samples)
    result["skipped"] = len(samples) - int(result["n"])
    if not result["n"]:
        first = samples[0].path
        raise DataError(f"none of the {len(samples)} images in {str(folder)!r} could be used "
                        f"(e.g. {first}: {session.skipped.get(first, 'not decodable')})",
                        "fix or replace the images")
    result["scored"] = scored
    return result


def _paths(inputs: Sequence[str | Path] | str | Path) -> list[str]:
    if isinstance(inputs, (str, Path)):
        inputs = [inputs]
    paths: list[str] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            skipped: list[Skipped] = []
            found = [str(f) for f in list_images(p, skipped)]
            if not found:
                other = f" ({len(skipped)} other files, e.g. {skipped[0].path}: " \
                        f"{skipped[0].reason})" if skipped else ""
                raise DataError(f"no image files in {str(p)!r}{other}",
                                "pass image files or folders that hold some (.jpg, .png, ...)")
            paths += found
        elif p.exists():
            paths.append(str(p))
        else:
            raise DataError(f"{str(p)!r} does not exist", "check the path")
    if not paths:
        raise DataError("no images to predict", "pass image files or folders of images")
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
            out.append({"path": path, "error": session.skipped.get(path, "cannot decode image")})
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
        report = diagnose(session.model, batches).as_dict()
    if not report["eval_mode"].get("n"):
        raise _nothing_usable(session, data)
    return report


def _nothing_usable(session: Session, data: str | Path) -> DataError:
    """The error of a command that found no usable image in DATA (instead of a NaN result)."""
    example = next(iter(session.skipped.items()), None)
    return DataError(f"no image in {str(data)!r} could be used"
                     + (f" (e.g. {example[0]}: {example[1]})" if example else ""),
                     "fix or replace the images")


def recalibrate(session: Session, classes: Sequence[str], data: str | Path,
                batch_size: int = 32) -> dict[str, Any]:
    """Recompute every BN layer's statistics on DATA's images; eval accuracy before/after."""
    from graftwork.model.bn import recalibrate as recal
    from graftwork.training.loop import evaluate

    with _on_device(session) as to:
        batches = _train_batches(session, classes, data, batch_size, to)
        before = evaluate(session.model, batches)
        if not before["n"]:  # statistics of no image would break the model
            raise _nothing_usable(session, data)
        layers = recal(session.model, batches)
        after = evaluate(session.model, batches)
    session.pristine = False
    session.eval()
    return {"recalibrated": True, "layers": len(layers), "train_before": before,
            "train_after": after}
