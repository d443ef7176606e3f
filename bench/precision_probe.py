"""bf16 vs fp32 on this CPU: EfficientNet-Lite0 at 224 px, batch 32, channels_last.

    PYTHONPATH=src python bench/precision_probe.py

Prints one JSON line: forward img/s (inference_mode), frozen-backbone training step (backbone in
inference, a linear head trains), fine-tuning step (blocks.6 + head unfrozen) img/s, each in fp32 and
bf16 autocast; ONNX Runtime forward img/s if onnxruntime is installed; and the max/mean absolute
feature difference bf16 vs fp32 on 32 real images of data/fashion-mnist-small. About 2-3 minutes
on 2 shared cores: the numbers are indicative.
"""
from __future__ import annotations

import contextlib
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch

REPO = Path(__file__).resolve().parents[1]
BATCH, SIZE, ITERS = 32, 224, 4


def _pair(fp32: Callable[[], Any], bf16: Callable[[], Any], iters: int = ITERS) -> dict[str, Any]:
    """Images/s of two steps, calls interleaved (one warm-up each, best of ``iters``).

    Interleaving makes both see the same load on a shared machine. ``*_cpu`` is images per
    CPU-second of this process times the thread count: what the step costs without contention.
    """
    steps = {"fp32": fp32, "bf16": bf16}
    best = {k: float("inf") for k in steps}
    best_cpu = {k: float("inf") for k in steps}
    for k in steps:
        steps[k]()
    for _ in range(iters):
        for k, step in steps.items():
            t, c = time.perf_counter(), time.process_time()
            step()
            best[k] = min(best[k], time.perf_counter() - t)
            best_cpu[k] = min(best_cpu[k], (time.process_time() - c) / torch.get_num_threads())
    out: dict[str, Any] = {}
    for k in steps:
        out[k] = round(BATCH / best[k], 1)
        out[f"{k}_cpu"] = round(BATCH / best_cpu[k], 1)
    return out


def _timed(step: Callable[[], Any], iters: int = ITERS) -> float:
    """Images per second of ``step`` (one warm-up call, then the best of ``iters``)."""
    step()
    best = float("inf")
    for _ in range(iters):
        t = time.perf_counter()
        step()
        best = min(best, time.perf_counter() - t)
    return round(BATCH / best, 1)


def _ctx(bf16: bool) -> contextlib.AbstractContextManager[Any]:
    if bf16:
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _real_images(pre: dict[str, Any]) -> torch.Tensor:
    from graftwork.data.transforms import eval_transform
    from graftwork.data.discover import list_images
    from graftwork.data.images import load_image

    paths = sorted(list_images(REPO / "data" / "fashion-mnist-small" / "train"))[::7][:BATCH]
    tf = eval_transform(pre)
    return torch.stack([tf(load_image(p)) for p in paths])


def main() -> None:
    from graftwork.backbones.catalog import create_backbone
    from graftwork.training.devices import cpu_has_native_bf16
    from graftwork.model.graft import freeze_backbone

    torch.manual_seed(0)
    bb = create_backbone("efficientnet_lite0")
    bb.eval().to(memory_format=torch.channels_last)
    x = torch.randn(BATCH, 3, SIZE, SIZE).contiguous(memory_format=torch.channels_last)
    out: dict[str, Any] = {"threads": torch.get_num_threads(), "machine": platform.machine(),
                           "native_bf16": cpu_has_native_bf16(), "torch": torch.__version__,
                           "weights": bb.weights.source}

    def fwd(bf16: bool) -> Callable[[], None]:
        def step() -> None:
            with torch.inference_mode(), _ctx(bf16):
                bb(x)
        return step
    out["forward"] = _pair(fwd(False), fwd(True))

    head = torch.nn.Linear(bb.feature_dim, 10)
    y = torch.randint(0, 10, (BATCH,))

    def frozen(bf16: bool) -> Callable[[], None]:
        opt = torch.optim.AdamW(head.parameters(), 1e-3)

        def step() -> None:
            with torch.inference_mode(), _ctx(bf16):
                f = bb(x)
            with _ctx(bf16):
                loss = torch.nn.functional.cross_entropy(head(f.float().clone()), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        return step
    out["frozen_step"] = _pair(frozen(False), frozen(True))

    # blocks.6 (the last MBConv stage) and head (conv_head + bn2): backward through real blocks
    out["finetune_unfrozen"] = freeze_backbone(bb, 2)
    params = [p for p in bb.parameters() if p.requires_grad] + list(head.parameters())

    def finetune(bf16: bool) -> Callable[[], None]:
        opt = torch.optim.AdamW(params, 1e-4)

        def step() -> None:
            with _ctx(bf16):
                loss = torch.nn.functional.cross_entropy(head(bb(x)), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        return step
    out["finetune_step"] = _pair(finetune(False), finetune(True))
    freeze_backbone(bb, 0)

    try:
        import onnxruntime  # noqa: F401

        from graftwork.features import export_onnx, ort_session

        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "b.onnx"
            export_onnx(bb.to(memory_format=torch.contiguous_format), x[:1].contiguous(), path)
            sess = ort_session(path)
            xn = x.contiguous().numpy()
            out["onnxruntime_forward_fp32"] = _timed(lambda: sess.run(None, {"x": xn}))
            with torch.inference_mode():
                out["torch_forward_fp32_same_time"] = _timed(lambda: bb(x.contiguous()))
    except ImportError:
        out["onnxruntime_forward_fp32"] = None

    imgs = _real_images(bb.spec.preprocessing(SIZE)).contiguous(memory_format=torch.channels_last)
    bb.to(memory_format=torch.channels_last)
    with torch.inference_mode():
        f32 = bb(imgs)
        with _ctx(True):
            f16 = bb(imgs).float()
    diff = (f16 - f32).abs()
    out["feature_absdiff_max"] = round(float(diff.max()), 5)
    out["feature_absdiff_mean"] = round(float(diff.mean()), 6)
    out["feature_abs_mean"] = round(float(f32.abs().mean()), 5)
    cos = torch.nn.functional.cosine_similarity(f16, f32, dim=1)
    out["feature_cosine_min"] = round(float(cos.min()), 6)
    print(json.dumps(out))


if __name__ == "__main__":
    sys.exit(main())
