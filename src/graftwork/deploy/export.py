"""Export a trained run to ONE self-contained ONNX or TorchScript file, verified on export.

The exported graph takes uint8 RGB pixels ``[N, H, W, 3]`` (the caller resizes the short side
to ``resize_short_side`` and centre-crops to ``image_size``, as ``preprocess.json`` says: the
rule of :class:`graftwork.data.preprocess.Preprocessing`) and returns ``logits`` and ``probs``
(softmax); normalisation runs inside the graph, and so do the run's test-time augmentation
(mirror image) and calibration temperature, as ``predict`` applies them; the batch axis is
dynamic. Beside ``NAME.onnx`` (or ``NAME.pt``) come ``NAME.labels.txt`` and
``NAME.preprocess.json``: named after the model, so several exports share a folder, and the
latter names the model file and its sha256. ``preprocess.json`` says everything a caller must do
to an image file, decoding included (:data:`graftwork.data.images.DECODING`,
:func:`graftwork.features.decode.resize_rule`); README's onnxruntime recipe implements it.

    res = export_model("runs/a", "onnx")      # runs/a/export/model.onnx
    print(res.max_abs_logit_diff, res.agreement)
"""
from __future__ import annotations

import csv
import hashlib
import json
import logging
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from graftwork.model.calibration import tta_logits
from graftwork.estimator.classifier import ImageClassifier
from graftwork.data.images import DECODING, load_image
from graftwork.data.preprocess import Preprocessing
from graftwork.errors import BadImageError, ConfigError, GraftError
from graftwork.features import FastEvalTransform, FromPixels
from graftwork.features.decode import resize_rule
from graftwork.rundir.files import atomic_file, atomic_write_text, package_versions

__all__ = ["ExportError", "ExportResult", "PixelModel", "export_model", "preprocess_spec",
           "load_pixels", "sidecar_paths", "FORMATS", "INPUT_NAME", "OUTPUT_NAMES"]

log = logging.getLogger(__name__)

FORMATS = ("onnx", "torchscript")
SUFFIX = {"onnx": ".onnx", "torchscript": ".pt"}
INPUT_NAME = "pixels"
OUTPUT_NAMES = ("logits", "probs")
TOLERANCE = 1e-3  # max |logit difference| allowed between the export and the torch model
CHECK_BATCHES = (1, 7)
_MAX_CHECK_IMAGES = 21


class ExportError(GraftError):
    """An export could not be written or failed its own verification."""


@dataclass
class ExportResult:
    path: Path
    format: str
    max_abs_logit_diff: float
    agreement: float
    n_images: int
    batch_sizes: tuple[int, ...]
    image_source: str  # "test" (predictions_test.csv), "check_images" or "random"
    labels_path: Path | None = None
    preprocess_path: Path | None = None

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return {k: str(v) if isinstance(v, Path) else v for k, v in d.items()}


class PixelModel(FromPixels):
    """uint8 RGB ``[N, H, W, 3]`` -> (logits, probs): the engines' ``FromPixels`` (normalisation
    + backbone + head) with what ``predict`` adds: with ``tta`` the mirror image's logits joined
    by :func:`graftwork.calibration.tta_logits`, then division by ``temperature``; and softmax."""

    def __init__(self, module: torch.nn.Module, pre: Preprocessing, *, tta: bool = False,
                 temperature: float = 1.0) -> None:
        super().__init__(module, pre)
        self.tta = bool(tta)
        self.temperature = float(temperature)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        logits = super().forward(x).float()
        if self.tta:  # NHWC: axis 2 is the width
            logits = tta_logits(logits, super().forward(x.flip(2)).float())
        if self.temperature != 1.0:
            logits = logits / self.temperature
        return logits, logits.softmax(dim=1)


def postprocess(clf: ImageClassifier) -> dict[str, Any]:
    """What ``predict`` does after the network (the run's ``tta`` and ``temperature``)."""
    calibration = getattr(clf, "calibration_", None)
    return {"tta": bool(clf.tta),
            "temperature": float(calibration["temperature"]) if calibration else 1.0}


