"""Feature extraction: images -> backbone features, through the cache.

DataLoader workers decode (JPEG ``draft``) and resize + crop on uint8 tensors; the main process
runs the frozen backbone on an engine (:mod:`.engines`), normalisation included. Only images
whose content is not cached yet are decoded. See ``bench/results.md`` for the numbers.
"""
from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from tqdm.auto import tqdm

from graftwork.data.digests import file_digests
from graftwork.data.images import ImageDataset, collate_skip
from graftwork.data.preprocess import Preprocessing
from graftwork.data.discover import Sample, Skipped
from graftwork.errors import BadImageError
from graftwork.features.cache import SHARD_ROWS, FeatureCache
from graftwork.features.cache import cache_root as resolve_root
from graftwork.features.decode import FastEvalTransform, FromPixels
from graftwork.features.engines import Engine, Runner, create_engine

__all__ = ["ExtractResult", "CacheFiller", "extract_features", "default_workers",
           "bind_backbone", "bind_pixels", "gated_stream", "IndexBatches", "Gate", "Gated",
           "parent_alive", "watch_parent", "GATE_POLL_S"]

log = logging.getLogger(__name__)
#: How often a decode worker waiting at the gate checks that its main process is alive (s).
GATE_POLL_S = 0.5


def default_workers() -> int:
    """DataLoader workers for training batches: decode in parallel, leave a core to compute."""
    return max(1, min(4, (os.cpu_count() or 1) - 1))


def extract_workers() -> int:
    """Decode processes for extraction: one per core (up to 4); they never overlap compute."""
    return max(1, min(4, os.cpu_count() or 1))


@dataclass
class ExtractResult:
    """Features of every sample (zeros where ``ok`` is False) and what happened."""

    features: torch.Tensor | None
    ok: torch.Tensor
    skipped: list[Skipped] = field(default_factory=list)
    extracted: int = 0
    cached: int = 0
    seconds: float = 0.0
    engine: str = ""  # what ran the backbone ("" when nothing was extracted)


@runtime_checkable
class CacheFiller(Protocol):
    """An engine that runs the network elsewhere (Ray actors: :mod:`.ray_engine`) and writes
    the features into the cache itself, instead of binding a :class:`Runner` here.
    :func:`extract_features` uses ``fill_cache`` of any engine that has one."""

    def fill_cache(self, backbone: Any, cache: FeatureCache, samples: Sequence[Sample],
                   digests: Sequence[bytes], preprocessing: Preprocessing, *,
                   batch_size: int = 64, workers: int | None = None
                   ) -> tuple[list[tuple[int, str]], str]:
        """Cache the features of ``samples`` (distinct, uncached ``digests``); returns the
        failures as (position, reason) and the engine's name."""


def _strict_fail(skipped: Sequence[Skipped]) -> None:
    raise BadImageError(f"{skipped[0].path}: {skipped[0].reason}",
                        "fix or remove the file, or run without --strict")


def extract_features(backbone: Any, samples: Sequence[Sample], preprocessing: Preprocessing,
                     cache_root: str | Path | None = None, *, batch_size: int = 64,
                     num_workers: int | None = None, progress: bool = True, strict: bool = False,
                     materialize: bool = True, desc: str = "extract",
                     engine: str | Engine | None = None) -> ExtractResult:
    """Features of ``samples``, from the cache where possible, extracting (and caching) the rest.

    ``backbone`` is a ``Backbone`` or a prepared record (built only if something must be
    extracted). ``materialize=False`` only fills the cache (memory stays flat). ``engine`` is an
    :class:`Engine` or a name (default ``$GRAFT_ENGINE`` or ``"auto"``); engines agree ~1e-5;
    one that is a :class:`CacheFiller` (``"ray"``) fills the cache itself.
    Every sample whose file cannot be used is in ``skipped`` (also several files with the same
    bad content).
    """
    start = time.perf_counter()
    root = resolve_root(cache_root)
    cache = FeatureCache(root, backbone, preprocessing)
    digests = file_digests([s.path for s in samples], root)
    skipped = [Skipped(s.path, "cannot read file") for s, d in zip(samples, digests) if d is None]
    if skipped and strict:
        _strict_fail(skipped)
    index = cache.index()
    n_cached = sum(1 for d in digests if d is not None and d in index)
    first: dict[bytes, int] = {}  # one extraction per distinct file content
    for i, d in enumerate(digests):
        if d is not None and d not in index:
            first.setdefault(d, i)
    todo = list(first.values())
    if todo:
        engine = create_engine(engine)
        if hasattr(backbone, "module"):
            backbone = backbone.module()  # a prepared record: only now is the network needed
    if isinstance(engine, CacheFiller):
        bad, used = engine.fill_cache(backbone, cache, [samples[i] for i in todo], list(first),
                                      preprocessing, batch_size=batch_size, workers=num_workers)
    else:
        bad, used = _run_extraction(backbone, cache, [samples[i] for i in todo],
                                    [digests[i] for i in todo], preprocessing, batch_size,
                                    num_workers, progress, desc, engine)
    if bad and strict:
        _strict_fail([Skipped(samples[todo[i]].path, r) for i, r in bad])
    if bad:  # files with the same bad bytes as one that failed are skipped too, each listed
        reasons = {digests[todo[i]]: r for i, r in bad}
        skipped += [Skipped(s.path, reasons[d]) for s, d in zip(samples, digests)
                    if d in reasons]
    n_bad = len(bad)
    if materialize:
        features, ok = cache.gather(digests)
    else:
        index = cache.index()
        features = None
        ok = torch.tensor([d is not None and d in index for d in digests], dtype=torch.bool)
    result = ExtractResult(features, ok, skipped, len(todo) - n_bad, n_cached,
                           time.perf_counter() - start, used)
    log.info("%s: %d images, %d from cache, %d extracted, %d skipped in %.1fs", desc,
             len(samples), result.cached, result.extracted, len(skipped), result.seconds)
    return result


