"""Feature extraction with an on-disk cache.

Features are stored in safetensors shards under ``cache_root/<model key>/``, where the model key
hashes (backbone, weights digest, preprocessing, image size) and each row is keyed by the sha256
of the image file's bytes. Re-running with another head or more epochs never re-extracts.
Shards are written atomically (temp file + rename) and carry a checksum checked on load; a bad
shard is deleted and its images extracted again.

Speed (see ``bench/results.md``): DataLoader workers decode (JPEG ``draft``) and resize + crop
with torchvision's native uint8 resampler, shipping uint8 HWC; the main process runs the frozen
backbone, normalisation included. With ``onnxruntime`` and ``onnx`` installed (extra
``graftwork[fast]``) the backbone is exported once per backbone state to ONNX, next to its shards
(atomic write, checked against torch on a probe batch before use), and ONNX Runtime runs it,
about 3x faster than eager torch on a CPU; otherwise (or ``GRAFT_ENGINE=torch``) eager torch in
channels_last does.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from graftwork._digests import file_digest, file_digests
from graftwork._prepared import PreparedBackbone
from graftwork.backbones import Backbone
from graftwork.data import ImageDataset, Sample, Skipped, collate_skip
from graftwork.errors import BadImageError
from graftwork.run import atomic_file

__all__ = ["FeatureCache", "ExtractResult", "extract_features", "file_digest",
           "default_cache_dir", "default_workers"]

log = logging.getLogger(__name__)
_SHARD_ROWS = 2048
ENGINES = ("auto", "onnx", "torch")
# Images per forward call: on a CPU small batches are fastest (activations stay in cache).
# lite0, 2 cores: ONNX Runtime 1 image ~135-145/s vs 16 images ~110-120/s; torch channels_last
# 4 images ~77/s vs 64 images ~30/s (bench/results.md).
_ORT_CHUNK = 1
_TORCH_CHUNK = 4
_ONNX_MIN_IMAGES = 128  # "auto" exports to ONNX (seconds, once) only for jobs this big
_ORT_SPIN = True  # let ORT's idle intra-op threads spin-wait between operators
# ONNX Runtime lanes: independent single-threaded runs on separate chunks, one per core, beat
# one run split over the cores (no barrier after every operator; robust to a busy machine).
_ORT_LANES: int | None = None  # None: one per torch thread (= core); 1: intra-op threads instead


def default_cache_dir() -> Path:
    """``$GRAFT_CACHE_DIR`` or ``~/.cache/graftwork``."""
    env = os.environ.get("GRAFT_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "graftwork"


def default_workers() -> int:
    """DataLoader workers: decode in parallel but leave the cores to the forward pass."""
    return max(1, min(4, (os.cpu_count() or 1) - 1))


_VERIFIED: dict[tuple[str, int, int], bytes] = {}  # verified shard -> its row digests


def _checksum(features: torch.Tensor, digests: torch.Tensor) -> str:
    h = hashlib.sha256(features.contiguous().numpy().tobytes())
    h.update(digests.contiguous().numpy().tobytes())
    return h.hexdigest()


class FeatureCache:
    """The shards of one (backbone, weights, preprocessing) combination."""

    def __init__(self, root: str | Path, backbone: Backbone | PreparedBackbone,
                 preprocessing: dict[str, Any]) -> None:
        key = json.dumps({"backbone": backbone.spec.name, "arch": backbone.spec.arch,
                          "weights": backbone.weights.digest, "pre": preprocessing},
                         sort_keys=True)
        self.key = hashlib.sha256(key.encode()).hexdigest()[:20]
        self.dir = Path(root) / "features" / self.key
        self.dim = backbone.feature_dim
        self._index: dict[bytes, tuple[Path, int]] | None = None
        self._loaded: dict[Path, torch.Tensor] = {}

    def _read_shard(self, path: Path) -> tuple[torch.Tensor, torch.Tensor] | None:
        try:
            tensors = load_file(str(path))
            from safetensors import safe_open

            with safe_open(str(path), "pt") as fh:
                meta = fh.metadata() or {}
            feats, digests = tensors["features"], tensors["digests"]
            if meta.get("checksum") != _checksum(feats, digests) or feats.shape[1] != self.dim:
                raise ValueError("checksum mismatch")
            return feats, digests
        except (SafetensorError, ValueError, KeyError, OSError, RuntimeError) as exc:
            log.warning("feature cache shard %s is corrupt (%s): deleting it, will re-extract",
                        path.name, exc)
            path.unlink(missing_ok=True)
            return None

    def index(self) -> dict[bytes, tuple[Path, int]]:
        """digest -> (shard, row) for every verified shard."""
        if self._index is None:
            self._index = {}
            for path in sorted(self.dir.glob("shard-*.safetensors")):
                raw = self._verified_digests(path)
                for row in range(len(raw) // 32):
                    self._index[raw[row * 32:(row + 1) * 32]] = (path, row)
        return self._index

    def _verified_digests(self, path: Path) -> bytes:
        """The row digests of a shard whose checksum holds (b"" if it is corrupt).

        A shard verified earlier in this process (same size and mtime) is not read again.
        """
        try:
            st = path.stat()
        except OSError:
            return b""
        key = (str(path), st.st_size, st.st_mtime_ns)
        raw = _VERIFIED.get(key)
        if raw is None:
            shard = self._read_shard(path)
            if shard is None:
                return b""
            raw = _VERIFIED[key] = shard[1].contiguous().numpy().tobytes()
        return raw

    def _shard(self, path: Path) -> torch.Tensor:
        if path not in self._loaded:
            self._loaded[path] = load_file(str(path))["features"]
        return self._loaded[path]

    def get(self, digest: bytes) -> torch.Tensor | None:
        hit = self.index().get(digest)
        return None if hit is None else self._shard(hit[0])[hit[1]]

    def gather(self, digests: Sequence[bytes | None]) -> tuple[torch.Tensor, torch.Tensor]:
        """(features, found): one row per digest, zeros where it is not cached."""
        index = self.index()
        by_shard: dict[Path, tuple[list[int], list[int]]] = {}
        for i, d in enumerate(digests):
            hit = index.get(d) if d is not None else None
            if hit is not None:
                pos, rows = by_shard.setdefault(hit[0], ([], []))
                pos.append(i)
                rows.append(hit[1])
        out = torch.zeros(len(digests), self.dim)
        found = torch.zeros(len(digests), dtype=torch.bool)
        for path, (pos, rows) in by_shard.items():
            out[pos] = self._shard(path)[rows]
            found[pos] = True
        return out, found

    def write_shard(self, features: torch.Tensor, digests: list[bytes]) -> Path:
        """Write one shard atomically and add it to the index."""
        self.dir.mkdir(parents=True, exist_ok=True)
        feats = features.detach().to(torch.float32).contiguous()
        dig = torch.tensor([list(d) for d in digests], dtype=torch.uint8)
        path = self.dir / f"shard-{time.time_ns()}-{os.getpid()}.safetensors"
        with atomic_file(path) as tmp:
            save_file({"features": feats, "digests": dig}, tmp,
                      metadata={"checksum": _checksum(feats, dig)})
        index = self.index()
        for row, d in enumerate(digests):
            index[d] = (path, row)
        return path


@dataclass
class ExtractResult:
    """Features of every sample (zeros where ``ok`` is False) and what happened."""

    features: torch.Tensor | None
    ok: torch.Tensor
    skipped: list[Skipped] = field(default_factory=list)
    extracted: int = 0
    cached: int = 0
    seconds: float = 0.0
    engine: str = ""  # "onnx" or "torch": what ran the backbone ("" when nothing was extracted)


def extract_features(backbone: Backbone | PreparedBackbone, samples: Sequence[Sample],
                     preprocessing: dict[str, Any],
                     cache_root: str | Path | None = None, *, batch_size: int = 64,
                     num_workers: int | None = None, progress: bool = True, strict: bool = False,
                     materialize: bool = True, desc: str = "extract",
                     engine: str | None = None) -> ExtractResult:
    """Features of ``samples``, from the cache where possible, extracting (and caching) the rest.

    ``materialize=False`` only fills the cache (memory stays flat for any number of images).
    ``engine`` runs the backbone: ``"auto"`` (default, or ``$GRAFT_ENGINE``) uses ONNX Runtime
    when installed (and the job is big enough to repay a first export, or one exists), eager
    torch otherwise; ``"onnx"`` or ``"torch"`` pick one. Features agree within ~1e-5.
    """
    start = time.perf_counter()
    root = Path(cache_root or default_cache_dir())
    cache = FeatureCache(root, backbone, preprocessing)
    digests = file_digests([s.path for s in samples], root)
    skipped = [Skipped(s.path, "cannot read file") for s, d in zip(samples, digests) if d is None]
    if skipped and strict:
        raise BadImageError(f"{skipped[0].path}: {skipped[0].reason}", "fix or remove the file")
    index = cache.index()
    first: dict[bytes, int] = {}  # one extraction per distinct file content
    for i, d in enumerate(digests):
        if d is not None and d not in index:
            first.setdefault(d, i)
    todo = list(first.values())
    if todo and isinstance(backbone, PreparedBackbone):
        backbone = backbone.module()  # only now is the network needed
    bad, used = _run_extraction(backbone, cache, [samples[i] for i in todo],
                                [digests[i] for i in todo], preprocessing, batch_size,
                                num_workers, progress, desc, engine)
    if bad and strict:
        raise BadImageError(f"{bad[0].path}: {bad[0].reason}",
                            "fix or remove the file, or run without --strict")
    skipped += bad
    if materialize:
        features, ok = cache.gather(digests)
    else:
        index = cache.index()
        features = None
        ok = torch.tensor([d is not None and d in index for d in digests], dtype=torch.bool)
    result = ExtractResult(features, ok, skipped, len(todo) - len(bad), len(samples) - len(todo),
                           time.perf_counter() - start, used)
    log.info("%s: %d images, %d from cache, %d extracted, %d skipped in %.1fs", desc,
             len(samples), result.cached, result.extracted, len(skipped), result.seconds)
    return result


def _run_extraction(backbone: Backbone, cache: FeatureCache, samples: list[Sample],
                    digests: list[bytes | None], preprocessing: dict[str, Any], batch_size: int,
                    num_workers: int | None, progress: bool, desc: str,
                    engine: str | None = None) -> tuple[list[Skipped], str]:
    """Extract features of ``samples`` in batches, writing shards as they fill up.

    Decode workers (one per core) and the backbone take turns, see :class:`_Gated`.
    """
    if not samples:
        return [], ""
    workers = _extract_workers() if num_workers is None else num_workers
    dataset: Any = ImageDataset(samples, FastEvalTransform(preprocessing),
                                draft_size=_resize_size(preprocessing))
    gate = None
    if workers:
        import multiprocessing

        context = multiprocessing.get_context()
        gate = context.Event()
        gate.set()
        dataset = _Gated(dataset, gate)
    loader = torch.utils.data.DataLoader(
        dataset, batch_sampler=_IndexBatches(len(samples), batch_size), num_workers=workers,
        collate_fn=collate_skip, prefetch_factor=4 if workers else None,
        multiprocessing_context=context if workers else None)
    was_training = backbone.training
    backbone.eval()
    batches = None
    try:
        batches = iter(loader)  # workers start decoding while the engine gets ready
        run, used = make_runner(backbone, preprocessing, cache, engine, len(samples))
        bad: list[Skipped] = []
        buf_feats: list[torch.Tensor] = []
        buf_digests: list[bytes] = []
        with torch.inference_mode(), tqdm(total=len(samples), desc=desc, unit="img",
                                          disable=not progress, leave=False) as bar:
            for batch in batches:
                bad += [Skipped(samples[i].path, reason) for i, reason in batch["failures"]]
                if len(batch["indices"]):
                    if gate is not None:
                        gate.clear()  # workers finish the image in hand, then wait
                    buf_feats.append(run(batch["images"]))
                    if gate is not None:
                        gate.set()
                    rows = batch["indices"].tolist()
                    buf_digests += [digests[i] for i in rows]  # type: ignore[misc]
                if len(buf_digests) >= _SHARD_ROWS:
                    cache.write_shard(torch.cat(buf_feats), buf_digests)
                    buf_feats, buf_digests = [], []
                bar.update(len(batch["indices"]) + len(batch["failures"]))
        if buf_digests:
            cache.write_shard(torch.cat(buf_feats), buf_digests)
    finally:
        if gate is not None:
            gate.set()  # never leave workers waiting: they must see the shutdown
        del batches
        backbone.train(was_training)
    return bad, used


def _extract_workers() -> int:
    """Decode processes for extraction: one per core (up to 4), as they never overlap compute."""
    return max(1, min(4, os.cpu_count() or 1))


class _IndexBatches:
    """Index batches of ``batch_size`` (made lazily: memory stays flat), the first one smaller
    so that computing starts sooner."""

    def __init__(self, n: int, batch_size: int, first: int = 32) -> None:
        first = min(first, batch_size)
        self.n = n
        self.bounds = [0, *range(first, n, batch_size)] if n else []

    def __iter__(self) -> Any:
        ends = self.bounds[1:] + [self.n] if self.bounds else []
        return (list(range(a, b)) for a, b in zip(self.bounds, ends))

    def __len__(self) -> int:
        return len(self.bounds)


class _Gated(torch.utils.data.Dataset):
    """A dataset whose items wait for ``gate``, which the main process clears while computing.

    Workers then decode only while the backbone is not running, each on a core of its own: on
    a small CPU, decoding beside the forward pass time-slices it (and an intra-op parallel
    forward waits for its slowest thread at every operator), which costs more than the decoding;
    processes rather than threads, so no GIL to share. See bench/results.md for the numbers.
    """

    def __init__(self, dataset: Any, gate: Any) -> None:
        self.dataset = dataset
        self.gate = gate

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        self.gate.wait()
        return self.dataset[index]


# ---------------------------------------------------------------------------------- decoding
def _resize_size(pre: dict[str, Any]) -> int:
    """The short side ``eval_transform`` resizes to before its centre crop."""
    return int(round(int(pre["image_size"]) / pre.get("crop_pct", 1.0)))


class FastEvalTransform:
    """``eval_transform``'s resize + centre crop on the image as a uint8 tensor; uint8 HWC out.

    torchvision runs the same ``Resize``/``CenterCrop`` on a uint8 tensor with its native
    (AVX2) antialiased resampler, about 4x faster than on a PIL image; pixels agree with the PIL
    path within a few grey levels on rare pixels (mean difference ~0.005 levels). Scaling and
    normalisation are left to :class:`Normalize`, which runs on whole batches (or inside the
    ONNX graph), so workers ship 4x fewer bytes.
    """

    def __init__(self, pre: dict[str, Any]) -> None:
        from torchvision.transforms import InterpolationMode

        self.size = int(pre["image_size"])
        self.resize = _resize_size(pre)
        self.interpolation = InterpolationMode(pre.get("interpolation", "bilinear"))

    def __call__(self, img: Any) -> torch.Tensor:
        from torchvision.transforms.v2 import functional as TF

        if img.mode != "RGB":
            img = img.convert("RGB")
        x = torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1)  # CHW view of HWC
        x = TF.resize(x, [self.resize], interpolation=self.interpolation, antialias=True)
        x = TF.center_crop(x, [self.size, self.size])
        return x.permute(1, 2, 0).contiguous()


class Normalize(torch.nn.Module):
    """uint8 NHWC batch -> float NCHW (channels_last), scaled to 0..1 and normalised.

    The same operations, in the same order, as ``eval_transform``'s ``ToDtype`` + ``Normalize``.
    """

    def __init__(self, pre: dict[str, Any]) -> None:
        super().__init__()
        for name in ("mean", "std"):
            value = torch.tensor(pre[name], dtype=torch.float32)
            self.register_buffer(name, value.view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 3, 1, 2).to(torch.float32).mul(1.0 / 255)
        return x.sub(self.mean).div(self.std)


class _FromPixels(torch.nn.Module):
    """The frozen backbone on uint8 NHWC pixels (what gets exported to ONNX)."""

    def __init__(self, backbone: Backbone, pre: dict[str, Any]) -> None:
        super().__init__()
        self.normalize = Normalize(pre)
        self.backbone = backbone

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(self.normalize(x))


# ---------------------------------------------------------------------------------- engines
Runner = Any  # Callable[[uint8 NHWC tensor], float32 (N, D) tensor]
_SESSIONS: dict[str, Any] = {}  # "onnx path|threads" -> verified InferenceSession (per process)


def _torch_runner(backbone: Backbone, pre: dict[str, Any]) -> Runner:
    backbone.to(memory_format=torch.channels_last)
    model = _FromPixels(backbone, pre).eval()
    size_ = _TORCH_CHUNK

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return torch.cat([model(x[i:i + size_]).float() for i in range(0, len(x), size_)])
    return run


def _onnx_available() -> bool:
    try:
        import onnx  # noqa: F401  (the exporter needs it)
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def ort_session(path: str | Path, threads: int | None = None) -> Any:
    """An ONNX Runtime CPU session with pinned thread counts."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or torch.get_num_threads()
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if _ORT_SPIN else "0")
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def export_onnx(module: torch.nn.Module, example: torch.Tensor, path: str | Path) -> None:
    """Export ``module`` (batch axis dynamic) to ``path`` atomically (temp file + rename)."""
    import warnings

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as tmp, torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (example,), tmp, input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "n"}, "y": {0: "n"}}, opset_version=17,
                          dynamo=False)