def pixel_model(clf: ImageClassifier) -> PixelModel:
    """The classifier's model on uint8 pixels (with its TTA and temperature), in eval mode."""
    return PixelModel(clf.model_, clf.preprocessing_, **postprocess(clf)).eval()


def load_pixels(source: str | Path | bytes, pre: Preprocessing) -> np.ndarray:
    """Decode (bomb-guarded) + graftwork's eval resize/centre crop: uint8 ``[H, W, 3]``."""
    img = load_image(source, draft_size=pre.resize_size)
    return FastEvalTransform(pre)(img).numpy()


def preprocess_spec(clf: ImageClassifier) -> dict[str, Any]:
    """What a caller must do to an image before the exported graph (and what comes out)."""
    pre: Preprocessing = clf.preprocessing_
    size = pre.image_size
    return {
        "image_size": size,
        "resize_short_side": pre.resize_size,
        "crop_pct": float(pre.crop_pct),
        "interpolation": pre.interpolation,
        "pil_resample": pre.interpolation.upper(),
        "antialias": True,
        "crop": "center",
        "decode": dict(DECODING),
        "resize": resize_rule(pre),
        "mean": [float(v) for v in pre.mean],
        "std": [float(v) for v in pre.std],
        "normalization": "inside the model: (pixels / 255 - mean) / std",
        "input": {"name": INPUT_NAME, "dtype": "uint8", "shape": ["N", size, size, 3],
                  "layout": "NHWC", "channels": "RGB"},
        "outputs": list(OUTPUT_NAMES),
        "classes": list(clf.classes_),
        # baked into the graph, as predict applies them: probs = softmax(logits) as predict_proba
        "postprocess": {**postprocess(clf), "baked_in": True},
    }


def sidecar_paths(model: Path) -> tuple[Path, Path]:
    """``NAME.labels.txt`` and ``NAME.preprocess.json`` beside the model file ``NAME.onnx``."""
    stem = model.name[:-len(model.suffix)] if model.suffix else model.name
    return model.with_name(f"{stem}.labels.txt"), model.with_name(f"{stem}.preprocess.json")


def _check_sidecars(model: Path) -> None:
    """Refuse to replace sidecar files that belong to another model (or to no export)."""
    labels, pre = sidecar_paths(model)
    if not (labels.exists() or pre.exists()):
        return
    try:
        owner = json.loads(pre.read_text(encoding="utf-8"))["model"]["file"]
    except (OSError, ValueError, KeyError, TypeError):
        owner = None
    if owner != model.name:
        taken = pre if pre.exists() else labels
        raise ExportError(f"{str(taken)!r} exists and does not belong to {model.name!r}"
                          + (f" but to {owner!r}" if isinstance(owner, str) else ""),
                          "export under another --out name, or move that file away")


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _metadata(run: Path, clf: ImageClassifier, spec: dict[str, Any]) -> dict[str, str]:
    metrics = getattr(clf, "metrics_", {})  # read (or warned about) by ImageClassifier.load
    acc = {k: (metrics.get(k) or {}).get("accuracy") for k in ("val", "test")}
    versions = package_versions()
    return {
        "classes": json.dumps(list(clf.classes_)),
        "image_size": str(spec["image_size"]),
        "resize": json.dumps({k: spec[k] for k in ("resize_short_side", "crop_pct",
                                                   "interpolation", "crop")}),
        "mean": json.dumps(spec["mean"]),
        "std": json.dumps(spec["std"]),
        "tta": json.dumps(spec["postprocess"]["tta"]),
        "temperature": str(spec["postprocess"]["temperature"]),
        "postprocess": json.dumps(spec["postprocess"]),
        "input": json.dumps(spec["input"]),
        "decode": json.dumps(spec["decode"]),
        "backbone": str(getattr(clf, "backbone", "")),
        "strategy": str(getattr(clf, "strategy", "")),
        "val_accuracy": "" if acc["val"] is None else str(acc["val"]),
        "test_accuracy": "" if acc["test"] is None else str(acc["test"]),
        "graftwork_version": versions.get("graftwork", "unknown"),
        "torch_version": versions.get("torch", torch.__version__),
    }


