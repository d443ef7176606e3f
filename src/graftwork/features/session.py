"""The model being fitted or used and how to run it: backbone (or its prepared record) + head,
the feature cache, data loaders, evaluation logits, skipped-file bookkeeping; and
:class:`RunOptions`, the one frozen object that says how to run (cache, workers, engine,
device, test-time augmentation). The phases train a session; the estimator holds one.

While every feature comes from the cache, the backbone network is never built: the session
holds a prepared record (weights + facts) and builds the network on first use of ``model``.
"""
from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from graftwork.backbones.network import Backbone
from graftwork.data.discover import Sample, Skipped
from graftwork.data.images import ImageDataset, collate_skip
from graftwork.data.preprocess import Preprocessing
from graftwork.errors import BadImageError, DataError
from graftwork.features.cache import FeatureCache, cache_root
from graftwork.features.decode import FastEvalTransform
from graftwork.features.engines import AutoEngine, OnnxEngine, TorchEngine, create_engine
from graftwork.features.prepared import PreparedBackbone
from graftwork.features.pipeline import (ExtractResult, Gated, bind_pixels, default_workers,
                                         extract_features, extract_workers, gated_stream,
                                         watch_parent)
from graftwork.features.views import HFLIP, extract_views
from graftwork.model.calibration import tta_logits
from graftwork.model.graft import GraftModel, parameter_counts
from graftwork.training.metrics import score_logits

__all__ = ["Session", "RunOptions", "PREDICT_EXPORT_MIN"]

#: Images from which "auto" exports a whole model to ONNX for prediction (an export takes
#: seconds; ONNX Runtime then runs ~2x eager torch on a CPU); an export already made is reused.
PREDICT_EXPORT_MIN = 1000


@dataclass(frozen=True)
class RunOptions:
    """How to run a model, not what it learned: the cache, workers, engine, device, batches.

    ``ImageClassifier`` derives it from its parameters; the runtime fields (:data:`FOLLOWS`)
    follow ``set_params`` after fitting or loading (``Session.configure``).
    """

    cache_dir: str | None = None
    batch_size: int = 32
    num_workers: int | None = None
    strict: bool = False
    progress: bool = False
    engine: Any = "auto"  # a name or an Engine object
    device: str = "cpu"  # where eager torch runs the network (engines, BN tools)
    tta: bool = False  # average the probabilities of each image and its mirror image

    #: The fields a fitted classifier's ``set_params`` changes.
    FOLLOWS: ClassVar[tuple[str, ...]] = ("cache_dir", "num_workers", "engine", "device", "tta")

    @classmethod
    def from_params(cls, params: Mapping[str, Any], device: str = "cpu") -> RunOptions:
        """The options an ``ImageClassifier``'s parameters give (``device`` resolved)."""
        return cls(cache_dir=params.get("cache_dir"), batch_size=params.get("batch_size", 32),
                   num_workers=params.get("num_workers"), strict=bool(params.get("strict")),
                   progress=bool(params.get("progress")),
                   engine=params.get("engine") or "auto", device=device,
                   tta=bool(params.get("tta")))