def _onnx_path(backbone: Backbone, cache: FeatureCache) -> Path:
    """Where the ONNX export of this exact backbone state lives (next to its features)."""
    from graftwork._weights import state_digest

    return cache.dir / f"backbone-{state_digest(backbone.state_dict())}.onnx"


def _onnx_runner(backbone: Backbone, pre: dict[str, Any], cache: FeatureCache,
                 path: Path) -> Runner:
    """Export (once per backbone state) and verify the ONNX model; raises on any failure."""
    size = int(pre["image_size"])
    threads = torch.get_num_threads()
    lanes = max(1, min(threads, _ORT_LANES or threads))
    key = f"{path}|{threads // lanes}"
    session = _SESSIONS.get(key)
    if session is None:
        model = _FromPixels(backbone, pre).eval()
        probe = torch.randint(0, 256, (2, size, size, 3), dtype=torch.uint8,
                              generator=torch.Generator().manual_seed(0))
        with torch.inference_mode():
            want = model(probe).float()
        for attempt in range(2):
            fresh = not path.exists()
            if fresh:
                t0 = time.perf_counter()
                export_onnx(model, probe[:1], path)
                log.info("exported %s to ONNX in %.1fs", backbone.spec.name,
                         time.perf_counter() - t0)
            try:
                session = ort_session(path, threads // lanes)
                got = torch.from_numpy(session.run(None, {"x": probe.numpy()})[0])
                if got.shape != want.shape or not torch.allclose(got, want, rtol=1e-3, atol=1e-3):
                    raise ValueError("ONNX model disagrees with torch on a probe batch")
                break
            except Exception as exc:
                path.unlink(missing_ok=True)
                if fresh or attempt:
                    raise
                log.warning("ONNX model %s unusable (%s): exporting it again", path.name, exc)
        _SESSIONS[key] = session

    size_ = _ORT_CHUNK

    def lane(part: np.ndarray) -> list[np.ndarray]:
        # session.run releases the GIL while it computes
        return [session.run(None, {"x": part[i:i + size_]})[0]
                for i in range(0, len(part), size_)]

    def run(x: torch.Tensor) -> torch.Tensor:
        arr = x.numpy()
        if lanes > 1 and len(arr) > size_:  # a contiguous share of the batch per lane
            bounds = np.linspace(0, len(arr), lanes + 1).round().astype(int)
            parts = [arr[a:b] for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
            outs = [o for res in _lane_pool(lanes).map(lane, parts) for o in res]
        else:
            outs = lane(arr)
        return torch.from_numpy(np.concatenate(outs) if len(outs) > 1 else outs[0])
    return run


_LANE_POOLS: dict[int, ThreadPoolExecutor] = {}


def _lane_pool(lanes: int) -> ThreadPoolExecutor:
    if lanes not in _LANE_POOLS:
        _LANE_POOLS[lanes] = ThreadPoolExecutor(lanes, thread_name_prefix="graft-ort")
    return _LANE_POOLS[lanes]


def make_runner(backbone: Backbone, pre: dict[str, Any], cache: FeatureCache,
                engine: str | None = None, images: int | None = None) -> tuple[Runner, str]:
    """(function uint8 NHWC batch -> features, engine name) for the frozen ``backbone``.

    ``"auto"`` takes ONNX Runtime when installed, unless the job is too small (``images``) to
    repay a first export (a few seconds) that has not happened yet.
    """
    engine = (engine or os.environ.get("GRAFT_ENGINE") or "auto").lower()
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; choose one of {ENGINES}")
    if engine != "torch":
        if _onnx_available():
            try:
                path = _onnx_path(backbone, cache)
                if (engine == "onnx" or images is None or images >= _ONNX_MIN_IMAGES
                        or any(k.startswith(f"{path}|") for k in _SESSIONS)
                        or path.exists()):
                    return _onnx_runner(backbone, pre, cache, path), "onnx"
            except Exception as exc:  # exporter or runtime trouble: torch still works
                log.warning("ONNX Runtime path unavailable for %s (%s: %s); using torch",
                            backbone.spec.name, type(exc).__name__, exc)
        elif engine == "onnx":
            log.warning("engine 'onnx' needs onnxruntime and onnx (pip install "
                        "'graftwork[fast]'); using torch")
    return _torch_runner(backbone, pre), "torch"
