"""The phase protocol: one training strategy is one :class:`Phase` subclass.

A phase says
- its default settings (``defaults``: epochs, learning rate, optimizer, schedule, patience),
- what must run before it when it is asked for alone (``warmup``, e.g. fine-tuning starts from
  a head trained by ``extract``), and whether it needs the backbone network at all
  (``needs_network``; ``extract`` trains on cached features),
- which parameters train (``trainable``), with which learning rates (``param_groups``),
- what batches it sees (``batches``: training batches, validation),
- how it warm-starts from the previous phase (``warm_start``; the default keeps the head),
- whether it changes backbone weights (``changes_backbone``: then cached features no longer
  describe the model, and BatchNorm statistics may need recalibrating),
- in a sequence (the ladder), whether the rung is worth running at all (``skip``).

``run`` strings these together around the shared training loop. Register a phase with
``graftwork.phases.register_phase``.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from graftwork.training.callbacks import Callback, dispatch
from graftwork.data.discover import Splits
from graftwork.features.session import Session
from graftwork.training.devices import Runtime
from graftwork.model.fold import folded_batchnorm
from graftwork.model.graft import freeze_backbone, parameter_counts
from graftwork.training.loop import FitResult, TrainConfig, fit

__all__ = ["Phase", "PhaseDefaults", "PhaseContext", "Batches", "PHASE_OPTIONS",
           "phase_params", "check_phase_options"]

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]

# Settings that ``phase_options`` may give one phase (over the estimator-wide ones)
PHASE_OPTIONS = ("epochs", "lr", "optimizer", "schedule", "patience", "label_smoothing",
                 "weight_decay")


def phase_params(params: Mapping[str, Any], phase: str) -> Mapping[str, Any]:
    """``params`` with ``params["phase_options"][phase]`` laid over them: one phase's view."""
    own = (params.get("phase_options") or {}).get(phase)
    return {**params, **own} if own else params


def check_phase_options(options: Any, phases: Iterable[str]) -> None:
    """``ConfigError`` unless ``options`` maps phases the strategy runs to known settings with
    valid values (the same ranges and choices as the estimator-wide settings: one table,
    :data:`graftwork.params.PARAMS`)."""
    from graftwork.errors import ConfigError
    from graftwork.params import PARAMS

    if options is None:
        return
    runs = list(phases)
    fix = "pass e.g. --phase-option finetune.lr=1e-4 (phase.setting=value)"
    if not isinstance(options, Mapping):
        raise ConfigError(f"phase_options={options!r} must map phase names to settings", fix)
    for phase, settings in options.items():
        if phase not in runs:
            raise ConfigError(f"phase_options names {phase!r}, which this strategy does not run "
                              f"(it runs: {', '.join(runs)})", fix)
        if not isinstance(settings, Mapping):
            raise ConfigError(f"phase_options[{phase!r}] must map settings to values", fix)
        for key, value in settings.items():
            if key not in PHASE_OPTIONS:
                raise ConfigError(f"phase_options[{phase!r}] has the unknown setting {key!r}",
                                  f"use one of: {', '.join(PHASE_OPTIONS)}")
            PARAMS[key].check(value, label=f"phase_options[{phase!r}][{key!r}]")


@dataclass(frozen=True)
class PhaseDefaults:
    """A phase's settings where the user gave none."""

    epochs: int
    lr: float
    optimizer: str = "adam"
    schedule: str = "none"
    patience: int = 4
    weight_decay: float = 0.0


@dataclass
class PhaseContext:
    """What a phase works with: the estimator's parameters, the session, the data, and where
    its checkpoint goes."""

    params: dict[str, Any]
    session: Session
    splits: Splits
    checkpoint_dir: Path | None = None
    resume: bool = False
    callbacks: list[Callback] = field(default_factory=list)
    fingerprint: dict[str, Any] = field(default_factory=dict)
    previous: str | None = None  # the phase that ran before this one, if any
    runtime: Runtime | None = None  # device and precision of phases that run the network
    class_weights: tuple[float, ...] | None = None  # loss weight per class (None: all 1)
    dist: Any = None  # graftwork.distributed.Distributed when several processes train
    refit: bool = False  # retraining a chosen configuration: all its epochs, the last kept

    def checkpoint(self, phase: str) -> Path | None:
        if self.checkpoint_dir is None:
            return None
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        return self.checkpoint_dir / f"checkpoint-{phase}.pt"


@dataclass
class PhasePlan:
    """What ``batches`` returns: the module that trains, an epoch's batches (given a seeded
    generator and the batch size), validation, and how many training examples there are."""

    model: nn.Module
    train: Callable[[torch.Generator, int], Batches]
    validate: Callable[[], dict[str, float]] | None
    n: int
    runtime: bool = True  # False: the training loop runs on the CPU in fp32 (a head on an engine)
    example: Any = None  # an input batch of ``model``: inference-mode BN gets folded (fold.py)