class Session:
    """Backbone + head, and ``options`` (:class:`RunOptions`) saying how to run them."""

    def __init__(self, backbone: Backbone | PreparedBackbone, head: nn.Module,
                 preprocessing: Preprocessing, *, train_bn: bool = False,
                 options: RunOptions = RunOptions(), skipped: Mapping[str, str] | None = None,
                 head_spec: Mapping[str, Any] | None = None, dist: Any = None) -> None:
        self.head = head
        self.preprocessing = preprocessing
        self.train_bn = train_bn
        self.options = options
        self.temperature = 1.0  # logits are divided by it (temperature scaling)
        self.pristine = True  # backbone weights as pretrained: cached features are valid
        self.skipped: dict[str, str] = dict(skipped or {})  # path -> why it was not used
        self.unfrozen_blocks: list[str] = []
        self.head_spec: dict[str, Any] = dict(head_spec or {})  # kind, hidden, dropout in use
        self.extract_stats = {"extracted": 0, "cached": 0}
        self.dist = dist  # a training.distributed.Distributed: training batches shared out
        self._seen: set[str] = set()
        self._model: GraftModel | None = None
        self._prepared: PreparedBackbone | None = None
        if isinstance(backbone, PreparedBackbone):
            self._prepared = backbone
        else:
            self._model = GraftModel(backbone, head, train_bn)

    def configure(self, options: RunOptions) -> Session:
        """Run with ``options`` from now on (what was learned is unchanged); returns self."""
        self.options = options
        return self

    @property
    def root(self) -> Path:
        """The cache folder (features, prepared records, engine exports)."""
        return cache_root(self.options.cache_dir)

    # ------------------------------------------------------------------ the model
    @property
    def model(self) -> GraftModel:
        """Backbone + head; built from the prepared record on first access."""
        if self._model is None:
            assert self._prepared is not None
            self._model = GraftModel(self._prepared.module(), self.head, self.train_bn)
            self._model.train(self.head.training)
        return self._model

    @property
    def backbone(self) -> Backbone | PreparedBackbone:
        """The backbone network, or its prepared record while the network is not built."""
        return self._model.backbone if self._model is not None else self._prepared  # type: ignore[return-value]

    @property
    def network_built(self) -> bool:
        return self._model is not None

    def counts(self) -> dict[str, int]:
        if self._model is not None:
            return parameter_counts(self._model)
        head, bb = parameter_counts(self.head), self._prepared.counts  # type: ignore[union-attr]
        return {k: head[k] + bb[k] for k in head}

    def state_dict(self) -> dict[str, torch.Tensor]:
        if self._model is not None:
            return self._model.state_dict()
        return {**{f"backbone.{k}": v for k, v in self._prepared.state_dict().items()},  # type: ignore[union-attr]
                **{f"head.{k}": v for k, v in self.head.state_dict().items()}}

    def set_head(self, head: nn.Module) -> None:
        """Replace the head (in the network too, once built)."""
        self.head = head
        if self._model is not None:
            self._model.head = head

    def eval(self) -> None:
        (self._model if self._model is not None else self.head).eval()

    # ------------------------------------------------------------------ bookkeeping
    def note_skipped(self, skipped: Sequence[Skipped]) -> None:
        """Record files that could not be used; any is an error in strict mode."""
        if skipped and self.options.strict:
            raise BadImageError(f"{skipped[0].path}: {skipped[0].reason}",
                                "fix or remove the file, or run without --strict")
        for s in skipped:
            self.skipped.setdefault(s.path, s.reason)

    # ------------------------------------------------------------------ features
    def extract(self, samples: Sequence[Sample], desc: str) -> ExtractResult:
        """Backbone features of ``samples`` through the cache; counts and skipped recorded."""
        opts = self.options
        res = extract_features(self.backbone, samples, self.preprocessing, self.root,
                               batch_size=max(opts.batch_size, 32), num_workers=opts.num_workers,
                               progress=opts.progress, strict=opts.strict, desc=desc,
                               engine=self.engine_for())
        self.note_skipped(res.skipped)
        new = {s.path for s in samples} - self._seen  # each image counted once per fit
        self._seen |= new
        self.extract_stats["extracted"] += res.extracted
        self.extract_stats["cached"] += max(0, min(res.cached, len(new) - res.extracted))
        return res

    def extract_views(self, samples: Sequence[Sample], recipe: dict[str, Any], views: int,
                      desc: str) -> ExtractResult:
        """Features of ``views`` views of every sample (:mod:`graftwork.features.views`);
        files that cannot be used are noted as skipped."""
        opts = self.options
        res = extract_views(self.backbone, samples, self.preprocessing, self.root, recipe, views,
                            desc, batch_size=max(opts.batch_size, 32),
                            num_workers=opts.num_workers, progress=opts.progress,
                            engine=opts.engine)
        self.note_skipped(res.skipped)
        return res

    def features(self, samples: Sequence[Sample], desc: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(features, labels) of the usable samples."""
        res = self.extract(samples, desc)
        if samples and not bool(res.ok.any()):
            raise DataError(f"every image was skipped in {desc} ({len(samples)} files; e.g. "
                            f"{samples[0].path}: {self.skipped.get(samples[0].path, '?')})",
                            "fix or replace the images, or check --image-size")
        labels = torch.tensor([s.label for s in samples], dtype=torch.long)
        return res.features[res.ok], labels[res.ok]  # type: ignore[index]

    # ------------------------------------------------------------------ images
    def loader(self, samples: Sequence[Sample], transform: Any, batch_size: int,
               generator: torch.Generator | None = None, gate: Any = None
               ) -> torch.utils.data.DataLoader:
        """Batches of decoded images (``collate_skip`` dicts), shuffled when given a generator.

        With a ``gate`` (see ``features.pipeline.Gated``) there is a decode worker per core,
        each decoding only while the engine in this process is not computing."""
        workers = default_workers() if self.options.num_workers is None else self.options.num_workers
        dataset: Any = ImageDataset(samples, transform,
                                    draft_size=self.preprocessing.resize_size)
        workers = workers if len(samples) > batch_size else 0
        extra: dict[str, Any] = {"worker_init_fn": watch_parent} if workers else {}
        if gate is not None and workers:
            workers = extract_workers() if self.options.num_workers is None else workers
            dataset = Gated(dataset, gate.event)
            extra.update(prefetch_factor=4, multiprocessing_context=gate.context)
        if generator is not None and self.dist is not None:  # this process's training batches
            order = torch.randperm(len(samples), generator=generator).tolist()
            mine = self.dist.own([order[i:i + batch_size]
                                  for i in range(0, len(order), batch_size)])
            return torch.utils.data.DataLoader(dataset, batch_sampler=mine, num_workers=workers,
                                               collate_fn=collate_skip, **extra)
        return torch.utils.data.DataLoader(
            dataset, batch_size=batch_size, shuffle=generator is not None, generator=generator,
            num_workers=workers, collate_fn=collate_skip, **extra)

    def image_batches(self, samples: Sequence[Sample], transform: Any,
                      generator: torch.Generator | None = None, batch_size: int | None = None
                      ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(images, labels) batches in channels_last; bad files noted as skipped."""
        for x, y in self.raw_batches(samples, transform, generator, batch_size):
            yield x.contiguous(memory_format=torch.channels_last), y

    def raw_batches(self, samples: Sequence[Sample], transform: Any,
                    generator: torch.Generator | None = None, batch_size: int | None = None,
                    gate: Any = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(images, labels) batches as ``transform`` makes them (uint8 NHWC for the engines);
        bad files noted as skipped."""
        for batch in self.loader(samples, transform, batch_size or self.options.batch_size, generator,
                                 gate):
            self.note_skipped([Skipped(samples[i].path, r) for i, r in batch["failures"]])
            if len(batch["labels"]):  # a batch of bad files only: nothing to yield
                yield batch["images"], batch["labels"]

    def cache(self) -> FeatureCache:
        """The feature cache of this backbone and preprocessing (also keeps engine exports)."""
        return FeatureCache(self.root, self.backbone, self.preprocessing)

    def steps(self, n: int, batch_size: int | None = None) -> int:
        return math.ceil(n / (batch_size or self.options.batch_size))

    # ------------------------------------------------------------------ evaluation
    def logits(self, samples: Sequence[Sample]) -> tuple[torch.Tensor, torch.Tensor]:
        """Eval-mode logits of the decodable samples and the mask of which those are.

        With a pristine backbone the cached features serve; otherwise the whole network runs.
        With ``tta`` they are the log of the probabilities averaged over each image and its
        horizontal flip; they are divided by ``temperature`` (1 unless calibrated).
        """
        logits, ok = self._raw_logits(samples)
        return (logits / self.temperature if self.temperature != 1.0 else logits), ok

    def score(self, samples: Sequence[Sample]) -> dict[str, float]:
        """Accuracy, loss and ``n`` of the model on ``samples`` (eval mode)."""
        return score_logits(samples, *self.logits(samples))

    def _raw_logits(self, samples: Sequence[Sample]) -> tuple[torch.Tensor, torch.Tensor]:
        self.eval()
        if self.pristine:
            res = self.extract(samples, "features eval")
            if not self.options.tta:
                with torch.inference_mode():
                    return self.head(res.features[res.ok]), res.ok  # type: ignore[index]
            flip = self.extract_views(samples, HFLIP, 1, "features eval (flipped)")
            ok = res.ok & flip.ok
            with torch.inference_mode():
                return tta_logits(self.head(res.features[ok]),  # type: ignore[index]
                                  self.head(flip.features[ok])), ok  # type: ignore[index]
        return self._network_logits(samples)

    def _network_logits(self, samples: Sequence[Sample]) -> tuple[torch.Tensor, torch.Tensor]:
        """The whole model on an inference engine, on uint8 crops decoded in worker processes
        (the extraction pipeline): ONNX Runtime for jobs that repay an export (the graph is
        kept in the cache, keyed by the model's weights), eager torch otherwise."""
        model, pre = self.model, self.preprocessing
        model.eval()
        engine = self.engine_for(PREDICT_EXPORT_MIN)
        store = self.root / "models"

        def bind() -> Any:
            run = bind_pixels(model, pre, store, "model", engine, len(samples))
            return (lambda x: tta_logits(run(x), run(x.flip(2)))) if self.options.tta else run

        workers = self.options.num_workers if self.options.num_workers is not None else (
            0 if len(samples) < 64 else None)
        dataset = ImageDataset(samples, FastEvalTransform(pre), draft_size=pre.resize_size)
        ok = torch.zeros(len(samples), dtype=torch.bool)
        out = []
        for batch, logits in gated_stream(dataset, 64, workers, False, "predict", bind):
            if logits is not None:
                out.append(logits.float())
                ok[batch["indices"]] = True
            self.note_skipped([Skipped(samples[i].path, r) for i, r in batch["failures"]])
        n = self.head_outputs()
        return (torch.cat(out) if out else torch.empty(0, n)), ok

    def engine_for(self, min_images: int = 128) -> Any:
        """The engine object for a job: the user's choice, with eager torch on ``device``; for
        "auto", ONNX Runtime from ``min_images`` images (or once an export exists)."""
        torch_engine = TorchEngine(device=self.options.device)
        if self.options.engine in (None, "auto"):
            return AutoEngine(min_images=min_images, torch=torch_engine)
        if self.options.engine == "torch":
            return torch_engine
        if self.options.engine == "onnx":
            return AutoEngine(min_images=0, onnx=OnnxEngine(), torch=torch_engine)
        return create_engine(self.options.engine)  # another registered name, or an Engine

    def head_outputs(self) -> int:
        return [m for m in self.head.modules() if isinstance(m, nn.Linear)][-1].out_features
