"""Where the network runs and at what precision: ``--device`` and ``--precision``.

``resolve_device("auto")`` picks CUDA, then Apple MPS, then the CPU; explicit names are checked
against what exists. ``resolve_precision("auto", device)`` picks bfloat16 autocast where it
pays (CPUs with AMX, CUDA GPUs that support bf16), fp16 with a gradient scaler on older CUDA
GPUs, and fp32 everywhere else (AVX512-BF16 without AMX trained no faster in bf16). CPU
features are detected (``/proc/cpuinfo`` and torch's capability string), never guessed.
"""
from __future__ import annotations

import contextlib
import functools
import logging
import platform
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from graftwork.errors import ConfigError
from graftwork.registry import Registry

if TYPE_CHECKING:
    import torch

__all__ = [
    "Precision", "cpu_features", "cpu_has_native_bf16", "resolve_device", "resolve_precision",
    "to_device", "loader_kwargs", "available_devices", "machine_summary", "Runtime",
    "PRECISIONS",
]

log = logging.getLogger(__name__)

_BF16_FLAGS = ("amx_bf16", "amx_tile", "avx512_bf16")  # AMX first: what `auto` trains in bf16 on
_AMX_FLAGS = ("amx_bf16", "amx_tile")
_DEVICE_RX = re.compile(r"^(cpu|mps|cuda)(?::(\d+))?$")


@functools.lru_cache(maxsize=1)
def cpu_features() -> frozenset[str]:
    """CPU flags from ``/proc/cpuinfo`` (Linux) plus torch's capability (e.g. ``"avx512"``).

    Torch's capability is added lower-cased with a ``torch:`` prefix (``torch:avx512``).
    """
    flags: set[str] = set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):  # x86 / arm
                    flags.update(value.split())
    except OSError:
        pass
    try:
        import torch

        cap = torch.backends.cpu.get_cpu_capability()
        if cap:
            flags.add(f"torch:{cap.lower()}")
    except Exception:  # noqa: BLE001 - capability is a hint only
        pass
    return frozenset(flags)


def _native_bf16_flag() -> str | None:
    """The CPU flag that proves native bf16 arithmetic, or None."""
    feats = cpu_features()
    for flag in _BF16_FLAGS:
        if flag in feats:
            return flag
    return None


def cpu_has_native_bf16() -> bool:
    """True only when the CPU is proven to compute bf16 natively (AVX512-BF16 or AMX).

    macOS and ARM machines without such a proof (no ``/proc/cpuinfo`` flag) return False.
    """
    return _native_bf16_flag() is not None


def available_devices() -> list[str]:
    """Names of the devices that exist here, e.g. ``["cpu", "cuda:0", "mps"]``."""
    import torch

    out = ["cpu"]
    if torch.cuda.is_available():
        out += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if _mps_available():
        out.append("mps")
    return out


def _mps_available() -> bool:
    import torch

    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def _device_error(spec: str, why: str) -> ConfigError:
    have = ", ".join(available_devices())
    return ConfigError(f"--device {spec}: {why}; devices here: {have}",
                       "use --device cpu (or --device auto)")


def resolve_device(spec: str = "auto") -> torch.device:
    """``"auto"`` -> cuda, else mps, else cpu; ``cpu``/``cuda``/``cuda:N``/``mps`` are checked."""
    import torch

    text = (spec or "auto").strip().lower()
    if text == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    match = _DEVICE_RX.match(text)
    if not match:
        raise ConfigError(f"--device {spec}: unknown device",
                          "use --device auto, cpu, cuda, cuda:N or mps")
    kind, index = match.group(1), match.group(2)
    if kind == "cpu":
        if index not in (None, "0"):
            raise _device_error(spec, "there is only one cpu device")
        return torch.device("cpu")
    if kind == "mps":
        if not _mps_available():
            raise _device_error(spec, "Apple MPS is not available")
        return torch.device("mps")
    if not torch.cuda.is_available():
        raise _device_error(spec, "no CUDA device is available (or torch is a CPU-only build)")
    count = torch.cuda.device_count()
    if index is None:
        return torch.device("cuda")
    i = int(index)
    if i >= count:
        raise _device_error(spec, f"there {'is' if count == 1 else 'are'} only {count} CUDA "
                                  f"device{'s' if count != 1 else ''}")
    return torch.device("cuda", i)


@dataclass(frozen=True)
class Precision:
    """A training/inference precision: autocast dtype (None = fp32) and whether to scale grads."""

    name: str  # "fp32", "bf16" or "fp16"
    autocast_dtype: Any = None  # torch.dtype | None
    use_grad_scaler: bool = False
    reason: str = ""
    device: str = ""  # the device it was resolved for (for describe)

    def autocast(self, device: torch.device | str) -> contextlib.AbstractContextManager[Any]:
        """``torch.autocast`` for this precision on ``device`` (a null context for fp32)."""
        import torch

        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=_device_type(device), dtype=self.autocast_dtype)

    def grad_scaler(self, device: torch.device | str) -> Any:
        """A ``torch.amp.GradScaler`` when fp16 needs one, else None."""
        import torch

        if not self.use_grad_scaler:
            return None
        return torch.amp.GradScaler(_device_type(device))

    def describe(self, device: torch.device | str | None = None) -> dict[str, str]:
        """JSON-able facts for config.json: device, precision and why it was chosen."""
        return {"device": str(device if device is not None else self.device),
                "precision": self.name, "reason": self.reason}


