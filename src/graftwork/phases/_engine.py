"""The frozen part of the network on an inference engine, the trainable part in torch.

In ``frozen`` the whole backbone is pure inference: it runs on the fastest engine available
(ONNX Runtime, or eager torch) on uint8 augmented images decoded in worker processes, and only
the head trains. In ``finetune`` the backbone is split at the first unfrozen block
(``Backbone.split``): the frozen prefix runs on the engine, the suffix and the head train in
torch. The result equals the all-torch path within float tolerance (tests/test_engine_phases.py);
frozen BatchNorm layers only ever run in inference mode.
"""
from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import nn

from graftwork.data.discover import Sample
from graftwork.data.preprocess import Preprocessing
from graftwork.features import FeatureCache, bind_pixels
from graftwork.features.engines import Runner
from graftwork.features.pipeline import Gate
from graftwork.features.decode import AugmentPixels, FastEvalTransform
from graftwork.model.graft import GraftModel

__all__ = ["OnEngine", "bind_prefix", "split_or_none", "pixel_batches"]

log = logging.getLogger(__name__)


class OnEngine(nn.Module):
    """uint8 NHWC pixels -> logits: ``runner`` (no gradient) then ``tail`` (trains).

    ``train()`` goes through the whole ``GraftModel``, so the BatchNorm policy (frozen or
    unfrozen-but-inference BN stays in eval mode) applies to the tail's layers too.
    """

    def __init__(self, runner: Runner, tail: nn.Module, graft: GraftModel,
                 gate: Gate | None = None) -> None:
        super().__init__()
        self.runner = runner
        self.tail = tail
        self.graft = [graft]  # not a child: its parameters are the tail's and the prefix's
        self.gate = gate  # decode workers pause while the engine computes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), self.computing():
            maps = self.runner(x)
        if maps.dim() == 4:  # the tail's convolutions run fastest channels_last on CPU
            maps = maps.contiguous(memory_format=torch.channels_last)
        return self.tail(maps)

    def computing(self) -> contextlib.AbstractContextManager[None]:
        """Decode workers wait while this is open: training wraps its whole step in it."""
        return self.gate.closed() if self.gate else contextlib.nullcontext()

    def train(self, mode: bool = True) -> OnEngine:
        self.training = mode
        self.graft[0].train(mode)
        return self


def split_or_none(backbone: Any, unfreeze: int | str) -> tuple[nn.Module, nn.Module] | None:
    """``backbone.split(unfreeze)``, or None for architectures it cannot split."""
    try:
        return backbone.split(unfreeze)
    except NotImplementedError as exc:
        log.info("cannot split %s (%s): the whole network runs in torch", backbone.spec.name, exc)
        return None


def bind_prefix(prefix: nn.Module, graft: GraftModel, preprocessing: Preprocessing,
                cache: FeatureCache, engine: Any, images: int) -> Runner:
    """The frozen ``prefix`` on uint8 pixels, bound to an engine (exports kept in the cache).
    The model is put in eval mode through ``graft`` (never ``.train()`` on a part)."""
    graft.eval()
    return bind_pixels(prefix, preprocessing, cache.dir, "prefix", engine, images)


def identity_runner() -> Runner:
    """A runner for inputs that are already the prefix's output (precomputed maps)."""
    return Runner("maps", lambda x: x)


def uses_engine(ctx: Any) -> bool:
    """The engine path serves CPU runs; on CUDA/MPS the whole network runs in torch."""
    return ctx.runtime is None or ctx.runtime.device.type == "cpu"


def pixel_batches(session: Any, samples: Sequence[Sample], augment: Any, policy: str | None = None,
                  gate: Gate | None = None
                  ) -> Callable[[torch.Generator | None, int], Iterator[tuple[torch.Tensor, torch.Tensor]]]:
    """Epochs of uint8 NHWC batches: augmented when ``augment`` is given, else eval crops;
    with a ``gate``, decoded by one worker per core while the engine is idle."""
    pre = session.preprocessing
    tf = (AugmentPixels(pre, augment, policy or "classic") if augment is not None
          and policy != "none" else FastEvalTransform(pre))

    def epoch(generator: torch.Generator | None, batch_size: int
              ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return session.raw_batches(samples, tf, generator, batch_size, gate)
    return epoch
