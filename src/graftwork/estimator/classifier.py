"""``ImageClassifier``: the estimator, a facade over the pipeline stages.

    clf = ImageClassifier(backbone="efficientnet_lite0", strategy="extract").fit("DATA")
    clf.evaluate("DATA/test"); clf.save("runs/a")
    ImageClassifier.load("runs/a").predict(["img.jpg"])

Where things happen: training strategies in :mod:`graftwork.phases`, fitting in
:mod:`.fit`, running the model in :mod:`graftwork.features.session`, evaluation, prediction and
the BatchNorm tools in :mod:`.inference`, saving and loading in :mod:`.persist` (files defined
by :mod:`graftwork.rundir`).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

import graftwork.estimator.inference as _inference
import graftwork.estimator.persist as _persist
from graftwork.estimator.base import ParamsMixin
from graftwork.training.callbacks import Callback
from graftwork.data.preprocess import Preprocessing
from graftwork.data.transforms import AugmentConfig
from graftwork.errors import NotFittedError
from graftwork.model.graft import GraftModel

__all__ = ["ImageClassifier", "STRATEGIES"]


def __getattr__(name: str) -> Any:
    if name == "STRATEGIES":  # kept for compatibility: the registry is the source of truth
        from graftwork.phases import strategy_names

        return tuple(strategy_names())
    raise AttributeError(name)


class ImageClassifier(ParamsMixin):
    """Transfer-learning image classifier with scikit-learn's conventions.

    Strategies (``graftwork.phases``): ``extract`` (head on cached features), ``frozen``
    (frozen backbone, head on augmented images), ``finetune`` (warm head, last ``unfreeze``
    blocks trained with a small learning rate; ``"auto"``: the backbone's count, or its
    ``finetune_more_blocks`` from its ``finetune_more_from`` training images per class),
    ``ladder`` (all three, each warm-starting the next; the best by validation is kept).
    ``epochs``/``lr``/``optimizer``/``schedule``/``patience``/``weight_decay`` left as None
    take each phase's defaults;
    ``phase_options`` sets them for one phase (``{"finetune": {"lr": 1e-4, "epochs": 12}}``).
    Learned attributes end in ``_``.

    Quality options: ``augment_policy`` (classic, mild, trivialwide, none), ``aug_views``
    (``extract``: K augmented views of every training image as extra cached features),
    ``tta`` (average each image's and its mirror image's probabilities), ``class_weights``
    (None, ``"auto"`` inverse frequency, or {class: weight}), ``calibrate`` (temperature
    scaling on the validation split; ``calibration_`` and ``metrics_["calibration"]``),
    ``refit`` (once the validation images have chosen the model, train its configuration
    again on train + val: ``refit_``, ``metrics_["refit"]``; see
    :mod:`graftwork.estimator.refit`).
    """

    def __init__(self, backbone: str = "efficientnet_lite0", strategy: str = "extract", *,
                 weights: str | None = None, image_size: int | None = None, head: str = "mlp",
                 hidden: int = 256, dropout: float | None = None, epochs: int | None = None,
                 batch_size: int = 32, lr: float | None = None, optimizer: str | None = None,
                 schedule: str | None = None, patience: int | None = None,
                 phase_options: dict[str, dict[str, Any]] | None = None,
                 unfreeze: int | str = "auto", lr_decay: float = 0.8, train_bn: bool = False,
                 label_smoothing: float = 0.0, weight_decay: float | None = None,
                 augment: AugmentConfig | None = AugmentConfig(), recalibrate: bool = True,
                 augment_policy: str = "mild", aug_views: int = 0, tta: bool = False,
                 class_weights: str | dict[str, float] | None = None, calibrate: bool = False,
                 refit: bool = False,
                 val_fraction: float = 0.2, test_fraction: float = 0.2, seed: int = 0,
                 device: str = "auto", precision: str = "auto", engine: str = "auto",
                 cache_dir: str | None = None, num_workers: int | None = None,
                 exclude: str | None = None,
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
        self.phase_options = phase_options
        self.unfreeze = unfreeze
        self.lr_decay = lr_decay
        self.train_bn = train_bn
        self.label_smoothing = label_smoothing
        self.weight_decay = weight_decay
        self.augment = augment
        self.recalibrate = recalibrate
        self.augment_policy = augment_policy
        self.aug_views = aug_views
        self.tta = tta
        self.class_weights = class_weights
        self.calibrate = calibrate
        self.refit = refit
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.seed = seed
        self.device = device
        self.precision = precision
        self.engine = engine
        self.cache_dir = cache_dir
        self.exclude = exclude
        self.num_workers = num_workers
        self.strict = strict
        self.progress = progress

    # ------------------------------------------------------------------ training
    def fit(self, data: str | Path, y: None = None, *, checkpoint_dir: str | Path | None = None,
            resume: bool = False, callbacks: Sequence[Callback] = ()) -> ImageClassifier:
        """Train on an image folder (``DATA/train|val|test/<class>`` or ``DATA/<class>``).

        Parameters are checked first (``ConfigError`` before any work). With ``checkpoint_dir``
        every epoch is checkpointed and ``resume`` continues an interrupted fit on the same
        data and settings. ``callbacks`` receive phase and epoch events.
        """
        from graftwork.estimator.fit import fit_classifier
        from graftwork.estimator.validate import validate_params

        phases = validate_params(self.get_params(deep=False))
        fit_classifier(self, data, phases,
                       checkpoint_dir=Path(checkpoint_dir) if checkpoint_dir else None,
                       resume=resume, callbacks=callbacks)
        return self

    @property
    def model_(self) -> GraftModel:
        """Backbone + head (after a fit on cached features only, built on first access)."""
        return self._session().model

    def _session(self) -> Any:
        session = self.__dict__.get("session_")
        if session is None:
            raise NotFittedError("this classifier is not fitted yet",
                                 "call fit(DATA) or ImageClassifier.load(RUN) first")
        # how to run (not what was learned) follows set_params after fitting or loading
        from graftwork.features.session import RunOptions
        from graftwork.training.devices import resolve_device

        follow = RunOptions.from_params(self.get_params(deep=False),
                                        device=str(resolve_device(self.device)))
        return session.configure(replace(session.options, **{
            name: getattr(follow, name) for name in RunOptions.FOLLOWS}))

    # ------------------------------------------------------------------ using the model
    def evaluate(self, data: str | Path) -> dict[str, Any]:
        """Accuracy, loss, ``n``, ``skipped`` and ``scored`` (which images) on a folder with one
        sub-folder per class: ``DATA/test`` if there is one; of the flat folder the model was
        trained on, only the images its seeded split held out."""
        return _inference.evaluate_folder(self._session(), self.classes_, data, self._held_out())

    def _held_out(self) -> _inference.HeldOut | None:
        """How training split a flat folder, and what it excluded (None when neither is
        known)."""
        counts = (self.splits_.counts() if hasattr(self, "splits_")
                  else getattr(self, "split_counts_", None))
        excluded = frozenset(Path(p).as_posix() for p in getattr(self, "excluded_", ()))
        if not counts and not excluded:
            return None
        return _inference.HeldOut(self.val_fraction, self.test_fraction, self.seed,
                                  counts or {}, excluded)

    def score(self, data: str | Path, y: None = None) -> float:
        """Accuracy on a labelled folder (scikit-learn's ``score``)."""
        return float(self.evaluate(data)["accuracy"])

    def predict(self, inputs: Sequence[str | Path] | str | Path,
                top_k: int = 1) -> list[dict[str, Any]]:
        """Top-k labels and probabilities for image files and folders of images."""
        from graftwork.params import check_param

        check_param("top_k", top_k)
        return _inference.predict_paths(self._session(), self.classes_, inputs, top_k)

    def predict_proba(self, inputs: Sequence[str | Path] | str | Path) -> np.ndarray:
        """Probabilities ``(n_images, n_classes)`` in ``classes_`` order; NaN rows for images
        that cannot be decoded. Folders are expanded to their images (sorted)."""
        return _inference.predict_proba(self._session(), inputs)[1]

    def doctor(self, data: str | Path, batch_size: int = 32) -> dict[str, Any]:
        """BatchNorm health on DATA's training images (train-mode vs eval-mode accuracy, worst
        layers, verdict, fix); also stored in ``metrics_["doctor"]``."""
        report = _inference.doctor(self._session(), self.classes_, data, batch_size)
        self.metrics_ = {**getattr(self, "metrics_", {}), "doctor": report}
        return report

    def recalibrate_bn(self, data: str | Path, batch_size: int = 32) -> dict[str, Any]:
        """Recompute every BatchNorm layer's statistics on DATA's training images."""
        result = _inference.recalibrate(self._session(), self.classes_, data, batch_size)
        self.bn_ = {**getattr(self, "bn_", {}), **result}
        self.metrics_ = {**getattr(self, "metrics_", {}), "bn": self.bn_}
        return result

    def summary(self) -> str:
        """Per-layer tables of the backbone and the head, then the totals."""
        return _persist.run_summary_text(self._session())

    # ------------------------------------------------------------------ persistence
    def config(self) -> dict[str, Any]:
        """Everything needed to rebuild the model, and to know how it was made."""
        self._session()
        return _persist.run_config(self)

    def save(self, run_dir: str | Path) -> Path:
        """Write model.safetensors, config.json, metrics.json, history.csv and friends."""
        self._session()
        return _persist.save_run(self, run_dir)

    @classmethod
    def from_model(cls, model: GraftModel, classes: Sequence[str],
                   preprocessing: Preprocessing | dict[str, Any] | None = None
                   ) -> ImageClassifier:
        """Wrap a model trained elsewhere (e.g. to save it, then ``graft doctor`` it).
        ``preprocessing``: a ``Preprocessing`` or its dict form (default: the backbone's)."""
        return _persist.wrap_model(cls, model, classes, preprocessing)

    @classmethod
    def load(cls, run_dir: str | Path) -> ImageClassifier:
        """Rebuild a saved classifier (no pickled code is executed; files are validated)."""
        return _persist.load_run(cls, run_dir)