def _check_images(run: Path, pre: Preprocessing,
                  check_images: Sequence[str | Path] | None) -> tuple[np.ndarray, str]:
    """Held-out uint8 batch: the run's test images, else ``check_images``, else random."""
    candidates: list[tuple[str, list[str]]] = []
    try:
        with open(run / "predictions_test.csv", newline="", encoding="utf-8") as fh:
            candidates.append(("test", [row["path"] for row in csv.DictReader(fh)]))
    except (OSError, KeyError, csv.Error):
        pass
    if check_images:
        candidates.append(("check_images", [str(p) for p in check_images]))
    for source, paths in candidates:
        arrays = []
        for path in paths:
            try:
                arrays.append(load_pixels(path, pre))
            except (BadImageError, OSError):
                continue
            if len(arrays) >= _MAX_CHECK_IMAGES:
                break
        if arrays:
            return np.stack(arrays), source
    size = pre.image_size
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (_MAX_CHECK_IMAGES, size, size, 3), dtype=np.uint8), "random"


def _torch_logits(model: PixelModel, x: np.ndarray) -> np.ndarray:
    """The reference: the eager torch model's logits on a uint8 batch."""
    with torch.inference_mode():
        return model(torch.from_numpy(x))[0].numpy()


def _compare(model: PixelModel, run_export: Any, images: np.ndarray) -> tuple[float, float]:
    """(max |logit diff|, top-1 agreement) of ``run_export`` vs torch at each check batch size.

    The torch reference runs once over all images (in batches of the largest size); the export
    runs on every image at that batch size and on the first few one at a time."""
    n, big = len(images), max(CHECK_BATCHES)
    reps = -(-big // n)  # at least one full batch of the largest size
    pool = np.ascontiguousarray(np.concatenate([images] * reps) if reps > 1 else images)
    want = np.concatenate([_torch_logits(model, pool[i:i + big])
                           for i in range(0, len(pool), big)])
    worst, same, total = 0.0, 0, 0
    for bs in CHECK_BATCHES:
        stop = len(pool) if bs == big else min(len(pool), big)
        for start in range(0, stop - bs + 1, bs):
            x, ref = pool[start:start + bs], want[start:start + bs]
            logits, probs = run_export(x)
            if logits.shape != ref.shape or probs.shape != ref.shape:
                raise ExportError(f"exported model returned shapes {logits.shape}/{probs.shape} "
                                  f"for a batch of {bs}, expected {ref.shape}",
                                  "report this as a bug (the export is not usable)")
            worst = max(worst, float(np.abs(logits - ref).max()))
            same += int((logits.argmax(1) == ref.argmax(1)).sum())
            total += bs
    return worst, same / total


def _export_onnx(model: PixelModel, example: torch.Tensor, tmp: Path,
                 meta: dict[str, str]) -> Any:
    import onnx

    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (example,), str(tmp), input_names=[INPUT_NAME],
                          output_names=list(OUTPUT_NAMES), opset_version=17, dynamo=False,
                          dynamic_axes={INPUT_NAME: {0: "batch"}, "logits": {0: "batch"},
                                        "probs": {0: "batch"}})
    proto = onnx.load(str(tmp))
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.doc_string = "graftwork image classifier: uint8 RGB NHWC pixels -> logits, probs"
    onnx.save(proto, str(tmp))
    onnx.checker.check_model(str(tmp), full_check=True)
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    session = ort.InferenceSession(str(tmp), opts, providers=["CPUExecutionProvider"])
    return lambda x: session.run(list(OUTPUT_NAMES), {INPUT_NAME: x})