class Phase:
    """Base class of training strategies; see the module docstring for the protocol."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    defaults: ClassVar[PhaseDefaults] = PhaseDefaults(epochs=10, lr=1e-3)
    warmup: ClassVar[tuple[str, ...]] = ()
    needs_network: ClassVar[bool] = True
    changes_backbone: ClassVar[bool] = False

    # -------------------------------------------------------------- the protocol
    def check(self, ctx: PhaseContext) -> None:
        """Fail before any training when the parameters do not fit (default: nothing)."""

    def trainable(self, ctx: PhaseContext) -> None:
        """Set ``requires_grad``: by default the backbone is frozen and the head trains."""
        if ctx.session.network_built:
            freeze_backbone(ctx.session.model.backbone, 0)

    def config(self, params: Mapping[str, Any], n_train: int,
               per_class: float | None = None) -> TrainConfig:
        """The phase's settings: the user's where given (``phase_options`` for this phase
        first), else ``defaults`` (which a phase may adapt to ``n_train`` training images,
        ``per_class`` per class)."""
        p, d = phase_params(params, self.name), self.defaults
        return TrainConfig(epochs=p.get("epochs") or d.epochs, lr=p.get("lr") or d.lr,
                           optimizer=p.get("optimizer") or d.optimizer,
                           schedule=p.get("schedule") or d.schedule,
                           patience=p.get("patience") or d.patience, seed=p.get("seed", 0),
                           batch_size=p.get("batch_size", 32),
                           label_smoothing=p.get("label_smoothing") or 0.0,
                           weight_decay=d.weight_decay if p.get("weight_decay") is None
                           else p["weight_decay"])

    def param_groups(self, ctx: PhaseContext, cfg: TrainConfig) -> list[dict[str, Any]] | None:
        """Optimizer parameter groups (None: every trainable parameter at ``cfg.lr``)."""
        return None

    def batches(self, ctx: PhaseContext) -> PhasePlan:
        """What the phase trains on (see :class:`PhasePlan`)."""
        raise NotImplementedError

    def skip(self, ctx: PhaseContext, best_val_accuracy: float | None) -> str | None:
        """In a sequence (the ladder), why this rung does not pay for the data and is not run,
        or None (the default): it runs. ``best_val_accuracy``: the best rung's so far. Asked
        for alone (``strategy=<name>``) a phase always runs."""
        return None

    def warm_start(self, ctx: PhaseContext) -> None:
        """Start from the previous phase's weights (default: the shared head carries over)."""

    def counts(self, ctx: PhaseContext) -> dict[str, int]:
        """Trainable / frozen / BN-buffer counts while this phase trains."""
        s = ctx.session
        return parameter_counts(s.model) if s.network_built else s.counts()

    # -------------------------------------------------------------- the template
    def run(self, ctx: PhaseContext) -> tuple[FitResult, TrainConfig, dict[str, int]]:
        """Warm-start, choose what trains, build batches, train; returns the result, the
        settings used and the parameter counts."""
        self.warm_start(ctx)
        self.trainable(ctx)
        counts = self.counts(ctx)
        if self.changes_backbone:
            ctx.session.pristine = False
        plan = self.batches(ctx)
        cfg = self.config(ctx.params, plan.n, images_per_class(ctx.splits))
        if ctx.class_weights is not None:
            cfg = replace(cfg, class_weights=ctx.class_weights)
        groups = self.param_groups(ctx, cfg)
        dispatch(ctx.callbacks, "on_phase_start", self.name, {"config": cfg.as_dict(),
                                                              **counts})
        bs = cfg.batch_size
        folding = (folded_batchnorm(plan.model, plan.example) if plan.example is not None
                   else nullcontext())
        with folding:
            result = fit(plan.model, lambda g: plan.train(g, bs), plan.validate, cfg,
                         param_groups=groups, steps_per_epoch=max(1, math.ceil(plan.n / bs)),
                         phase=self.name, progress=ctx.session.options.progress,
                         checkpoint=ctx.checkpoint(self.name), resume=ctx.resume,
                         callbacks=ctx.callbacks,
                         fingerprint={**ctx.fingerprint, "phase": self.name,
                                      "settings": cfg.as_dict()},
                         runtime=ctx.runtime if self.needs_network and plan.runtime else None,
                         dist=ctx.dist if self.needs_network else None,
                         keep_start=ctx.previous is not None and not ctx.refit,
                         keep_last=ctx.refit)
        if self.needs_network and ctx.session.network_built:
            ctx.session.model.to("cpu")  # saved, evaluated and exported from the CPU
        return result, cfg, counts


def images_per_class(splits: Splits) -> float:
    """Training images per class: what data-size rules (``unfreeze="auto"``, the ladder's
    ``skip``) depend on."""
    return len(splits.train) / max(1, len(splits.classes))


def feature_batch_size(batch_size: int, n_train: int, cap: int = 256) -> int:
    """Batch size for a head on in-memory features: ~20+ steps per epoch, at most ``cap``.

    Per-step overhead, not arithmetic, dominates a small head: 5,000 vectors train several
    times faster in batches of 250 than of 32, to the same accuracy.
    """
    return max(batch_size, min(cap, n_train // 20))


def sqrt_scaled_lr(lr: float, batch: int, base_batch: int) -> float:
    """Square-root scaling keeps Adam's step noise comparable across batch sizes."""
    return lr * math.sqrt(batch / base_batch)
