"""Inference engines: what runs a network on uint8 NHWC pixels.

An engine is a small settings object; ``engine.bind(module, ...)`` returns a :class:`Runner`,
a callable ``uint8 NHWC tensor -> float tensor``. Engines are chosen by name
(``create_engine("auto" | "onnx" | "torch")``) or passed in as objects with their settings:

    extract_features(..., engine=OnnxEngine(chunk=1, lanes=2))

To add an engine, write one class with a ``name`` and a ``bind`` method and register it in
``ENGINES`` (``ENGINES.register(name, cls)``: a ``--engine`` choice from then on). Device and
precision plug in here: :class:`TorchEngine` takes ``device`` and ``precision``;
:class:`OnnxEngine` takes the execution ``providers``.
"""
from __future__ import annotations

import logging
import os
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from graftwork.registry import Registry
from graftwork.rundir.files import atomic_file

__all__ = ["Engine", "Runner", "TorchEngine", "OnnxEngine", "AutoEngine", "ENGINES",
           "create_engine", "clear_sessions", "onnx_available", "export_onnx", "ort_session"]

log = logging.getLogger(__name__)


class Runner:
    """A bound engine: ``runner(x_uint8_nhwc) -> outputs``; ``name`` says which engine ran."""

    def __init__(self, name: str, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.name = name
        self._fn = fn

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self._fn(x)


class Engine:
    """Protocol: ``bind(module, example, store, key, images) -> Runner``.

    ``module`` maps uint8 NHWC pixels to outputs and must not change while bound; ``example`` is
    a small input for export and checks; ``store`` is a folder for artefacts (an exported graph)
    and ``key`` identifies the module's state there; ``images`` is the job size, if known.
    """

    name: ClassVar[str] = ""

    def bind(self, module: nn.Module, example: torch.Tensor, store: Path | None = None,
             key: str = "", images: int | None = None) -> Runner:
        raise NotImplementedError


@dataclass(frozen=True)
class TorchEngine(Engine):
    """Eager torch. ``chunk``: images per forward call (on a CPU small chunks keep activations
    in cache: lite0, 2 cores, channels_last: 4 images ~77 img/s vs 64 images ~30 img/s)."""

    name: ClassVar[str] = "torch"
    chunk: int = 4
    device: str = "cpu"
    channels_last: bool = True

    def bind(self, module: nn.Module, example: torch.Tensor, store: Path | None = None,
             key: str = "", images: int | None = None) -> Runner:
        device = torch.device(self.device)
        module = module.eval().to(device)
        if self.channels_last:
            module.to(memory_format=torch.channels_last)
        chunk = self.chunk

        def run(x: torch.Tensor) -> torch.Tensor:
            with torch.inference_mode():
                outs = [module(x[i:i + chunk].to(device, non_blocking=True)).float()
                        for i in range(0, len(x), chunk)]
            return torch.cat(outs).cpu()
        return Runner(self.name, run)


def onnx_available() -> bool:
    """Whether ``onnx`` (the exporter needs it) and ``onnxruntime`` are installed."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def ort_session(path: str | Path, threads: int | None = None, spin: bool = True,
                providers: tuple[str, ...] = ("CPUExecutionProvider",)) -> Any:
    """An ONNX Runtime session with pinned thread counts."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or torch.get_num_threads()
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    usable = [p for p in providers if p in ort.get_available_providers()] or ["CPUExecutionProvider"]
    return ort.InferenceSession(str(path), opts, providers=usable)


def export_onnx(module: nn.Module, example: torch.Tensor, path: str | Path) -> None:
    """Export ``module`` (batch axis dynamic, input ``x``, output ``y``) atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as tmp, torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (example,), tmp, input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "n"}, "y": {0: "n"}}, opset_version=17,
                          dynamo=False)


def _default_providers() -> tuple[str, ...]:
    """CUDA first when onnxruntime-gpu is installed and a GPU is visible, then the CPU."""
    if torch.cuda.is_available():
        return ("CUDAExecutionProvider", "CPUExecutionProvider")
    return ("CPUExecutionProvider",)


_SESSIONS: dict[str, Any] = {}  # "onnx path|threads" -> verified session (per process)
_LANE_POOLS: dict[int, ThreadPoolExecutor] = {}


def clear_sessions() -> None:
    """Forget the verified ONNX Runtime sessions of this process (after a file changed)."""
    _SESSIONS.clear()


def _lane_pool(lanes: int) -> ThreadPoolExecutor:
    if lanes not in _LANE_POOLS:
        _LANE_POOLS[lanes] = ThreadPoolExecutor(lanes, thread_name_prefix="graft-ort")
    return _LANE_POOLS[lanes]


@dataclass(frozen=True)
class OnnxEngine(Engine):
    """ONNX Runtime on an exported graph (about 3x eager torch on a CPU).

    ``chunk``: images per run (1 is fastest on a small CPU); ``lanes``: independent
    single-threaded runs on separate chunks side by side (None: one per torch thread, i.e. per
    core; 1: one run on ``threads`` intra-op threads) — no barrier after every operator, robust
    on a busy machine; ``spin``: idle intra-op threads spin-wait between operators. The graph
    is exported once per module state into ``store`` (checked against torch on a probe batch;
    a damaged file is exported again).
    """

    name: ClassVar[str] = "onnx"
    chunk: int = 1
    lanes: int | None = None
    threads: int | None = None
    spin: bool = True
    providers: tuple[str, ...] | None = None

    def bind(self, module: nn.Module, example: torch.Tensor, store: Path | None = None,
             key: str = "", images: int | None = None) -> Runner:
        if store is None:
            raise ValueError("the ONNX engine needs a folder to keep its exported graph in")
        path = Path(store) / f"{key or 'module'}.onnx"
        threads = self.threads or torch.get_num_threads()
        lanes = max(1, min(threads, self.lanes or threads))
        providers = self.providers or _default_providers()
        cache_key = f"{path}|{threads // lanes}|{','.join(providers)}"
        session = _SESSIONS.get(cache_key) or self._verified_session(
            module.eval(), example, path, threads // lanes, providers)
        _SESSIONS[cache_key] = session
        chunk = self.chunk

        def lane(part: np.ndarray) -> list[np.ndarray]:  # session.run releases the GIL
            return [session.run(None, {"x": part[i:i + chunk]})[0]
                    for i in range(0, len(part), chunk)]

        def run(x: torch.Tensor) -> torch.Tensor:
            arr = x.numpy()
            if lanes > 1 and len(arr) > chunk:  # a contiguous share of the batch per lane
                bounds = np.linspace(0, len(arr), lanes + 1).round().astype(int)
                parts = [arr[a:b] for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
                outs = [o for res in _lane_pool(lanes).map(lane, parts) for o in res]
            else:
                outs = lane(arr)
            return torch.from_numpy(np.concatenate(outs) if len(outs) > 1 else outs[0])
        return Runner(self.name, run)

    def _verified_session(self, module: nn.Module, example: torch.Tensor, path: Path,
                          threads: int, providers: tuple[str, ...]) -> Any:
        with torch.inference_mode():
            want = module(example).float()
        for attempt in range(2):
            fresh = not path.exists()
            if fresh:
                t0 = time.perf_counter()
                export_onnx(module, example[:1], path)
                log.info("exported %s to ONNX in %.1fs", path.name, time.perf_counter() - t0)
            try:
                session = ort_session(path, threads, self.spin, providers)
                got = torch.from_numpy(session.run(None, {"x": example.numpy()})[0])
                if got.shape != want.shape or not torch.allclose(got, want, rtol=1e-3, atol=1e-3):
                    raise ValueError("ONNX model disagrees with torch on a probe batch")
                return session
            except Exception as exc:
                path.unlink(missing_ok=True)
                if fresh or attempt:
                    raise
                log.warning("ONNX model %s unusable (%s): exporting it again", path.name, exc)
        raise AssertionError("unreachable")


@dataclass(frozen=True)
class AutoEngine(Engine):
    """ONNX Runtime when installed, unless the job is too small (``min_images``) to repay a
    first export (a few seconds) that has not happened yet; eager torch otherwise, and whenever
    the ONNX path fails (logged)."""

    name: ClassVar[str] = "auto"
    min_images: int = 128
    onnx: OnnxEngine = field(default_factory=OnnxEngine)
    torch: TorchEngine = field(default_factory=TorchEngine)

    def bind(self, module: nn.Module, example: torch.Tensor, store: Path | None = None,
             key: str = "", images: int | None = None) -> Runner:
        if store is not None and onnx_available():
            path = Path(store) / f"{key or 'module'}.onnx"
            bound = any(k.startswith(f"{path}|") for k in _SESSIONS)
            if images is None or images >= self.min_images or bound or path.exists():
                try:
                    return self.onnx.bind(module, example, store, key, images)
                except Exception as exc:  # exporter or runtime trouble: torch still works
                    log.warning("ONNX Runtime unavailable for this network (%s: %s); using torch",
                                type(exc).__name__, exc)
        return self.torch.bind(module, example, store, key, images)


#: Engines by name: the ``--engine`` choices (``graftwork.params`` reads them when parsing).
ENGINES: Registry[type[Engine]] = Registry("engine", flag="--engine")
for _cls in (AutoEngine, OnnxEngine, TorchEngine):
    ENGINES.register(_cls.name, _cls)


def create_engine(engine: str | Engine | None = None, **settings: Any) -> Engine:
    """An engine object from a name (default ``$GRAFT_ENGINE`` or ``"auto"``) and settings;
    an ``Engine`` passes through. A name that needs a missing package falls back with a warning."""
    if isinstance(engine, Engine):
        return engine
    name = (engine or os.environ.get("GRAFT_ENGINE") or "auto").lower()
    if name not in ENGINES:
        raise ValueError(f"unknown engine {name!r}; choose one of {tuple(ENGINES)}")
    if name == "onnx" and not onnx_available():
        log.warning("engine 'onnx' needs onnxruntime and onnx (pip install 'graftwork[fast]'); "
                    "using torch")
        name = "torch"
    if name == "onnx":  # asked by name: ONNX Runtime whatever the job size, torch if it fails
        return AutoEngine(min_images=0, onnx=OnnxEngine(**settings))
    return ENGINES[name](**settings)
