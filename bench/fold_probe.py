"""Fine-tuning step with inference-mode BatchNorm folded into the convolutions vs not.

    PYTHONPATH=src python bench/fold_probe.py [--size 160] [--iters 5]

EfficientNet-Lite0 (pretrained weights when installed), batch 32, channels_last, every BN in
inference mode (graftwork's default while fine-tuning), a linear head; AdamW steps of every
block and of the last 4 (``unfreeze="auto"`` below 150 images per class). Two copies of the
model, one inside :func:`graftwork.fold.folded_batchnorm`, step in turn (one warm-up each, then
the best of ``--iters``), so both see the same load on a shared machine. Prints one JSON line:
images/s of each, their ratio, and the largest difference of the loss and of the gradients
between the two on the same batch (the fold must not change what is learned).
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import json
import platform
import time
from typing import Any

import torch
from torch import nn

BATCH = 32


def _model(unfreeze: int | str) -> nn.Module:
    """graftwork's model: ``train()`` keeps every BN layer in inference mode (its policy)."""
    from graftwork.backbones.catalog import create_backbone
    from graftwork.model.graft import GraftModel, freeze_backbone

    torch.manual_seed(0)
    bb = create_backbone("efficientnet_lite0")
    freeze_backbone(bb, unfreeze)
    model = GraftModel(bb, nn.Linear(bb.feature_dim, 10)).train()
    assert not model.bn_in_train_mode()
    return model.to(memory_format=torch.channels_last)


def _grads(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, list[torch.Tensor]]:
    model.zero_grad()
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    return float(loss.detach()), [p.grad.clone() for p in model.parameters() if p.grad is not None]


def probe(unfreeze: int | str, size: int, iters: int) -> dict[str, Any]:
    from graftwork.model.fold import folded_batchnorm

    plain = _model(unfreeze)
    folded = copy.deepcopy(plain)
    x = torch.randn(BATCH, 3, size, size).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (BATCH,))
    with contextlib.ExitStack() as stack:
        pairs = stack.enter_context(folded_batchnorm(folded, x[:2]))
        loss_p, grads_p = _grads(plain, x, y)
        loss_f, grads_f = _grads(folded, x, y)
        out: dict[str, Any] = {
            "unfreeze": unfreeze, "size": size, "folded_pairs": pairs,
            "loss_diff": abs(loss_p - loss_f),
            "max_grad_diff": max(float((a - b).abs().max()) for a, b in zip(grads_p, grads_f)),
            "max_grad": max(float(a.abs().max()) for a in grads_p)}
        steps = {}
        for name, model in (("plain", plain), ("folded", folded)):
            opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], 1e-4)

            def step(model: nn.Module = model, opt: torch.optim.Optimizer = opt) -> None:
                loss = nn.functional.cross_entropy(model(x), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
            steps[name] = step
        best = {k: float("inf") for k in steps}
        for fn in steps.values():
            fn()
        for _ in range(iters):
            for k, fn in steps.items():
                t = time.perf_counter()
                fn()
                best[k] = min(best[k], time.perf_counter() - t)
    for k in steps:
        out[f"{k}_img_s"] = round(BATCH / best[k], 1)
    out["folded_over_plain"] = round(best["plain"] / best["folded"], 3)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=160)
    ap.add_argument("--iters", type=int, default=5)
    args = ap.parse_args()
    from graftwork.training.devices import cpu_features

    flags = cpu_features()
    out = {"machine": platform.processor() or platform.machine(),
           "threads": torch.get_num_threads(), "torch": torch.__version__,
           "avx512": "avx512f" in flags, "runs": [probe(u, args.size, args.iters)
                                                  for u in ("all", 4)]}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
