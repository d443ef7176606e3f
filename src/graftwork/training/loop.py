"""The training loop: optimisers, schedules, validation, best checkpoint, early stopping, resume."""
from __future__ import annotations

import copy
from contextlib import contextmanager, nullcontext
import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from graftwork.training.callbacks import Callback, dispatch
from graftwork.training.devices import Runtime
from graftwork.training.checkpoint import load_checkpoint, save_checkpoint
from graftwork.registry import Registry

__all__ = ["TrainConfig", "FitResult", "fit", "evaluate", "tensor_batches", "make_optimizer",
           "OPTIMIZERS", "SCHEDULES", "seed_everything", "torch_threads",
           "resolve_class_weights"]

log = logging.getLogger(__name__)

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 20
    lr: float = 1e-3
    optimizer: str = "adam"
    weight_decay: float = 0.0
    schedule: str = "none"
    patience: int = 5
    seed: int = 0
    batch_size: int = 32
    label_smoothing: float = 0.0
    class_weights: tuple[float, ...] | None = None  # cross-entropy weight per class

    def as_dict(self) -> dict[str, Any]:
        """The settings (``class_weights`` only when set: older checkpoints still resume)."""
        d = asdict(self)
        if d["class_weights"] is None:
            del d["class_weights"]
        return d


def resolve_class_weights(spec: None | str | Mapping[str, float], classes: Sequence[str],
                          labels: Sequence[int]) -> tuple[float, ...] | None:
    """Per-class loss weights: None (all 1), ``"auto"`` (inverse frequency,
    ``n / (k * count_c)``) or a mapping of class name to weight (classes not named get 1).
    An unknown class name, a bad weight or another string is a ``ConfigError``."""
    from graftwork.errors import ConfigError

    if spec is None:
        return None
    if spec == "auto":
        counts = [0] * len(classes)
        for y in labels:
            counts[y] += 1
        n, k = len(labels), len(classes)
        return tuple(n / (k * c) if c else 1.0 for c in counts)
    if not isinstance(spec, Mapping):
        raise ConfigError(f"class_weights={spec!r} must be 'auto' or a mapping of class name "
                          "to weight", """pass --class-weights auto or '{"cat": 2.0}'""")
    unknown = sorted(set(spec) - set(classes))
    if unknown:
        raise ConfigError(f"class_weights names unknown classes {unknown} (classes: "
                          f"{list(classes)})", "use the class folder names")
    for name, w in spec.items():
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) \
                or w <= 0:
            raise ConfigError(f"class_weights[{name!r}] must be a positive number (got {w!r})",
                              "give every named class a weight above 0")
    return tuple(float(spec.get(c, 1.0)) for c in classes)


