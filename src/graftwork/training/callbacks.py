"""Training events and the loggers that listen to them.

A callback is one small object with any of ``on_phase_start``, ``on_epoch_end``,
``on_phase_end``; the training loop calls every callback it is given. The run's history
(``history.csv``) is one of them (:class:`History`), the per-epoch log line another
(:class:`LogLines`); :class:`TensorBoard` writes curves for TensorBoard (``--logger
tensorboard``, extra ``graftwork[tensorboard]``). To add a logger, write one class here and register
it in ``LOGGERS`` (``LOGGERS.register(name, factory)``).
"""
from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from graftwork.registry import Registry

__all__ = ["Callback", "History", "LogLines", "TensorBoard", "LOGGERS", "create_loggers",
           "dispatch"]

log = logging.getLogger("graftwork.training")


class Callback:
    """Protocol (every method optional): phase start, end of each epoch, phase end."""

    def on_phase_start(self, phase: str, info: dict[str, Any]) -> None:
        """A phase starts: ``info`` has its settings and trainable counts."""

    def on_epoch_end(self, phase: str, row: dict[str, Any]) -> None:
        """One epoch finished: ``row`` has phase, epoch, loss, accuracy, val_loss,
        val_accuracy, lr (history.csv's columns)."""

    def on_phase_end(self, phase: str, summary: dict[str, Any]) -> None:
        """A phase finished: ``summary`` is its row of the ladder table."""


def dispatch(callbacks: Sequence[Callback], event: str, *args: Any) -> None:
    """Call ``event`` on every callback."""
    for cb in callbacks:
        getattr(cb, event)(*args)


class History(Callback):
    """Collects every epoch's row: the run's ``history.csv``."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def on_epoch_end(self, phase: str, row: dict[str, Any]) -> None:
        self.rows.append(dict(row))


class LogLines(Callback):
    """One log line per epoch (shown where no progress bar shows the epochs)."""

    def on_epoch_end(self, phase: str, row: dict[str, Any]) -> None:
        val = row.get("val_accuracy")
        tail = (f" val_loss {row['val_loss']:.4f} val_acc {val:.4f}"
                if isinstance(val, float) and math.isfinite(val) else "")
        log.info("%s epoch %d: loss %.4f acc %.4f%s", phase, row["epoch"], row["loss"],
                 row["accuracy"], tail)


class TensorBoard(Callback):
    """Scalars per epoch (``<phase>/loss``, ``<phase>/val_accuracy``, ...) and a global step
    across phases, for ``tensorboard --logdir RUN/tensorboard``."""

    def __init__(self, log_dir: str | Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:
            from graftwork.errors import ConfigError

            raise ConfigError("the TensorBoard logger needs the tensorboard package",
                              "pip install 'graftwork[tensorboard]'") from exc
        self.writer = SummaryWriter(str(log_dir))
        self.step = 0

    def on_epoch_end(self, phase: str, row: dict[str, Any]) -> None:
        self.step += 1
        for key in ("loss", "accuracy", "val_loss", "val_accuracy", "lr"):
            value = row.get(key)
            if isinstance(value, (int, float)) and math.isfinite(value):
                self.writer.add_scalar(f"{phase}/{key}", value, self.step)
        self.writer.flush()

    def on_phase_end(self, phase: str, summary: dict[str, Any]) -> None:
        self.writer.add_text("phases", f"{phase}: best val accuracy "
                             f"{summary.get('best_val_accuracy')}", self.step)
        self.writer.flush()


#: Loggers by name (the ``--logger`` choices): ``run_dir -> Callback``.
LOGGERS: Registry[Callable[[Any], Callback]] = Registry("logger", flag="--logger")
LOGGERS.register("tensorboard", lambda run_dir: TensorBoard(Path(run_dir) / "tensorboard"))


def create_loggers(names: Sequence[str], run_dir: str | Path | None) -> list[Callback]:
    """Loggers by name (``LOGGERS``), writing under ``run_dir``."""
    from graftwork.errors import ConfigError

    out = []
    for name in names:
        if name not in LOGGERS:
            raise ConfigError(f"unknown logger {name!r}", f"choose one of {sorted(LOGGERS)}")
        if run_dir is None:
            raise ConfigError(f"the {name} logger needs a run directory", "pass --out RUN")
        out.append(LOGGERS[name](run_dir))
    return out
