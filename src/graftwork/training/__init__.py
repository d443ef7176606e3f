"""Training: the loop (:mod:`.loop`: optimisers, schedules, early stopping, resume), its
checkpoints (:mod:`.checkpoint`), callbacks and loggers (:mod:`.callbacks`), devices and
precision (:mod:`.devices`) and data-parallel processes (:mod:`.distributed`)."""
from __future__ import annotations

from graftwork.training.loop import (OPTIMIZERS, SCHEDULES, FitResult, TrainConfig, evaluate, fit,
                                     make_optimizer, resolve_class_weights, seed_everything,
                                     tensor_batches, torch_threads)

__all__ = ["TrainConfig", "FitResult", "fit", "evaluate", "tensor_batches", "make_optimizer",
           "OPTIMIZERS", "SCHEDULES", "seed_everything", "torch_threads",
           "resolve_class_weights"]