def bind_pixels(module: torch.nn.Module, preprocessing: Preprocessing, store: Path,
                name: str, engine: str | Engine | None, images: int | None) -> Runner:
    """``module`` (in its current weights) on uint8 pixels, bound to an engine; an exported
    graph is kept in ``store`` as ``<name>-<weights digest>-<size>``."""
    from graftwork.backbones.weights import state_digest

    size = preprocessing.image_size
    probe = torch.randint(0, 256, (2, size, size, 3), dtype=torch.uint8,
                          generator=torch.Generator().manual_seed(0))
    key = f"{name}-{state_digest(module.state_dict())}-{size}"
    return create_engine(engine).bind(FromPixels(module, preprocessing), probe, store, key,
                                      images)


def bind_backbone(backbone: Any, preprocessing: Preprocessing, cache: FeatureCache,
                  engine: str | Engine | None, images: int | None) -> Runner:
    """The frozen ``backbone`` on uint8 pixels, bound to an engine (exports kept in the cache)."""
    return bind_pixels(backbone, preprocessing, cache.dir, "backbone", engine, images)


def _run_extraction(backbone: Any, cache: FeatureCache, samples: list[Sample],
                    digests: list[bytes | None], preprocessing: Preprocessing, batch_size: int,
                    num_workers: int | None, progress: bool, desc: str,
                    engine: str | Engine | None, dataset: Any = None
                    ) -> tuple[list[tuple[int, str]], str]:
    """Extract features of ``samples`` in batches, writing shards as they fill up; returns the
    failures as (position, reason) and the engine's name. Decode workers (one per core) and the
    backbone take turns, see :class:`Gated`. ``dataset`` replaces the default one (decoded,
    resized and cropped ``samples``), e.g. augmented views (:mod:`.views`)."""
    if not samples:
        return [], ""
    if dataset is None:
        dataset = ImageDataset(samples, FastEvalTransform(preprocessing),
                               draft_size=preprocessing.resize_size)
    was_training = backbone.training
    backbone.eval()
    bound: list[Runner] = []

    def bind() -> Runner:
        bound.append(bind_backbone(backbone, preprocessing, cache, engine, len(samples)))
        return bound[0]

    bad: list[tuple[int, str]] = []
    buf_feats: list[torch.Tensor] = []
    buf_digests: list[bytes] = []
    try:
        for batch, feats in gated_stream(dataset, batch_size, num_workers, progress, desc, bind):
            bad += batch["failures"]
            if feats is not None:
                buf_feats.append(feats)
                buf_digests += [digests[i] for i in batch["indices"].tolist()]  # type: ignore[misc]
            if len(buf_digests) >= SHARD_ROWS:
                cache.write_shard(torch.cat(buf_feats), buf_digests)
                buf_feats, buf_digests = [], []
        if buf_digests:
            cache.write_shard(torch.cat(buf_feats), buf_digests)
    finally:
        backbone.train(was_training)
    return [(i, r) for i, r in bad], bound[0].name if bound else ""