def _device_type(device: torch.device | str) -> str:
    return device.type if hasattr(device, "type") else str(device).split(":")[0]


#: The ``--precision`` choices (``resolve_precision`` also takes aliases such as ``float32``).
PRECISIONS: Registry[str] = Registry("precision", flag="--precision")
PRECISIONS.register("auto", "bf16 where native, fp16 on GPUs without bf16, else fp32")
PRECISIONS.register("fp32", "no autocast")
PRECISIONS.register("bf16", "bfloat16 autocast")
PRECISIONS.register("fp16", "float16 autocast (gradient scaling on CUDA)")


def _fp32(reason: str) -> Precision:
    return Precision("fp32", None, False, reason)


def resolve_precision(spec: str, device: torch.device | str) -> Precision:
    """The precision for ``spec`` (``auto``, ``fp32``, ``bf16``, ``fp16``) on ``device``."""
    p = _resolve_precision(spec, device)
    return Precision(p.name, p.autocast_dtype, p.use_grad_scaler, p.reason, str(device))


def _resolve_precision(spec: str, device: torch.device | str) -> Precision:
    import torch

    text = (spec or "auto").strip().lower()
    aliases = {"float32": "fp32", "32": "fp32", "bfloat16": "bf16", "float16": "fp16",
               "half": "fp16", "16": "fp16"}
    text = aliases.get(text, text)
    kind = _device_type(device)
    bf16 = Precision("bf16", torch.bfloat16, False)
    fp16 = Precision("fp16", torch.float16, kind == "cuda")
    if text == "auto":
        if kind == "cpu":
            flag = _native_bf16_flag()
            if flag in _AMX_FLAGS:
                return _with_reason(bf16, f"CPU has {flag}")
            if flag:  # bench/results.md: bf16/fp32 fine-tuning speed 1.00x, all blocks slower
                return _fp32(f"CPU has {flag} but no AMX: bf16 autocast trains no faster")
            return _fp32("CPU has no native bf16 (avx512_bf16/amx)")
        if kind == "cuda":
            if torch.cuda.is_bf16_supported():
                return _with_reason(bf16, "CUDA device supports bf16")
            return _with_reason(fp16, "CUDA device without bf16: fp16 with gradient scaling")
        return _fp32(f"{kind}: fp32 by default (ask for fp16 explicitly)")
    if text == "fp32":
        return _fp32("asked for")
    if text == "bf16":
        if kind == "cpu" and not cpu_has_native_bf16():
            log.warning("--precision bf16 on a CPU without native bf16 (avx512_bf16/amx): "
                        "it is emulated and will likely be slower than fp32")
            return _with_reason(bf16, "asked for (CPU without native bf16: emulated, slow)")
        if kind == "cuda" and not torch.cuda.is_bf16_supported():
            raise ConfigError(f"--precision bf16: the CUDA device {device} does not support bf16",
                              "use --precision fp16 or fp32")
        return _with_reason(bf16, "asked for")
    if text == "fp16":
        if kind == "cpu":
            raise ConfigError("--precision fp16 is not supported on the CPU",
                              "use --precision bf16 or fp32 (or auto)")
        return _with_reason(fp16, "asked for" + (" (with gradient scaling)" if kind == "cuda"
                                                 else ""))
    raise ConfigError(f"--precision {spec}: unknown precision",
                      f"use {', '.join(PRECISIONS.names()[:-1])} or {PRECISIONS.names()[-1]}")


def _with_reason(p: Precision, reason: str) -> Precision:
    return Precision(p.name, p.autocast_dtype, p.use_grad_scaler, reason)


def to_device(batch: Any, device: torch.device | str) -> Any:
    """Move tensors (also inside dicts, lists and tuples) to ``device``; non-blocking on CUDA."""
    import torch

    non_blocking = _device_type(device) == "cuda"
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=non_blocking)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        moved = [to_device(v, device) for v in batch]
        return type(batch)(moved) if not hasattr(batch, "_fields") else type(batch)(*moved)
    return batch


def loader_kwargs(device: torch.device | str) -> dict[str, Any]:
    """DataLoader arguments for ``device`` (pinned host memory only when copying to CUDA)."""
    return {"pin_memory": _device_type(device) == "cuda"}


def machine_summary() -> dict[str, Any]:
    """A short description of the CPU for logs (architecture, bf16 proof)."""
    return {"machine": platform.machine(), "native_bf16": _native_bf16_flag() or "none"}


@dataclass(frozen=True)
class Runtime:
    """Where and at what precision a training loop runs (what ``--device``/``--precision``
    resolve to); passed to ``training.fit`` and ``training.evaluate``."""

    device: Any  # torch.device
    precision: Precision

    @classmethod
    def resolve(cls, device: str = "auto", precision: str = "auto") -> Runtime:
        dev = resolve_device(device)
        return cls(dev, resolve_precision(precision, dev))

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        return self.precision.autocast(self.device)

    def to(self, batch: Any) -> Any:
        return to_device(batch, self.device) if self.device.type != "cpu" else batch

    def describe(self) -> dict[str, str]:
        return self.precision.describe(self.device)
