"""Multi-process data-parallel training on Hugging Face Accelerate: the one object the training
loop consults (None for one process), made by ``fit_classifier`` when launched by torchrun or
``accelerate launch`` (``graft train --num-processes N`` relaunches under torchrun); see
``docs/scaling-out.md``. Tested with real processes in ``tests/test_scaleout.py``.

- :meth:`Distributed.prepare` wraps a model for DDP — call it after the phase has set
  ``requires_grad`` (DDP records the trainable parameters when it wraps), once per phase;
- :meth:`Distributed.shard_batches` gives each process its share of an epoch's batches (every
  process builds the same seeded batches; rank ``r`` takes batches ``r, r + N, ...``, padded so
  that all run the same number of steps — DDP would hang otherwise);
- :meth:`Distributed.evaluate` scores a split sharded over the processes and gathered with
  ``gather_for_metrics`` (the padding is dropped: each image counted once);
- :meth:`Distributed.average_bn` averages BatchNorm running statistics across processes;
- :attr:`Distributed.is_main`: only the main process writes the run directory, checkpoints and
  the cache index.
"""
from __future__ import annotations

import atexit
import contextlib
import os
import sys
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import torch
from torch import nn

__all__ = ["Distributed", "is_main_process", "relaunch"]


def is_main_process() -> bool:
    """True unless launched by torchrun / accelerate launch as a rank other than 0."""
    return int(os.environ.get("RANK", "0") or 0) == 0


def relaunch(processes: int, argv: list[str] | None = None) -> None:
    """Replace this process by ``torchrun --standalone --nproc_per_node N -m graftwork ARGS``
    (ARGS: this command line without ``--num-processes``); never returns."""
    args, rest = [], list(sys.argv[1:] if argv is None else argv)
    while rest:
        arg = rest.pop(0)
        if arg == "--num-processes":
            rest = rest[1:]
        elif not arg.startswith("--num-processes="):
            args.append(arg)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           "--nproc_per_node", str(processes), "-m", "graftwork", *args]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, cmd)


class Distributed:
    """Accelerate's state for this process (CPU: gloo, one torch thread per process)."""

    def __init__(self, cpu: bool = True) -> None:
        from accelerate import Accelerator

        if cpu:
            torch.set_num_threads(1)  # N processes on N cores: no oversubscription
        self.accelerator = Accelerator(cpu=cpu)
        self.rank = self.accelerator.process_index
        self.world = self.accelerator.num_processes
        # the process group left to interpreter shutdown can abort the process ("terminate
        # called without an active exception") after all the work is done
        atexit.register(self.close)

    def close(self) -> None:
        """Destroy the process group (local, no collective: safe when another rank failed);
        called at exit, again is a no-op."""
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            self.accelerator.end_training()

    @classmethod
    def from_env(cls) -> Distributed | None:
        """A context when launched by torchrun / accelerate launch with several processes."""
        return cls() if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1 else None

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    def prepare(self, model: nn.Module) -> nn.Module:
        """``model`` wrapped for data parallel training (its trainable parameters as they are
        now); a model with nothing to train is returned as is."""
        if not any(p.requires_grad for p in model.parameters()):
            return model
        return self.accelerator.prepare_model(model)

    def uneven(self, model: nn.Module) -> contextlib.AbstractContextManager[Any]:
        """Around an epoch of ``model`` (as ``prepare`` returned it): a process that runs out of
        batches early (one skipped: none of its images could be read) shadows the others'
        gradient all-reduces (``torch.distributed.algorithms.Join``) instead of leaving them
        waiting for ever; a model that is not wrapped needs nothing."""
        from torch.distributed.algorithms import Join
        from torch.nn.parallel import DistributedDataParallel

        if isinstance(model, DistributedDataParallel):
            return Join([model])
        return contextlib.nullcontext()

    def unwrap(self, model: nn.Module) -> nn.Module:
        return self.accelerator.unwrap_model(model)

    def own(self, batches: Sequence[Any]) -> list[Any]:
        """This process's share of ``batches`` (the same list on every process): items
        ``rank, rank + world, ...``, the first repeated where one is short at the end."""
        mine = list(batches[self.rank::self.world])
        rounds = -(-len(batches) // self.world)
        return mine + mine[:1] * (rounds - len(mine)) if mine else list(batches[:1]) * rounds

    def shard_batches(self, batches: Iterable[Any], steps: int) -> Iterator[Any]:
        """This process's batches of one epoch of ``steps`` batches (the same on every
        process): batches ``rank, rank + world, ...``; a process short of one at the end
        repeats its first (as ``DistributedSampler`` pads)."""
        rounds = -(-steps // self.world)
        first = None
        mine = 0
        for i, batch in enumerate(batches):
            if i % self.world == self.rank:
                first = batch if first is None else first
                mine += 1
                yield batch
        while mine < rounds and first is not None:
            mine += 1
            yield first

    def evaluate(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                 batch_size: int = 256) -> dict[str, float]:
        """Accuracy and mean cross-entropy of ``model`` on (x, y): batches shared out by
        Accelerate's data loader, per-example results gathered with ``gather_for_metrics``
        (which drops the examples repeated to even out the last batches): each counts once."""
        loader = self.accelerator.prepare_data_loader(torch.utils.data.DataLoader(
            torch.utils.data.TensorDataset(x, y), batch_size=batch_size))
        was = model.training
        model.eval()
        parts = []
        with torch.inference_mode():
            for xb, yb in loader:
                logits = model(xb)
                losses = nn.functional.cross_entropy(logits, yb, reduction="none")
                right = (logits.argmax(1) == yb).float()
                parts.append(self.accelerator.gather_for_metrics(torch.stack([losses, right], 1)))
        model.train(was)
        both = torch.cat(parts) if parts else torch.zeros(0, 2)
        if not len(both):
            return {"accuracy": float("nan"), "loss": float("nan"), "n": 0}
        return {"accuracy": float(both[:, 1].mean()), "loss": float(both[:, 0].mean()),
                "n": len(both)}

    def average_bn(self, model: nn.Module) -> int:
        """Average every BatchNorm layer's running mean and variance across processes (after
        an epoch in which they trained); returns how many layers."""
        layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
                  and m.running_mean is not None]
        for m in layers:
            for buf in (m.running_mean, m.running_var):
                buf.copy_(self.accelerator.reduce(buf.clone(), reduction="mean"))
        return len(layers)

    def barrier(self) -> None:
        self.accelerator.wait_for_everyone()
