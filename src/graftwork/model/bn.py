"""BatchNorm safety: recalibrating running statistics ("precise BN") and the train/eval doctor.

The trap: in training mode BN normalises with the current batch's statistics, in inference mode
with running averages. With momentum 0.99 (PyTorch ``momentum=0.01``) and fresh 0/1 statistics,
a few steps leave the averages far from the data: the model looks perfect while training and
fails at prediction. ``recalibrate`` recomputes the averages over the data; ``diagnose`` measures
the gap and names the layers whose statistics are furthest from the data's.
"""
from __future__ import annotations

import copy
import logging
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from graftwork.model.graft import bn_layers
from graftwork.training.loop import evaluate

__all__ = ["recalibrate", "diagnose", "DoctorReport", "GAP_THRESHOLD"]

log = logging.getLogger(__name__)
GAP_THRESHOLD = 0.05  # accuracy points (fraction) between train-mode and eval-mode
Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]
_BN = nn.modules.batchnorm._BatchNorm


def _forward_all(model: nn.Module, batches: Batches) -> None:
    """Run the model over every batch without gradients (for BN statistics and hooks)."""
    with torch.no_grad():
        for x, _ in batches:
            if len(x):
                model(x)


def recalibrate(model: nn.Module, batches: Batches,
                layers: Sequence[str] | None = None) -> list[str]:
    """Recompute running mean/var of BN ``layers`` (default: all) as a cumulative average.

    Only those BN layers run in training mode; everything else (dropout, other BN) is in eval
    mode, and no gradient is computed. Returns the names of the recalibrated layers.
    """
    chosen = [(n, m) for n, m in bn_layers(model) if layers is None or n in layers]
    if not chosen:
        return []
    was_training = model.training
    model.eval()
    saved = {}
    for name, bn in chosen:
        saved[name] = bn.momentum
        bn.reset_running_stats()
        bn.momentum = None  # cumulative moving average over all batches
        nn.Module.train(bn, True)
    try:
        _forward_all(model, batches)
    finally:
        for name, bn in chosen:
            bn.momentum = saved[name]
        model.train(was_training)
    log.info("recalibrated %d BN layers", len(chosen))
    return [n for n, _ in chosen]


@dataclass
class DoctorReport:
    train_mode: dict[str, float]
    eval_mode: dict[str, float]
    gap: float
    verdict: str
    fix: str
    healthy: bool
    layers: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _batch_stat_eval(model: nn.Module, batches: Batches) -> dict[str, float]:
    """Accuracy/loss with every BN normalising by batch statistics; the model is not modified."""
    probe = copy.deepcopy(model)
    probe.eval()
    for _, bn in bn_layers(probe):
        nn.Module.train(bn, True)
        bn.track_running_stats = False  # use batch stats, update nothing
    loss_sum, correct, n = 0.0, 0, 0
    with torch.no_grad():
        for x, y in batches:
            if len(y) < 2:  # batch statistics of one image are meaningless
                continue
            logits = probe(x)
            loss_sum += float(nn.functional.cross_entropy(logits, y, reduction="sum"))
            correct += int((logits.argmax(1) == y).sum())
            n += len(y)
    if n == 0:
        return {"accuracy": float("nan"), "loss": float("nan"), "n": 0}
    return {"accuracy": correct / n, "loss": loss_sum / n, "n": n}


def _layer_distances(model: nn.Module, batches: Batches) -> list[dict[str, Any]]:
    """Per BN layer: how far the running statistics are from the data's (eval mode)."""
    sums: dict[str, list[torch.Tensor]] = {}
    hooks = []

    def hook(name: str):
        def fn(module: nn.Module, inputs: tuple[torch.Tensor, ...], _: Any) -> None:
            x = inputs[0].detach().float()
            dims = [d for d in range(x.ndim) if d != 1]
            count = x.numel() // x.shape[1]
            acc = sums.setdefault(name, [torch.zeros(x.shape[1]), torch.zeros(x.shape[1]),
                                         torch.zeros(())])
            acc[0] += x.sum(dims)
            acc[1] += (x * x).sum(dims)
            acc[2] += count
        return fn

    layers = [(n, m) for n, m in bn_layers(model) if m.running_mean is not None]
    for name, bn in layers:
        hooks.append(bn.register_forward_hook(hook(name)))
    was_training = model.training
    model.eval()
    try:
        _forward_all(model, batches)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    out = []
    for name, bn in layers:
        if name not in sums:
            continue
        s, sq, count = sums[name]
        mean = s / count
        var = (sq / count - mean * mean).clamp_min(0)
        rv = bn.running_var.float() + bn.eps
        shift = ((mean - bn.running_mean.float()).abs() / rv.sqrt()).mean().item()
        ratio = ((var + bn.eps) / rv).log().abs().mean().item()
        out.append({"name": name, "distance": shift + ratio, "mean_shift": shift,
                    "log_var_ratio": ratio})
    return sorted(out, key=lambda r: r["distance"], reverse=True)


def diagnose(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
             top: int = 10) -> DoctorReport:
    """Compare BN train mode (batch statistics) with eval mode (running averages) on data.

    ``batches`` is iterated three times (a list, or an object whose ``__iter__`` restarts).
    """
    eval_mode = evaluate(model, batches)
    train_mode = _batch_stat_eval(model, batches)
    layers = _layer_distances(model, batches)[:top]
    if not bn_layers(model):
        return DoctorReport(train_mode, eval_mode, 0.0, "no BatchNorm layers: nothing to check",
                            "", True, [])
    gap = train_mode["accuracy"] - eval_mode["accuracy"]
    if gap > GAP_THRESHOLD:
        worst = layers[0]["name"] if layers else "?"
        verdict = (f"BatchNorm running statistics do not match the data: accuracy is "
                   f"{train_mode['accuracy']:.1%} with batch statistics but "
                   f"{eval_mode['accuracy']:.1%} in inference mode (worst layer: {worst})")
        fix = "run `graft recalibrate RUN DATA` to recompute the BN statistics on your data"
        healthy = False
    else:
        verdict = (f"healthy: inference-mode accuracy {eval_mode['accuracy']:.1%} vs "
                   f"{train_mode['accuracy']:.1%} with batch statistics")
        fix, healthy = "", True
    return DoctorReport(train_mode, eval_mode, gap, verdict, fix, healthy, layers)
