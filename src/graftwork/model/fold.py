"""Training with inference-mode BatchNorm folded into the convolution before it.

A BN layer in inference mode (graftwork's default for every BN layer, frozen or not) is an
affine map per channel: ``y = (x - mean) / sqrt(var + eps) * gamma + beta``. After a
convolution it can be folded into the convolution's weights, ``W' = W * s`` and
``b' = beta - mean * s`` with ``s = gamma / sqrt(var + eps)``, which is the same function with the
same gradients for ``W``, ``gamma`` and ``beta``, computed on the small weight tensors instead of
on every activation. In a torch profile of an efficientnet_lite0 training step at 160 px on
a 2-core CPU, BN's forward and backward passes took about a quarter of the step;
``bench/fold_probe.py`` measures the step folded and not, in one run.

:func:`folded_batchnorm` swaps each conv → inference-mode BN pair of a module for a folded pair
while training runs and restores the original layers afterwards. The folded layers hold the
very same parameters and buffers under the same names, so the optimizer, ``state_dict`` and
checkpoints see no difference. Pairs are found on an example batch (a BN whose input is a
convolution's output); the folded module is checked against the original on that batch, and
nothing is folded when they disagree.
"""
from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["folded_batchnorm", "foldable_pairs"]

log = logging.getLogger(__name__)

_TOLERANCE = 1e-3  # max |difference| relative to the output's scale, on the example batch


@functools.cache
def _bn_types() -> tuple[type, ...]:
    """BN classes whose inference forward is known: torch's, and timm's BN + activation."""
    types: list[type] = [nn.BatchNorm2d]
    with contextlib.suppress(ImportError):
        from timm.layers import BatchNormAct2d
        types.append(BatchNormAct2d)
    return tuple(types)


def _foldable_bn(bn: nn.Module) -> bool:
    return (type(bn) in _bn_types() and not bn.training and bn.track_running_stats
            and bn.running_mean is not None)


def _conv_function(conv: nn.Module) -> Any:
    """``f(x, weight, bias)`` computing ``conv`` with other weights, or None when ``conv`` is
    not a plain 2-D convolution: torch's, or timm's TensorFlow-style "same" padding one."""
    if type(conv) is nn.Conv2d and conv.padding_mode == "zeros":
        return lambda x, w, b: F.conv2d(x, w, b, conv.stride, conv.padding, conv.dilation,
                                        conv.groups)
    try:
        from timm.layers.conv2d_same import Conv2dSame, conv2d_same
    except ImportError:
        return None
    if type(conv) is Conv2dSame:
        return lambda x, w, b: conv2d_same(x, w, b, conv.stride, conv.padding, conv.dilation,
                                           conv.groups)
    return None


def _foldable_conv(conv: nn.Module) -> bool:
    return _conv_function(conv) is not None


class _FoldedConv(nn.Module):
    """``conv`` then inference-mode ``bn``, as one convolution with folded weights. Registers
    only the convolution's parameters (its ``state_dict`` keys are the convolution's)."""

    def __init__(self, conv: nn.Conv2d, bn: nn.modules.batchnorm._BatchNorm) -> None:
        super().__init__()
        self.weight = conv.weight
        self.bias = conv.bias
        self._pair = (conv, bn)  # a tuple: not registered as children
        self._conv = _conv_function(conv)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv, bn = self._pair
        scale = torch.rsqrt(bn.running_var + bn.eps)
        if bn.weight is not None:
            scale = scale * bn.weight
        shift = -bn.running_mean * scale
        if conv.bias is not None:
            shift = shift + conv.bias * scale
        if bn.bias is not None:
            shift = shift + bn.bias
        weight = conv.weight * scale.reshape(-1, 1, 1, 1)
        return self._conv(x, weight, shift)


