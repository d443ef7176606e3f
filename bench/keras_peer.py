"""The Keras/TensorFlow peer of graftwork's training benchmark (runs in bench/.venv-keras).

    bench/.venv-keras/bin/python bench/keras_peer.py --data DIR [--epochs 1] [--warmup-batches 3]

The classic Keras transfer-learning recipe on ``DIR/train|val/<class>/*.jpg`` at 224 px,
batch 32, MobileNetV2 (``include_top=False, pooling="avg"``) with its ``preprocess_input``:

  (a) extraction   ``model.predict`` of the base over the train images
  (b) frozen       base frozen, the seed's augmentation as Keras preprocessing layers in the
                   model, head Dense(256, relu) / Dropout(0.5) / Dense(classes), Adam;
                   ``fit`` with ``validation_data`` (validation included, as Keras does)
  (c) finetune     last 20 layers of the base unfrozen, BN kept in inference mode (the base is
                   called with ``training=False``, as in Keras' guide), RMSprop(1e-5)

Each timed epoch comes after a warm-up ``fit`` of a few batches (graph tracing excluded);
the warm-up time is reported too. ``weights=None``: ImageNet weights cannot be downloaded
here, and speed does not depend on the weight values. No graftwork import. Prints one JSON line.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

SIZE, BATCH = 224, 32


class EpochTimer(keras.callbacks.Callback):
    """Wall times of each epoch and of the validation pass inside it."""

    def __init__(self) -> None:
        super().__init__()
        self.epochs: list[float] = []
        self.vals: list[float] = []
        self._t = self._v = 0.0

    def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
        self._t = time.perf_counter()

    def on_test_begin(self, logs: Any = None) -> None:
        self._v = time.perf_counter()

    def on_test_end(self, logs: Any = None) -> None:
        self.vals.append(time.perf_counter() - self._v)

    def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
        self.epochs.append(time.perf_counter() - self._t)


def datasets(data: Path, shuffle: bool = True) -> tuple[Any, Any, int, int, int]:
    def load(split: str, shuf: bool) -> Any:
        return keras.utils.image_dataset_from_directory(
            data / split, image_size=(SIZE, SIZE), batch_size=BATCH, label_mode="int",
            shuffle=shuf, seed=0, verbose=False)

    train, val = load("train", shuffle), load("val", False)
    classes = len(train.class_names)
    n_train, n_val = _count(data / "train"), _count(data / "val")
    auto = tf.data.AUTOTUNE
    return train.prefetch(auto), val.prefetch(auto), classes, n_train, n_val


def _count(folder: Path) -> int:
    exts = {".jpg", ".jpeg", ".png", ".bmp", ".gif"}
    return sum(1 for p in folder.rglob("*") if p.suffix.lower() in exts)


def augmentation(notes: list[str]) -> keras.Sequential:
    """The seed's ImageDataGenerator settings as Keras preprocessing layers."""
    L = keras.layers
    layers = [L.RandomRotation(40 / 360, fill_mode="constant"),
              L.RandomTranslation(0.2, 0.2, fill_mode="constant"),
              L.RandomZoom(0.2, fill_mode="constant"),
              L.RandomFlip("horizontal")]
    if hasattr(L, "RandomShear"):
        layers.append(L.RandomShear(x_factor=0.2, y_factor=0.2, fill_mode="constant"))
        notes.append("shear: keras.layers.RandomShear(0.2, 0.2)")
    else:
        notes.append("shear: omitted (no keras.layers.RandomShear in this Keras)")
    return keras.Sequential(layers, name="augmentation")