@dataclass
class FitResult:
    history: list[dict[str, Any]] = field(default_factory=list)
    best_state: dict[str, torch.Tensor] | None = None
    best_epoch: int = 0
    best_val: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    stopped_early: bool = False


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run torch ops on ``n`` intra-op threads inside the block.

    Small ops (a dense head on cached features) are many times slower on two OpenMP threads
    than on one, and far worse when another process holds a core.
    """
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU) for reproducible runs."""
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def tensor_batches(x: torch.Tensor, y: torch.Tensor, batch_size: int,
                   generator: torch.Generator | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Mini-batches of in-memory tensors, shuffled when a generator is given."""
    order = torch.randperm(len(x), generator=generator) if generator is not None \
        else torch.arange(len(x))
    for i in range(0, len(x), batch_size):
        idx = order[i:i + batch_size]
        yield x[idx], y[idx]


#: Optimizers by name (the ``--optimizer`` choices): ``(groups, lr, weight_decay) -> optimizer``.
OPTIMIZERS: Registry[Callable[..., torch.optim.Optimizer]] = Registry("optimizer",
                                                                      flag="--optimizer")
OPTIMIZERS.register("adam", torch.optim.Adam)
OPTIMIZERS.register("adamw", torch.optim.AdamW)
OPTIMIZERS.register("rmsprop", torch.optim.RMSprop)
OPTIMIZERS.register("nadam", torch.optim.NAdam)
OPTIMIZERS.register("sgd", partial(torch.optim.SGD, momentum=0.9))


def make_optimizer(name: str, groups: list[dict[str, Any]], lr: float,
                   weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """One of ``OPTIMIZERS`` over parameter groups (each group may carry its own ``lr``)."""
    name = name.lower()
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; choose one of {tuple(OPTIMIZERS)}")
    return OPTIMIZERS[name](groups, lr=lr, weight_decay=weight_decay)


_Schedule = Callable[[torch.optim.Optimizer, int, int], Any]


def _warm_cosine_schedule(opt: torch.optim.Optimizer, total: int, steps_per_epoch: int
                          ) -> torch.optim.lr_scheduler.LRScheduler:
    """Linear warm-up (one epoch, at most a quarter), then cosine."""
    warm = max(1, min(steps_per_epoch, total // 4))
    return torch.optim.lr_scheduler.LambdaLR(opt, partial(_warm_cosine, warm=warm, total=total))


#: Learning-rate schedules by name (the ``--schedule`` choices):
#: ``(optimizer, total_steps, steps_per_epoch) -> scheduler or None``.
SCHEDULES: Registry[_Schedule] = Registry("schedule", flag="--schedule")
SCHEDULES.register("none", lambda opt, total, steps: None)
SCHEDULES.register("cosine", lambda opt, total, steps:
                   torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total))
SCHEDULES.register("warmcosine", _warm_cosine_schedule)
SCHEDULES.register("onecycle", lambda opt, total, steps: torch.optim.lr_scheduler.OneCycleLR(
    opt, max_lr=[g["lr"] for g in opt.param_groups], total_steps=total))


def _make_schedule(name: str, opt: torch.optim.Optimizer, epochs: int,
                   steps_per_epoch: int) -> torch.optim.lr_scheduler.LRScheduler | None:
    if name in ("none", "", None):
        return None
    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}; choose one of {tuple(SCHEDULES)}")
    return SCHEDULES[name](opt, max(1, epochs * steps_per_epoch), steps_per_epoch)


def _warm_cosine(step: int, warm: int, total: int) -> float:
    """Learning-rate factor: rises linearly over ``warm`` steps, then follows a cosine to 0."""
    if step < warm:
        return (step + 1) / warm
    return 0.5 * (1.0 + math.cos(math.pi * (step - warm) / max(1, total - warm)))


def _forward(model: nn.Module, x: torch.Tensor, y: torch.Tensor, runtime: Runtime | None
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x, y, fp32 logits) on ``runtime``'s device and precision (as given without one)."""
    if runtime is None:
        return x, y, model(x)
    x, y = runtime.to((x, y))
    with runtime.autocast():
        return x, y, model(x).float()


def evaluate(model: nn.Module, batches: Batches, runtime: Runtime | None = None) -> dict[str, float]:
    """Accuracy and mean cross-entropy in eval mode (on ``runtime``'s device and precision)."""
    was_training = model.training
    model.eval()
    loss_sum, correct, n = 0.0, 0, 0
    with torch.inference_mode():
        for x, y in batches:
            if not len(y):
                continue
            x, y, logits = _forward(model, x, y, runtime)
            loss_sum += float(nn.functional.cross_entropy(logits, y, reduction="sum"))
            correct += int((logits.argmax(1) == y).sum())
            n += len(y)
    model.train(was_training)
    if n == 0:
        return {"accuracy": float("nan"), "loss": float("nan"), "n": 0}
    return {"accuracy": correct / n, "loss": loss_sum / n, "n": n}


def _better(a: dict[str, float], b: dict[str, float]) -> bool:
    """Higher validation accuracy wins; ties go to the lower loss."""
    if not b:
        return True
    if a["accuracy"] != b["accuracy"]:
        return a["accuracy"] > b["accuracy"]
    return a["loss"] < b["loss"]


def _row_score(row: dict[str, Any]) -> dict[str, float]:
    """What an epoch is judged by: validation accuracy and loss, else training's."""
    if row.get("val_accuracy", "") != "":
        return {"accuracy": row["val_accuracy"], "loss": row["val_loss"]}
    return {"accuracy": row["accuracy"], "loss": row["loss"]}


def fit(model: nn.Module, train_batches: Callable[[torch.Generator], Batches],
        validate: Callable[[], dict[str, float]] | None, cfg: TrainConfig, *,
        param_groups: list[dict[str, Any]] | None = None, steps_per_epoch: int = 1,
        phase: str = "train", progress: bool = True, checkpoint: Path | None = None,
        resume: bool = False, callbacks: Sequence[Callback] = (),
        fingerprint: dict[str, Any] | None = None, runtime: Runtime | None = None,
        dist: Any = None, keep_start: bool = False, keep_last: bool = False) -> FitResult:
    """Train ``model``; keep the best-validation weights; stop after ``patience`` bad epochs.

    ``train_batches(generator)`` yields one epoch of (inputs, labels), shuffled by the seeded
    generator; ``validate()`` returns the validation accuracy and loss (see ``evaluate``). With ``checkpoint``, the full state is saved after every epoch and ``resume``
    continues from it, giving the same result as an uninterrupted run; a checkpoint whose
    ``fingerprint`` (what it was trained on) differs is refused. Every epoch's row goes to the
    ``callbacks`` (epochs restored from a checkpoint are replayed to them first).
    With ``dist`` (:class:`graftwork.distributed.Distributed`) the model is wrapped for data
    parallel training as its ``requires_grad`` are now, ``train_batches`` must yield this
    process's share, BN statistics are averaged after each epoch, and only the main process
    writes the checkpoint.
    With ``keep_start`` (a warm-started model) and validation, the starting weights compete as
    epoch 0: when no epoch beats them on validation they are what ``fit`` leaves in ``model``
    (``best_epoch == 0``), so training never ends worse on validation than it started.
    With ``keep_last`` (a refit: a known number of epochs, nothing held out to choose by) every
    epoch runs and the last epoch's weights are kept.
    """
    groups = param_groups or [{"params": [p for p in model.parameters() if p.requires_grad]}]
    opt = make_optimizer(cfg.optimizer, groups, cfg.lr, cfg.weight_decay)
    sched = _make_schedule(cfg.schedule, opt, cfg.epochs, steps_per_epoch)
    result = FitResult()
    start_epoch, bad_epochs, elapsed = 1, 0, 0.0
    torch.manual_seed(cfg.seed)
    if resume and checkpoint is not None and checkpoint.exists():
        state = load_checkpoint(checkpoint, model, fingerprint)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        if sched is not None and state.get("scheduler"):
            sched.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"])
        result.history, result.best_state = state["history"], state["best_state"]
        result.best_epoch, result.best_val = state["best_epoch"], state["best_val"]
        start_epoch, bad_epochs, elapsed = state["epoch"] + 1, state["bad_epochs"], state["elapsed"]
        log.info("%s: resuming at epoch %d", phase, start_epoch)
        for old in result.history:
            dispatch(callbacks, "on_epoch_end", phase, old)
    t0 = time.perf_counter() - elapsed
    best_trained: dict[str, float] = {}
    for old in result.history:  # resumed: patience goes on from the best trained epoch
        if _better(_row_score(old), best_trained):
            best_trained = _row_score(old)
    if keep_start and validate is not None and start_epoch == 1:
        start = validate()
        result.best_val = {"accuracy": start["accuracy"], "loss": start["loss"]}
        result.best_state = copy.deepcopy(model.state_dict())
    trained = model if dist is None else dist.prepare(model)
    if dist is not None:
        steps_per_epoch = -(-steps_per_epoch // dist.world)
    for epoch in range(start_epoch, cfg.epochs + 1):
        if bad_epochs >= cfg.patience and not keep_last:
            result.stopped_early = True
            break
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch)
        with dist.uneven(trained) if dist is not None else nullcontext():
            row = _train_epoch(trained, train_batches(gen), opt, sched, steps_per_epoch,
                               f"{phase} {epoch}/{cfg.epochs}", progress, cfg.label_smoothing,
                               runtime, cfg.class_weights)
        if dist is not None:
            dist.average_bn(model)
        val = validate() if validate is not None else {}
        row = {"phase": phase, "epoch": epoch, **row,
               "val_loss": val.get("loss", ""), "val_accuracy": val.get("accuracy", ""),
               "lr": opt.param_groups[-1]["lr"]}
        result.history.append(row)
        score = _row_score(row)
        if _better(score, result.best_val):
            result.best_val, result.best_epoch = dict(score), epoch
            result.best_state = copy.deepcopy(model.state_dict())
        # patience counts from the best trained epoch, not from the kept start: a warm start's
        # first epochs often dip below it before they climb past it
        if _better(score, best_trained):
            best_trained, bad_epochs = dict(score), 0
        else:
            bad_epochs += 1
        dispatch(callbacks, "on_epoch_end", phase, row)
        if checkpoint is not None and (dist is None or dist.is_main):
            save_checkpoint({"model": model.state_dict(), "optimizer": opt.state_dict(),
                             "scheduler": sched.state_dict() if sched is not None else {},
                             "rng": torch.get_rng_state(), "history": result.history,
                             "best_state": result.best_state, "best_epoch": result.best_epoch,
                             "best_val": result.best_val, "epoch": epoch, "bad_epochs": bad_epochs,
                             "elapsed": time.perf_counter() - t0,
                             "fingerprint": fingerprint or {}}, checkpoint)
    if keep_last:
        result.best_epoch, result.best_state = len(result.history), None
    elif result.best_state is not None:
        model.load_state_dict(result.best_state)
    if keep_start and result.best_epoch == 0 and result.best_val:
        log.info("%s: no epoch beat the starting weights on validation (accuracy %.4f): "
                 "kept them", phase, result.best_val.get("accuracy", math.nan))
    result.seconds = time.perf_counter() - t0
    return result


def _train_epoch(model: nn.Module, batches: Batches, opt: torch.optim.Optimizer,
                 sched: Any, steps: int, desc: str, progress: bool,
                 label_smoothing: float = 0.0, runtime: Runtime | None = None,
                 class_weights: Sequence[float] | None = None) -> dict[str, float]:
    model.train()
    weight = torch.tensor(class_weights, dtype=torch.float32) if class_weights else None
    scaler = runtime.precision.grad_scaler(runtime.device) if runtime is not None else None
    loss_sum, correct, n = 0.0, 0, 0
    # a model fed by gated decode workers (phases._engine.OnEngine) pauses them for the step
    computing = getattr(getattr(model, "module", model), "computing", nullcontext)
    with tqdm(batches, total=steps, desc=desc, unit="batch", disable=not progress,
              leave=False) as bar:
        for x, y in bar:
            if not len(y):
                continue
            with computing():
                x, y, logits = _forward(model, x, y, runtime)
                w = weight.to(logits.device) if weight is not None else None
                loss = nn.functional.cross_entropy(logits, y, weight=w,
                                                   label_smoothing=label_smoothing)
                opt.zero_grad(set_to_none=True)
                if scaler is not None:  # fp16 on CUDA: scaled gradients
                    scaler.scale(loss).backward()
                    scaler.step(opt)
                    scaler.update()
                else:
                    loss.backward()
                    opt.step()
            if sched is not None:
                sched.step()
            loss_sum += float(loss.detach()) * len(y)
            correct += int((logits.argmax(1) == y).sum())
            n += len(y)
            bar.set_postfix(loss=f"{loss_sum / n:.3f}", acc=f"{correct / n:.3f}")
    if n == 0:
        return {"loss": math.nan, "accuracy": math.nan}
    return {"loss": loss_sum / n, "accuracy": correct / n}
