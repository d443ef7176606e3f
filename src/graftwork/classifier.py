"""``ImageClassifier``: the estimator that ties the pipeline stages together.

    clf = ImageClassifier(backbone="efficientnet_lite0", strategy="extract").fit("DATA")
    clf.evaluate("DATA/test"); clf.save("runs/a")
    ImageClassifier.load("runs/a").predict(["img.jpg"])
"""
from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from graftwork import _persist
from graftwork import bn as bn_mod
from graftwork._prepared import PreparedBackbone, load_prepared, store_prepared
from graftwork.backbones import Backbone, create_backbone
from graftwork.data import (AugmentConfig, ImageDataset, Sample, Skipped, Splits, collate_skip,
                            discover, eval_transform, list_images, train_transform)
from graftwork.errors import BadImageError, ConfigError, DataError, NotFittedError
from graftwork.features import default_cache_dir, default_workers, extract_features
from graftwork.heads import build_head, head_dropout
from graftwork.model import GraftModel, bn_layers, freeze_backbone, parameter_counts
from graftwork.summary import backbone_table, run_summary
from graftwork.training import (TrainConfig, evaluate, fit, seed_everything, tensor_batches,
                                torch_threads)

__all__ = ["ImageClassifier", "STRATEGIES", "PHASE_DEFAULTS"]

log = logging.getLogger(__name__)

STRATEGIES = ("extract", "frozen", "finetune", "ladder")
PHASE_DEFAULTS: dict[str, dict[str, Any]] = {
    "extract": {"epochs": 40, "lr": 1e-3, "optimizer": "adam", "schedule": "none", "patience": 8},
    "frozen": {"epochs": 8, "lr": 1e-3, "optimizer": "adam", "schedule": "none", "patience": 4},
    "finetune": {"epochs": 6, "lr": 1e-4, "optimizer": "rmsprop", "schedule": "cosine",
                 "patience": 4},
}