def timed_fit(model: Any, train: Any, val: Any, epochs: int, warmup: int) -> dict[str, float]:
    """Warm-up fit on a few batches (tracing), then ``epochs`` timed epochs with validation."""
    t0 = time.perf_counter()
    if warmup:
        model.fit(train.take(warmup), validation_data=val.take(1), epochs=1, verbose=0)
    warm = time.perf_counter() - t0
    timer = EpochTimer()
    model.fit(train, validation_data=val, epochs=epochs, verbose=0, callbacks=[timer])
    epoch = sum(timer.epochs) / len(timer.epochs)
    val_s = sum(timer.vals) / len(timer.vals) if timer.vals else 0.0
    return {"warmup_s": warm, "epoch_s": epoch, "val_s": val_s, "train_s": epoch - val_s,
            "first_epoch_s": timer.epochs[0]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, type=Path)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--warmup-batches", type=int, default=3)
    args = ap.parse_args()
    notes = ["weights=None: ImageNet weights cannot be downloaded offline; speed does not "
             "depend on the weight values (accuracy figures are meaningless)",
             "timed epochs exclude a warm-up fit of "
             f"{args.warmup_batches} batches (graph tracing)",
             "img/s = train images / epoch seconds including validation; *_train_img_s "
             "excludes the validation pass"]
    train, val, classes, n_train, n_val = datasets(args.data)
    pre = keras.applications.mobilenet_v2.preprocess_input

    # (a) extraction: model.predict of the base over the train images
    base = keras.applications.MobileNetV2(input_shape=(SIZE, SIZE, 3), include_top=False,
                                          pooling="avg", weights=None)
    inp = keras.Input((SIZE, SIZE, 3))
    extractor = keras.Model(inp, base(pre(inp), training=False))
    ordered = datasets(args.data, shuffle=False)[0]
    extractor.predict(ordered.take(1), verbose=0)  # warm-up (tracing)
    t0 = time.perf_counter()
    feats = extractor.predict(ordered, verbose=0)
    predict_s = time.perf_counter() - t0
    assert feats.shape[0] == n_train, feats.shape

    # (b) frozen base + augmentation, head trained
    base.trainable = False
    x = augmentation(notes)(inp)
    x = base(pre(x), training=False)
    x = keras.layers.Dense(256, activation="relu")(x)
    x = keras.layers.Dropout(0.5)(x)
    model = keras.Model(inp, keras.layers.Dense(classes)(x))
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(optimizer=keras.optimizers.Adam(), loss=loss, metrics=["accuracy"])
    frozen = timed_fit(model, train, val, args.epochs, args.warmup_batches)

    # (c) fine-tuning: last 20 layers of the base, BN in inference mode (training=False above)
    base.trainable = True
    for layer in base.layers[:-20]:
        layer.trainable = False
    model.compile(optimizer=keras.optimizers.RMSprop(1e-5), loss=loss, metrics=["accuracy"])
    finetune = timed_fit(model, train, val, args.epochs, args.warmup_batches)
    notes.append(f"finetune unfreezes the base's last 20 layers, {base.layers[-20].name} .. "
                 f"{base.layers[-1].name} (block_15 from its expand BN, block_16, Conv_1)")

    r = lambda v: round(v, 3)  # noqa: E731
    out = {
        "keras_version": keras.__version__, "tf_version": tf.__version__,
        "predict_img_s": r(n_train / predict_s), "predict_s": r(predict_s),
        "frozen_epoch_s": r(frozen["epoch_s"]), "frozen_img_s": r(n_train / frozen["epoch_s"]),
        "frozen_val_s": r(frozen["val_s"]), "frozen_train_img_s": r(n_train / frozen["train_s"]),
        "frozen_warmup_s": r(frozen["warmup_s"]),
        "finetune_epoch_s": r(finetune["epoch_s"]),
        "finetune_img_s": r(n_train / finetune["epoch_s"]),
        "finetune_val_s": r(finetune["val_s"]),
        "finetune_train_img_s": r(n_train / finetune["train_s"]),
        "finetune_warmup_s": r(finetune["warmup_s"]),
        "train_images": n_train, "val_images": n_val, "classes": classes, "epochs": args.epochs,
        "threads": {"cpu_count": os.cpu_count(),
                    "intra_op": tf.config.threading.get_intra_op_parallelism_threads(),
                    "inter_op": tf.config.threading.get_inter_op_parallelism_threads(),
                    "note": "0 = TensorFlow default (all cores)"},
        "notes": notes,
    }
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