def _export_torchscript(model: PixelModel, example: torch.Tensor, tmp: Path,
                        files: dict[str, str]) -> Any:
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model, (example,), check_trace=False)
        torch.jit.save(traced, str(tmp), _extra_files=files)
        loaded = torch.jit.load(str(tmp), map_location="cpu", _extra_files=dict.fromkeys(files, ""))
    loaded.eval()

    def run(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with torch.inference_mode():
            logits, probs = loaded(torch.from_numpy(x))
        return logits.numpy(), probs.numpy()
    return run


def export_model(run_dir: str | Path, fmt: str = "onnx", out: str | Path | None = None, *,
                 check_images: Sequence[str | Path] | None = None) -> ExportResult:
    """Export the run to ``out`` (default ``RUN/export/model.onnx`` or ``model.pt``), verify it
    against the torch model at batch sizes 1 and 7, and write ``NAME.labels.txt`` and
    ``NAME.preprocess.json`` beside it (refusing to replace another model's). Raises :class:`ExportError` (and leaves no file) on failure."""
    fmt = fmt.lower()
    if fmt not in FORMATS:
        raise ConfigError(f"unknown export format {fmt!r}", f"choose one of {', '.join(FORMATS)}")
    if fmt == "onnx":
        try:
            import onnx  # noqa: F401
            import onnxruntime  # noqa: F401
        except ImportError as exc:
            raise ConfigError(f"ONNX export needs onnx and onnxruntime ({exc.name} is missing)",
                              "pip install 'graftwork[fast]', or use --format torchscript") from exc
    run = Path(run_dir)
    clf = ImageClassifier.load(run)
    path = Path(out) if out else run / "export" / f"model{SUFFIX[fmt]}"
    if path.is_dir():
        raise ExportError(f"{str(path)!r} is a directory", "give a file name with --out")
    _check_sidecars(path)
    model = pixel_model(clf)
    spec = preprocess_spec(clf)
    meta = _metadata(run, clf, spec)
    images, source = _check_images(run, clf.preprocessing_, check_images)
    example = torch.from_numpy(images[:1].copy())
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as tmp_name:
        tmp = Path(tmp_name)
        try:
            if fmt == "onnx":
                runner = _export_onnx(model, example, tmp, meta)
            else:
                files = {"labels.txt": "\n".join(clf.classes_) + "\n",
                         "preprocess.json": json.dumps(spec, indent=2),
                         "metadata.json": json.dumps(meta, indent=2)}
                runner = _export_torchscript(model, example, tmp, files)
            diff, agreement = _compare(model, runner, images)
        except GraftError:
            raise
        except Exception as exc:  # exporter, checker or runtime trouble: no file is left
            raise ExportError(f"{fmt} export failed its check: {type(exc).__name__}: "
                              f"{str(exc).splitlines()[0][:300] if str(exc) else ''}",
                              "try the other --format, or report this as a bug") from exc
        if not diff <= TOLERANCE or agreement < 1.0:
            raise ExportError(f"{fmt} export disagrees with the torch model: max |logit "
                              f"difference| {diff:.3g} (allowed {TOLERANCE}), top-1 agreement "
                              f"{agreement:.1%}", "try the other --format, or report this as a bug")
    labels, pre_path = sidecar_paths(path)
    owner = {"file": path.name, "format": fmt, "sha256": _file_sha256(path),
             "labels": labels.name}
    atomic_write_text(labels, "\n".join(clf.classes_) + "\n")
    atomic_write_text(pre_path, json.dumps({"model": owner, **spec, "metadata": meta},
                                           indent=2) + "\n")
    result = ExportResult(path=path, format=fmt, max_abs_logit_diff=diff, agreement=agreement,
                          n_images=len(images), batch_sizes=CHECK_BATCHES, image_source=source,
                          labels_path=labels, preprocess_path=pre_path)
    log.info("exported %s to %s (max |logit diff| %.2e, agreement %.1f%%)", run, path, diff,
             100 * agreement)
    return result