def gated_stream(dataset: Any, batch_size: int, num_workers: int | None, progress: bool,
                 desc: str, bind: Callable[[], Callable[[torch.Tensor], torch.Tensor]]
                 ) -> Iterator[tuple[dict[str, Any], torch.Tensor | None]]:
    """(collated batch, outputs) for every batch of ``dataset`` (uint8 images): decoding in
    worker processes (one per core), computing in this one, taking turns (:class:`Gated`).
    ``bind()`` makes the compute function once the workers have started decoding; outputs are
    None for batches without a usable image."""
    workers = extract_workers() if num_workers is None else num_workers
    gate = context = None
    if workers:
        import multiprocessing

        context = multiprocessing.get_context()
        gate = context.Event()
        gate.set()
        dataset = Gated(dataset, gate)
    loader = torch.utils.data.DataLoader(
        dataset, batch_sampler=IndexBatches(len(dataset), batch_size), num_workers=workers,
        collate_fn=collate_skip, prefetch_factor=4 if workers else None,
        multiprocessing_context=context, worker_init_fn=watch_parent if workers else None)
    batches = None
    try:
        batches = iter(loader)  # workers start decoding while the engine gets ready
        run = bind()
        with torch.inference_mode(), tqdm(total=len(dataset), desc=desc, unit="img",
                                          disable=not progress, leave=False) as bar:
            for batch in batches:
                out = None
                if len(batch["indices"]):
                    if gate is not None:
                        gate.clear()  # workers finish the image in hand, then wait
                    out = run(batch["images"])
                    if gate is not None:
                        gate.set()
                yield batch, out
                bar.update(len(batch["indices"]) + len(batch["failures"]))
    finally:
        if gate is not None:
            gate.set()  # never leave workers waiting: they must see the shutdown
        del batches


class IndexBatches:
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


class Gate:
    """Decode workers wait on ``event`` while this process computes (``with gate.closed():``)."""

    def __init__(self) -> None:
        import multiprocessing

        self.context = multiprocessing.get_context()
        self.event = self.context.Event()
        self.event.set()
        self._depth = 0  # closed() nests: the training step wraps the engine's forward

    @contextlib.contextmanager
    def closed(self) -> Iterator[None]:
        self._depth += 1
        self.event.clear()  # workers finish the image in hand, then wait
        try:
            yield
        finally:
            self._depth -= 1
            if not self._depth:
                self.event.set()


class Gated(torch.utils.data.Dataset):
    """A dataset whose items wait for ``gate``, which the main process clears while computing.

    Workers then decode only while nothing computes (no backbone forward, no training step:
    ``training`` wraps each step in the model's ``computing()``), each on a core of its own: on a
    small CPU, decoding beside the forward pass time-slices it, which costs more than the
    decoding; processes rather than threads, so no GIL to share (bench/results.md).
    """

    def __init__(self, dataset: Any, gate: Any) -> None:
        self.dataset = dataset
        self.gate = gate
        self.parent = os.getpid()  # made in the main process; items are got in its workers

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        # never wait forever: a main process killed (SIGKILL, the OOM killer) while the gate
        # was closed would leave this worker blocked, holding its memory, for good
        while not self.gate.wait(GATE_POLL_S):
            if not parent_alive(self.parent):
                log.warning("decode worker %d: its main process %d has gone; exiting",
                            os.getpid(), self.parent)
                os._exit(1)  # no cleanup to run: nothing here owns files or locks
        return self.dataset[index]


def watch_parent(worker_id: int) -> None:
    """A DataLoader ``worker_init_fn``: a daemon thread in the worker that ends it (within
    :data:`GATE_POLL_S`) once its main process has gone, wherever the worker is blocked.
    torch's own check runs only between tasks, every 5 s."""
    import threading

    parent = os.getppid()

    def watch() -> None:
        while parent_alive(parent):
            time.sleep(GATE_POLL_S)
        os._exit(1)

    threading.Thread(target=watch, name=f"graftwork-parent-watch-{worker_id}",
                     daemon=True).start()


def parent_alive(parent: int) -> bool:
    """Whether ``parent`` (the main process that started this worker) is still running: an
    orphan is re-parented (``os.getppid()`` changes), and multiprocessing's parent sentinel
    closes when the parent ends."""
    if os.getpid() == parent:  # not a worker: the caller itself
        return True
    if os.getppid() != parent:
        return False
    import multiprocessing

    process = multiprocessing.parent_process()
    return process is None or process.is_alive()