class _FoldedBN(nn.Module):
    """What is left of a folded BN layer: its activation (timm's ``BatchNormAct2d``) or
    nothing. Holds the BN's parameters and buffers under their names, for ``state_dict``."""

    def __init__(self, bn: nn.modules.batchnorm._BatchNorm) -> None:
        super().__init__()
        for name, p in bn.named_parameters(recurse=False):
            self.register_parameter(name, p)
        for name, b in bn.named_buffers(recurse=False):
            self.register_buffer(name, b)
        self.drop = getattr(bn, "drop", nn.Identity())
        self.act = getattr(bn, "act", nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.drop(x))


def foldable_pairs(module: nn.Module, example: Any) -> list[tuple[str, str]]:
    """Names of (conv, BN) pairs in ``module`` where the BN, in inference mode once
    ``module.train()`` has applied its BN policy, normalises exactly that convolution's output
    (seen on ``example``)."""
    names = {id(m): n for n, m in module.named_modules()}
    produced: dict[int, tuple[str, torch.Tensor]] = {}  # id(output) -> conv, output (kept
    # alive, so that no later tensor reuses its id)
    pairs: list[tuple[str, str]] = []

    def on_conv(mod: nn.Module, _: Any, out: Any) -> None:
        produced[id(out)] = (names[id(mod)], out)

    def on_bn(mod: nn.Module, inputs: Any) -> None:
        conv = produced.get(id(inputs[0]))
        if conv is not None and conv[1] is inputs[0] and _foldable_bn(mod):
            pairs.append((conv[0], names[id(mod)]))

    was_training = module.training
    module.train()  # the BN policy decides which BN layers stay in inference mode
    # BN layers the policy leaves in training mode would fold the example batch into their
    # running statistics: every buffer is put back as it was
    buffers = [(b, b.clone()) for b in module.buffers()]
    hooks = [m.register_forward_hook(on_conv) for m in module.modules() if _foldable_conv(m)]
    hooks += [m.register_forward_pre_hook(on_bn) for m in module.modules()
              if isinstance(m, _bn_types())]
    try:
        with torch.no_grad():
            module(example)
    finally:
        for h in hooks:
            h.remove()
        with torch.no_grad():
            for buffer, saved in buffers:
                buffer.copy_(saved)
        module.train(was_training)
    return pairs


def _swap(module: nn.Module, name: str, new: nn.Module) -> nn.Module:
    old = module.get_submodule(name)
    module.set_submodule(name, new)
    return old


@contextlib.contextmanager
def folded_batchnorm(module: nn.Module, example: Any) -> Iterator[int]:
    """Within the block, every conv → inference-mode BN pair of ``module`` runs folded (see the
    module docstring); yields how many pairs were folded (0 when none were found or the folded
    module disagreed with the original on ``example``)."""
    try:
        pairs = foldable_pairs(module, example)
    except Exception as exc:  # noqa: BLE001 - folding is an optimisation: never fatal
        log.debug("BN folding skipped: the example batch failed (%s)", exc)
        pairs = []
    originals: list[tuple[str, nn.Module]] = []

    def undo() -> None:
        for name, old in reversed(originals):
            _swap(module, name, old)
        originals.clear()

    if pairs:
        was_training = module.training
        module.eval()
        try:
            with torch.no_grad():
                want = module(example).float()
                for conv_name, bn_name in pairs:
                    conv, bn = module.get_submodule(conv_name), module.get_submodule(bn_name)
                    originals.append((conv_name, _swap(module, conv_name,
                                                       _FoldedConv(conv, bn))))
                    originals.append((bn_name, _swap(module, bn_name, _FoldedBN(bn))))
                got = module(example).float()
        except Exception:
            undo()  # never leave the module half-swapped
            raise
        finally:
            module.train(was_training)
        err = (got - want).abs().max().item() / max(1.0, want.abs().max().item())
        if err > _TOLERANCE:
            log.info("BN folding skipped: folded output differs by %.2g", err)
            undo()
        else:
            log.info("BatchNorm folded into %d convolutions while training", len(pairs))
    try:
        yield len(originals) // 2
    finally:
        undo()