def feature_batch_size(batch_size: int, n_train: int, cap: int = 256) -> int:
    """Batch size for a head on in-memory features: ~20+ steps per epoch, at most ``cap``.

    Per-step overhead, not arithmetic, dominates a small head: 5,000 vectors train several
    times faster in batches of 250 than of 32, to the same accuracy.
    """
    return max(batch_size, min(cap, n_train // 20))


class ImageClassifier:
    """Transfer-learning image classifier (scikit-learn style: ``fit`` returns ``self``).

    Strategies: ``extract`` (head on cached features), ``frozen`` (frozen backbone, head on
    augmented images), ``finetune`` (warm head, last ``unfreeze`` blocks trained with a small
    learning rate), ``ladder`` (all three in turn, each warm-starting the next).
    ``epochs``/``lr``/``optimizer``/``schedule`` left as None take each phase's defaults.
    """

    def __init__(self, backbone: str = "efficientnet_lite0", strategy: str = "extract", *,
                 weights: str | None = None, image_size: int | None = None, head: str = "mlp",
                 hidden: int = 256, dropout: float | None = None, epochs: int | None = None,
                 batch_size: int = 32, lr: float | None = None, optimizer: str | None = None,
                 schedule: str | None = None, patience: int | None = None,
                 unfreeze: int | str = 1, lr_decay: float = 0.5, train_bn: bool = False,
                 augment: AugmentConfig | None = AugmentConfig(), recalibrate: bool = True,
                 val_fraction: float = 0.2, test_fraction: float = 0.2, seed: int = 0,
                 cache_dir: str | None = None, num_workers: int | None = None,
                 strict: bool = False, progress: bool = True) -> None:
        self.backbone = backbone
        self.strategy = strategy
        self.weights = weights
        self.image_size = image_size
        self.head = head
        self.hidden = hidden
        self.dropout = dropout
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.optimizer = optimizer
        self.schedule = schedule
        self.patience = patience
        self.unfreeze = unfreeze
        self.lr_decay = lr_decay
        self.train_bn = train_bn
        self.augment = augment
        self.recalibrate = recalibrate
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.seed = seed
        self.cache_dir = cache_dir
        self.num_workers = num_workers
        self.strict = strict
        self.progress = progress

    # ------------------------------------------------------------------ parameters
    def get_params(self) -> dict[str, Any]:
        keys = ("backbone", "strategy", "weights", "image_size", "head", "hidden", "dropout",
                "epochs", "batch_size", "lr", "optimizer", "schedule", "patience", "unfreeze",
                "lr_decay", "train_bn", "recalibrate", "val_fraction", "test_fraction", "seed")
        params = {k: getattr(self, k) for k in keys}
        params["augment"] = self.augment.as_dict() if self.augment else None
        return params

    def _phase_config(self, phase: str, n_train: int = 0) -> TrainConfig:
        """The phase's settings; the head on cached features gets larger batches on big data."""
        d = PHASE_DEFAULTS[phase]
        batch, lr = self.batch_size, self.lr or d["lr"]
        if phase == "extract" and n_train:
            batch = feature_batch_size(self.batch_size, n_train)
            if self.lr is None:  # square-root scaling keeps Adam's step noise comparable
                lr *= math.sqrt(batch / self.batch_size)
        return TrainConfig(epochs=self.epochs or d["epochs"], lr=lr,
                           optimizer=self.optimizer or d["optimizer"],
                           schedule=self.schedule or d["schedule"],
                           patience=self.patience or d["patience"], seed=self.seed,
                           batch_size=batch)

    def _head_dropout(self) -> float:
        return head_dropout(self.head, self.dropout)

    # ------------------------------------------------------------------ the model
    @property
    def model_(self) -> GraftModel:
        """Backbone + head. After an ``extract`` fit whose features were all cached, the
        backbone network is only built here, on first access (training never needed it)."""
        model = self.__dict__.get("_model")
        if model is None:
            prepared = self.__dict__.get("_prepared")
            if prepared is None:
                raise AttributeError("model_")
            model = GraftModel(prepared.module(), self._head, self.train_bn)
            model.train(self._head.training)
            self.__dict__["_model"] = model
        return model

    @model_.setter
    def model_(self, model: GraftModel) -> None:
        self.__dict__.update(_model=model, _head=model.head, _prepared=None)

    def _set_model(self, backbone: Backbone | PreparedBackbone, head: nn.Module) -> None:
        if isinstance(backbone, PreparedBackbone):
            self.__dict__.update(_model=None, _head=head, _prepared=backbone)
        else:
            self.model_ = GraftModel(backbone, head, self.train_bn)

    def _backbone_ref(self) -> Backbone | PreparedBackbone:
        """The backbone network, or its prepared record while the network is not built."""
        model = self.__dict__.get("_model")
        return model.backbone if model is not None else self.__dict__["_prepared"]

    def _counts(self) -> dict[str, int]:
        if self.__dict__.get("_model") is not None:
            return parameter_counts(self.model_)
        head, bb = parameter_counts(self._head), self.__dict__["_prepared"].counts
        return {k: head[k] + bb[k] for k in head}

    def _state_dict(self) -> dict[str, torch.Tensor]:
        if self.__dict__.get("_model") is not None:
            return self.model_.state_dict()
        return {**{f"backbone.{k}": v for k, v in self.__dict__["_prepared"].state_dict().items()},
                **{f"head.{k}": v for k, v in self._head.state_dict().items()}}

    def _resolve_backbone(self) -> Backbone | PreparedBackbone:
        """The backbone; for ``extract``, its prepared record when one is stored (no network
        is built unless some features are missing). Records are stored for later runs."""
        root = self.cache_dir or default_cache_dir()
        if self.strategy == "extract":
            prepared = load_prepared(root, self.backbone, self.weights)
            if prepared is not None:
                log.info("backbone %s: prepared record %s", self.backbone, prepared.path.name)
                return prepared
        backbone = create_backbone(self.backbone, self.weights)
        store_prepared(root, self.backbone, self.weights, backbone,
                       self.image_size or backbone.spec.input_size)
        return backbone

    def _check_fitted(self) -> None:
        if self.__dict__.get("_head") is None:
            raise NotFittedError("this classifier is not fitted yet",
                                 "call fit(DATA) or ImageClassifier.load(RUN) first")

    # ------------------------------------------------------------------ fit
    def fit(self, data: str | Path, *, checkpoint_dir: str | Path | None = None,
            resume: bool = False) -> ImageClassifier:
        """Train on an image folder (``DATA/train|val|test/<class>`` or ``DATA/<class>``)."""
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"unknown strategy {self.strategy!r}",
                              f"choose one of {', '.join(STRATEGIES)}")
        t0 = time.perf_counter()
        seed_everything(self.seed)
        splits = discover(data, self.val_fraction, self.test_fraction, self.seed)
        self.classes_ = splits.classes
        self.splits_ = splits
        self._skipped: dict[str, str] = {s.path: s.reason for s in splits.skipped}
        self.__dict__.pop("extract_stats_", None)
        self._seen: set[str] = set()
        backbone = self._resolve_backbone()
        self._check_unfreeze(backbone)
        self.pretrained_weights_ = backbone.weights
        self.preprocessing_ = backbone.spec.preprocessing(self.image_size)
        torch.manual_seed(self.seed)  # the head's initial weights must not depend on whether
        head = build_head(self.head, backbone.feature_dim, len(self.classes_), self.hidden,
                          self._head_dropout())  # building the backbone drew random numbers
        self._set_model(backbone, head)
        self.history_: list[dict[str, Any]] = []
        self.phases_: list[dict[str, Any]] = []
        self.trainable_: dict[str, dict[str, int]] = {}
        self.phase_configs_: dict[str, TrainConfig] = {}
        self._ckpt_dir = Path(checkpoint_dir) if checkpoint_dir else None
        self._resume = resume
        self._backbone_pristine = True
        plan = {"extract": ["extract"], "frozen": ["frozen"],
                "finetune": ["extract", "finetune"],
                "ladder": ["extract", "frozen", "finetune"]}[self.strategy]
        best: tuple[float, float, str, dict[str, torch.Tensor]] | None = None
        for phase in plan:
            result = getattr(self, f"_fit_{phase}")(splits)
            val = result.best_val or {"accuracy": math.nan, "loss": math.nan}
            test = self._evaluate_samples(splits.test) if splits.test else {}
            self.phases_.append({
                "phase": phase, "best_val_accuracy": val.get("accuracy"),
                "best_val_loss": val.get("loss"), "test_accuracy": test.get("accuracy"),
                "test_loss": test.get("loss"), "epochs": len(result.history),
                "best_epoch": result.best_epoch, "wall_time_s": round(result.seconds, 2),
                "trainable_params": self.trainable_[phase]["trainable_params"]})
            self.history_ += result.history
            score = (val.get("accuracy", -1.0), -val.get("loss", 0.0))
            if len(plan) > 1 and (best is None or score > best[:2]):
                best = (*score, phase, {k: v.clone() for k, v in self.model_.state_dict().items()})
        if self.strategy == "ladder" and best is not None:
            self.model_.load_state_dict(best[3])
            self.best_phase_ = best[2]
            self._backbone_pristine = best[2] != "finetune"
        self.bn_ = self._maybe_recalibrate(splits)
        self._eval()
        self.metrics_ = self._final_metrics(splits, time.perf_counter() - t0)
        return self

    def _eval(self) -> None:
        (self.model_ if self.__dict__.get("_model") is not None else self._head).eval()

    def _check_unfreeze(self, backbone: Backbone | PreparedBackbone) -> None:
        """Fail before any training when ``unfreeze`` does not fit the backbone."""
        if self.strategy not in ("finetune", "ladder") or self.unfreeze == "all":
            return
        assert isinstance(backbone, Backbone)  # prepared records serve ``extract`` only
        n = len(backbone.block_param_names())
        if not isinstance(self.unfreeze, int) or not 0 <= self.unfreeze <= n:
            raise ConfigError(f"unfreeze={self.unfreeze!r} does not fit {self.backbone}, which "
                              f"has {n} blocks", f"choose 0..{n} or 'all' "
                              f"(see `graft summary {self.backbone}`)")

    def _extract(self, samples: Sequence[Sample], desc: str) -> Any:
        """Backbone features of ``samples`` through the cache; counts and skipped recorded."""
        res = extract_features(self._backbone_ref(), samples, self.preprocessing_, self.cache_dir,
                               batch_size=max(self.batch_size, 32), num_workers=self.num_workers,
                               progress=self.progress, strict=self.strict, desc=desc)
        self._note_skipped(res.skipped)
        stats = self.__dict__.setdefault("extract_stats_", {"extracted": 0, "cached": 0})
        seen = self.__dict__.setdefault("_seen", set())  # each image counted once per fit
        new = {s.path for s in samples} - seen
        seen |= new
        stats["extracted"] += res.extracted
        stats["cached"] += max(0, min(res.cached, len(new) - res.extracted))
        return res

    def _features(self, samples: Sequence[Sample], desc: str) -> tuple[torch.Tensor, torch.Tensor]:
        res = self._extract(samples, desc)
        labels = torch.tensor([s.label for s in samples], dtype=torch.long)
        return res.features[res.ok], labels[res.ok]

    def _note_skipped(self, skipped: Sequence[Skipped]) -> None:
        if skipped and self.strict:  # every path (train, val, test, eval) ends here
            raise BadImageError(f"{skipped[0].path}: {skipped[0].reason}",
                                "fix or remove the file, or run without --strict")
        for s in skipped:
            self._skipped.setdefault(s.path, s.reason)

    def _ckpt(self, phase: str) -> Path | None:
        if self._ckpt_dir is None:
            return None
        self._ckpt_dir.mkdir(parents=True, exist_ok=True)
        return self._ckpt_dir / f"checkpoint-{phase}.pt"

    def _fit_extract(self, splits: Splits) -> Any:
        backbone = self._backbone_ref()
        if isinstance(backbone, Backbone):  # prepared records are frozen
            freeze_backbone(backbone, 0)
        self.trainable_["extract"] = self._counts()
        x, y = self._features(splits.train, "features train")
        xv, yv = self._features(splits.val, "features val") if splits.val else (None, None)
        head, cfg = self._head, self._phase_config("extract", len(x))
        self.phase_configs_["extract"] = cfg
        bs = cfg.batch_size
        val_fn = (lambda: evaluate(head, tensor_batches(xv, yv, 256))) if xv is not None else None
        with torch_threads(1):
            return fit(head, lambda g: tensor_batches(x, y, bs, g), val_fn, cfg,
                       steps_per_epoch=math.ceil(len(x) / bs), phase="extract",
                       progress=self.progress, checkpoint=self._ckpt("extract"),
                       resume=self._resume)

    def _loader(self, samples: Sequence[Sample], transform: Any, batch_size: int,
                generator: torch.Generator | None = None) -> torch.utils.data.DataLoader:
        """Batches of decoded images (``collate_skip`` dicts), shuffled when given a generator."""
        workers = default_workers() if self.num_workers is None else self.num_workers
        return torch.utils.data.DataLoader(
            ImageDataset(samples, transform, draft_size=self.preprocessing_["image_size"]),
            batch_size=batch_size, shuffle=generator is not None, generator=generator,
            num_workers=workers if len(samples) > batch_size else 0, collate_fn=collate_skip)

    def _image_batches(self, samples: Sequence[Sample], transform: Any, generator: torch.Generator | None,
                       batch_size: int | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for batch in self._loader(samples, transform, batch_size or self.batch_size, generator):
            failures = [Skipped(samples[i].path, r) for i, r in batch["failures"]]
            if failures and self.strict:
                raise BadImageError(f"{failures[0].path}: {failures[0].reason}",
                                    "fix or remove the file, or run without --strict")
            self._note_skipped(failures)
            yield batch["images"].contiguous(memory_format=torch.channels_last), batch["labels"]

    def _fit_end_to_end(self, splits: Splits, phase: str, groups: list[dict[str, Any]] | None,
                        val_fn: Any) -> Any:
        cfg = self._phase_config(phase)
        self.phase_configs_[phase] = cfg
        tf = train_transform(self.preprocessing_, self.augment)
        self.model_.to(memory_format=torch.channels_last)
        return fit(self.model_, lambda g: self._image_batches(splits.train, tf, g), val_fn, cfg,
                   param_groups=groups, steps_per_epoch=math.ceil(len(splits.train) / self.batch_size),
                   phase=phase, progress=self.progress, checkpoint=self._ckpt(phase),
                   resume=self._resume)

    def _fit_frozen(self, splits: Splits) -> Any:
        freeze_backbone(self.model_.backbone, 0)
        self.trainable_["frozen"] = parameter_counts(self.model_)
        val_fn = None
        if splits.val:  # backbone frozen and val not augmented: cached features give the same
            xv, yv = self._features(splits.val, "features val")
            val_fn = lambda: evaluate(self.model_.head, tensor_batches(xv, yv, 256))  # noqa: E731
        return self._fit_end_to_end(splits, "frozen", None, val_fn)

    def _fit_finetune(self, splits: Splits) -> Any:
        blocks = freeze_backbone(self.model_.backbone, self.unfreeze)
        self.unfrozen_blocks_ = blocks
        self.trainable_["finetune"] = parameter_counts(self.model_)
        self._backbone_pristine = False
        cfg = self._phase_config("finetune")
        groups: list[dict[str, Any]] = [{"params": list(self.model_.head.parameters()),
                                         "lr": cfg.lr}]
        by_name = dict(self.model_.backbone.named_parameters())
        trainable = [(b, n) for b, n in self.model_.backbone.block_param_names()
                     if any(by_name[p].requires_grad for p in n)]
        for depth, (_, names) in enumerate(reversed(trainable)):  # discriminative learning rates
            params = [by_name[p] for p in names if by_name[p].requires_grad]
            if params:
                groups.append({"params": params, "lr": cfg.lr * self.lr_decay ** depth})
        val_fn = None
        if splits.val:
            tf = eval_transform(self.preprocessing_)
            val_fn = lambda: evaluate(self.model_, self._image_batches(splits.val, tf, None, 64))  # noqa: E731
        return self._fit_end_to_end(splits, "finetune", groups, val_fn)

    # ------------------------------------------------------------------ BN
    def _bn_could_change(self) -> list[str]:
        """BN layers whose running statistics training may have changed."""
        if not self.train_bn or self._backbone_pristine:
            return []
        return [n for n, m in bn_layers(self.model_.backbone)
                if any(p.requires_grad for p in m.parameters(recurse=False))]

    def _maybe_recalibrate(self, splits: Splits) -> dict[str, Any]:
        layers = self._bn_could_change()
        policy = {"frozen_bn": "inference mode", "unfrozen_bn": "train" if self.train_bn
                  else "inference mode", "recalibrated": False}
        if not layers:
            policy["reason"] = "BN running statistics could not change (frozen or inference mode)"
            return policy
        if not self.recalibrate:
            policy["reason"] = "recalibration disabled"
            return policy
        before = self._evaluate_samples(splits.val) if splits.val else {}
        tf = eval_transform(self.preprocessing_)
        names = [f"backbone.{n}" for n in layers]
        batches = tqdm(self._image_batches(splits.train, tf, None, 64), desc="recalibrate BN",
                       total=math.ceil(len(splits.train) / 64), unit="batch",
                       disable=not self.progress, leave=False)
        bn_mod.recalibrate(self.model_, batches, names)
        after = self._evaluate_samples(splits.val) if splits.val else {}
        policy.update(recalibrated=True, layers=len(names), val_before=before, val_after=after)
        return policy

    # ------------------------------------------------------------------ evaluation
    def _logits(self, samples: Sequence[Sample]) -> tuple[torch.Tensor, torch.Tensor]:
        """Eval-mode logits of the decodable samples and the mask of which those are."""
        self._eval()
        if self._backbone_pristine and hasattr(self, "_skipped"):
            res = self._extract(samples, "features eval")
            with torch.inference_mode():
                return self._head(res.features[res.ok]), res.ok  # type: ignore[index]
        ok = torch.zeros(len(samples), dtype=torch.bool)
        out = []
        with torch.inference_mode():
            for batch in self._loader(samples, eval_transform(self.preprocessing_), 64):
                if len(batch["indices"]):
                    out.append(self.model_(batch["images"]))
                    ok[batch["indices"]] = True
                if hasattr(self, "_skipped"):
                    self._note_skipped([Skipped(samples[i].path, r) for i, r in batch["failures"]])
        n = len(self.classes_)
        return (torch.cat(out) if out else torch.empty(0, n)), ok

    def _evaluate_samples(self, samples: Sequence[Sample]) -> dict[str, float]:
        return self._score(samples, *self._logits(samples))

    @staticmethod
    def _score(samples: Sequence[Sample], logits: torch.Tensor, ok: torch.Tensor) -> dict[str, float]:
        labels = torch.tensor([s.label for s in samples], dtype=torch.long)[ok]
        return evaluate(nn.Identity(), [(logits, labels)])

    def _final_metrics(self, splits: Splits, seconds: float) -> dict[str, Any]:
        metrics: dict[str, Any] = {"val": self._evaluate_samples(splits.val) if splits.val else {}}
        if splits.test:
            logits, ok = self._logits(splits.test)  # once for the metrics and the rows
            metrics["test"] = self._score(splits.test, logits, ok)
            self.test_predictions_ = self._prediction_rows(splits.test, logits, ok)
        metrics["phases"] = self.phases_
        metrics["bn"] = self.bn_
        metrics["skipped"] = len(self._skipped)
        metrics["wall_time_s"] = round(seconds, 2)
        metrics["features"] = getattr(self, "extract_stats_", {})
        return metrics

    def _prediction_rows(self, samples: Sequence[Sample], logits: torch.Tensor,
                         ok: torch.Tensor) -> list[dict[str, Any]]:
        probs = logits.softmax(1)
        kept = [s for s, good in zip(samples, ok.tolist()) if good]
        rows = []
        for s, p in zip(kept, probs):
            pred = int(p.argmax())
            rows.append({"path": s.path, "label": self.classes_[s.label],
                         "pred": self.classes_[pred], "prob": round(float(p[pred]), 6),
                         "prob_true": round(float(p[s.label]), 6),
                         "loss": round(-math.log(max(float(p[s.label]), 1e-12)), 6)})
        return rows

    def evaluate(self, data: str | Path) -> dict[str, Any]:
        """Accuracy and loss on a folder with one sub-folder per class (names as in training)."""
        self._check_fitted()
        folder = Path(data)
        if not folder.is_dir():
            raise DataError(f"folder {str(folder)!r} does not exist", "check the path")
        if (folder / "test").is_dir():
            folder = folder / "test"
        found = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
        unknown = sorted(set(found) - set(self.classes_))
        if not found or unknown:
            raise DataError(f"{str(folder)!r}: class folders {unknown or 'none'} are not among "
                            f"the model's classes {self.classes_}",
                            "pass a folder with one sub-folder per class the model knows")
        skipped: list[Skipped] = []
        samples = [Sample(str(p), self.classes_.index(c)) for c in found
                   for p in list_images(folder / c, skipped)]
        result = self._evaluate_samples(samples)
        result["skipped"] = len(samples) - int(result["n"])
        return result

    # ------------------------------------------------------------------ prediction
    def predict(self, inputs: Sequence[str | Path] | str | Path, top_k: int = 1) -> list[dict[str, Any]]:
        """Top-k labels and probabilities for image files and folders of images."""
        self._check_fitted()
        if isinstance(inputs, (str, Path)):
            inputs = [inputs]
        paths: list[str] = []
        for item in inputs:
            p = Path(item)
            if p.is_dir():
                paths += [str(f) for f in list_images(p)]
            elif p.exists():
                paths.append(str(p))
            else:
                raise DataError(f"{str(p)!r} does not exist", "check the path")
        samples = [Sample(p, 0) for p in paths]
        logits, ok = self._logits(samples)
        probs = logits.softmax(1)
        k = max(1, min(top_k, len(self.classes_)))
        out, row = [], 0
        for sample, good in zip(samples, ok.tolist()):
            if not good:
                out.append({"path": sample.path, "error": "cannot decode image"})
                continue
            values, idx = probs[row].topk(k)
            row += 1
            out.append({"path": sample.path, "label": self.classes_[int(idx[0])],
                        "prob": float(values[0]),
                        "top_k": [{"label": self.classes_[int(i)], "prob": float(v)}
                                  for v, i in zip(values, idx)]})
        return out

    def summary(self) -> str:
        """Per-layer tables of the backbone and the head (name, input and output shape, params,
        trainable or not), then the totals; BN running statistics are counted apart."""
        self._check_fitted()
        backbone, size = self._backbone_ref(), int(self.preprocessing_["image_size"])
        text = (backbone.summary(size) if isinstance(backbone, PreparedBackbone)
                else backbone_table(backbone, size))
        return run_summary(text, self._head, backbone.feature_dim, self._counts())

    # ------------------------------------------------------------------ persistence
    def config(self) -> dict[str, Any]:
        """Everything needed to rebuild the model, and to know how it was made."""
        self._check_fitted()
        return _persist.run_config(self)

    def save(self, run_dir: str | Path) -> Path:
        """Write model.safetensors, config.json, metrics.json, history.csv and friends."""
        self._check_fitted()
        return _persist.save_run(self, run_dir)

    @classmethod
    def from_model(cls, model: GraftModel, classes: Sequence[str],
                   preprocessing: dict[str, Any] | None = None) -> ImageClassifier:
        """Wrap a model trained elsewhere (e.g. to save it, then ``graft doctor`` it)."""
        return _persist.wrap_model(cls, model, classes, preprocessing)

    @classmethod
    def load(cls, run_dir: str | Path) -> ImageClassifier:
        """Rebuild a saved classifier (no pickled code is executed)."""
        return _persist.load_run(cls, run_dir)
