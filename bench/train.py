"""Training-throughput benchmark: graftwork's frozen and fine-tuning epochs vs Keras/TensorFlow.

    python bench/train.py             # 640 train + 160 val JPEGs (400 px), both backbones + Keras
    python bench/train.py --quick     # 60 + 20 images, for checking that it works
    python bench/train.py --no-keras  # graftwork only (no TensorFlow venv)

graftwork (public API only: ``ImageClassifier``) trains one epoch of strategy ``frozen`` and
one of ``finetune`` (which first runs its ``extract`` warm-up phase, reported separately) on
``DATA/train|val/<class>/*.jpg`` at 224 px, batch 32, with a fresh cache. Train img/s = train
images / the phase's own ``wall_time_s``. The Keras peer (``bench/keras_peer.py``, run in
``bench/.venv-keras``) does the classic Keras recipe with MobileNetV2 on the same images in
the same run; ``compare`` gives graftwork img/s / Keras img/s. Prints one JSON line.

Validation: graftwork's frozen phase validates the head on cached features (their extraction
is outside the phase, inside ``fit_wall_s``); its finetune phase and both Keras epochs run the
validation images through the network, inside the epoch time (Keras' share: ``*_val_s``).
"""
from __future__ import annotations

import argparse
import inspect
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
DATA = BENCH / "data"
sys.path.insert(0, str(BENCH))

BACKBONES = ("efficientnet_lite0", "mobilenet_v2")
SAME_AS_KERAS = "mobilenet_v2"  # the headline: the peer's architecture
# Blocks unfrozen by finetune: mobilenet_v2's features.16-18 are Keras' block_15, block_16 and
# Conv_1, i.e. the peer's "last 20 layers"; efficientnet_lite0 keeps graftwork's default.
UNFREEZE = {"mobilenet_v2": 3, "efficientnet_lite0": 1}
PLANS = {"full": (64, 16, 0), "quick": (6, 2, 0)}  # per class: train, val, test
PX, SIZE, BATCH = 400, 224, 32


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def ensure_data(quick: bool) -> Path:
    """640 train + 160 val Fashion-MNIST JPEGs at 400 px (60 + 20 when quick)."""
    from extract import ensure_images

    counts = PLANS["quick" if quick else "full"]
    return ensure_images(f"train{counts[0] * 10}-{PX}", counts, PX)


def _count(folder: Path) -> int:
    return sum(1 for p in folder.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))


def _precisions() -> list[str | None]:
    """[None] unless ImageClassifier takes ``precision`` (then fp32 and bf16)."""
    from graftwork import ImageClassifier

    if "precision" in inspect.signature(ImageClassifier).parameters:
        return ["fp32", "bf16"]
    return [None]


def _fit(backbone: str, strategy: str, data: Path, cache: Path, unfreeze: int,
         precision: str | None) -> dict[str, Any]:
    """One cold-cache fit of one epoch per phase; its phases and wall time."""
    from graftwork import ImageClassifier

    shutil.rmtree(cache, ignore_errors=True)
    kw: dict[str, Any] = {"precision": precision} if precision else {}
    if strategy == "finetune":
        kw["unfreeze"] = unfreeze
    clf = ImageClassifier(backbone, strategy, epochs=1, image_size=SIZE, batch_size=BATCH,
                          cache_dir=str(cache), progress=False, **kw)
    t0 = time.perf_counter()
    clf.fit(data)
    wall = time.perf_counter() - t0
    rows = (getattr(clf, "metrics_", None) or {}).get("phases") or getattr(clf, "phases_", [])
    phases = {p["phase"]: p for p in rows}
    n_train, n_val = _count(data / "train"), _count(data / "val")
    own = phases[strategy]["wall_time_s"]
    out = {"phase_s": own, "train_img_s": round(n_train / own, 3),
           "fit_wall_s": round(wall, 2), "loadavg_1min_after": round(os.getloadavg()[0], 2),
           "outside_phases_s": round(wall - sum(p["wall_time_s"] for p in phases.values()), 2),
           "best_val_accuracy": phases[strategy]["best_val_accuracy"],
           "trainable_params": phases[strategy]["trainable_params"],
           "train_images": n_train, "val_images": n_val}
    if strategy == "finetune":
        out["unfreeze"] = unfreeze
        out["extract_phase_s"] = phases["extract"]["wall_time_s"]
    log(f"{backbone} {strategy}{f' {precision}' if precision else ''}: {own:.1f}s phase "
        f"({out['train_img_s']:.1f} train img/s), fit {wall:.1f}s")
    return out


def measure(data_dir: Path | str, backbones: tuple[str, ...] | list[str] = BACKBONES,
            quick: bool = False, unfreeze: dict[str, int] | None = None) -> dict[str, Any]:
    """graftwork's frozen and finetune epoch throughput per backbone (``quick``: no effect on
    the figures, only recorded; pass a small ``data_dir`` for a quick run)."""
    import torch

    torch.set_num_threads(os.cpu_count() or 1)  # one compute thread per core, as TF's default
    data = Path(data_dir)
    cache = DATA / "cache-train-bench"
    precisions = _precisions()
    per: dict[str, Any] = {}
    for bb in backbones:
        n = (unfreeze or {}).get(bb, UNFREEZE.get(bb, 1))
        for prec in precisions:
            key = bb if prec is None else f"{bb}@{prec}"
            per[key] = {"frozen": _fit(bb, "frozen", data, cache, n, prec),
                        "finetune": _fit(bb, "finetune", data, cache, n, prec)}
    shutil.rmtree(cache, ignore_errors=True)
    head = SAME_AS_KERAS if SAME_AS_KERAS in per else next(iter(per))
    return {
        "frozen_train_img_s": per[head]["frozen"]["train_img_s"],
        "finetune_train_img_s": per[head]["finetune"]["train_img_s"],
        "headline_backbone": head,
        "per_backbone": {k: {"frozen_train_img_s": v["frozen"]["train_img_s"],
                             "finetune_train_img_s": v["finetune"]["train_img_s"]}
                         for k, v in per.items()},
        "detail": per, "quick": quick,
        "train_images": _count(data / "train"), "val_images": _count(data / "val"),
        "image_size": SIZE, "batch_size": BATCH, "torch_threads": torch.get_num_threads(),
        "precision": ("fp32 vs bf16 measured" if precisions != [None]
                      else "precision: not available (ImageClassifier has no `precision`)"),
    }


def keras_peer(data_dir: Path | str, epochs: int = 1, warmup_batches: int = 3) -> dict[str, Any]:
    """Run bench/keras_peer.py in the Keras venv (created when missing); its JSON line."""
    from _keras_env import ensure_keras_venv

    py = ensure_keras_venv()
    cmd = [str(py), str(BENCH / "keras_peer.py"), "--data", str(data_dir),
           "--epochs", str(epochs), "--warmup-batches", str(warmup_batches)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"keras_peer.py failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")][-1]
    out = json.loads(line)
    out["process_s"] = round(time.perf_counter() - t0, 2)
    out["loadavg_1min_after"] = round(os.getloadavg()[0], 2)
    log(f"keras: predict {out['predict_img_s']:.1f} img/s, frozen {out['frozen_img_s']:.1f} "
        f"img/s, finetune {out['finetune_img_s']:.1f} img/s ({out['process_s']:.0f}s process)")
    return out


def compare(graftwork: dict[str, Any], keras: dict[str, Any]) -> dict[str, Any]:
    """graftwork img/s / Keras img/s, per backbone (headline: the peer's own architecture).

    frozen: train-only rates on both sides (graftwork's phase validates on cached features;
    Keras' validation pass is taken out of its epoch). frozen_whole: graftwork's whole fit
    (backbone build, feature extraction of val, evaluation) vs Keras' epoch with validation.
    finetune: both epochs include a validation pass through the network.
    """
    n = keras["train_images"]
    k_frozen, k_frozen_whole = keras["frozen_train_img_s"], keras["frozen_img_s"]
    k_fine = keras["finetune_img_s"]
    per = {}
    for name, d in graftwork["detail"].items():
        fz, ft = d["frozen"], d["finetune"]
        per[name] = {"frozen_vs_keras": round(fz["train_img_s"] / k_frozen, 3),
                     "frozen_whole_vs_keras": round(n / fz["fit_wall_s"] / k_frozen_whole, 3),
                     "finetune_vs_keras": round(ft["train_img_s"] / k_fine, 3)}
    head = per[graftwork["headline_backbone"]]
    return {**head, "headline_backbone": graftwork["headline_backbone"], "per_backbone": per,
            "same_images": graftwork["train_images"] == keras["train_images"]
            and graftwork["val_images"] == keras["val_images"]}


def run(data: Path, names: list[str], quick: bool, with_keras: bool,
        warmup_batches: int = 3) -> dict[str, Any]:
    """graftwork on every backbone, the Keras peer, and the ratios (one dict)."""
    start = time.perf_counter()
    first = [SAME_AS_KERAS] if SAME_AS_KERAS in names else names[:1]
    gw = measure(data, first, quick)  # the peer's architecture, then Keras, then the rest:
    keras = None                      # the closest machine conditions on a shared box
    if with_keras:
        keras = keras_peer(data, warmup_batches=warmup_batches)
    rest = [n for n in names if n not in first]
    if rest:
        more = measure(data, rest, quick)
        gw["per_backbone"].update(more["per_backbone"])
        gw["detail"].update(more["detail"])
    out: dict[str, Any] = {**gw}
    if keras is not None:
        out["keras"] = keras
        out["compare"] = compare(gw, out["keras"])
        out["frozen_vs_keras"] = out["compare"]["frozen_vs_keras"]
        out["finetune_vs_keras"] = out["compare"]["finetune_vs_keras"]
    out["cores"] = os.cpu_count()
    out["note"] = ("indicative: one run on a shared machine (see loadavg_1min_after); "
                   "Keras uses random weights (offline), graftwork its pretrained ones")
    out["wall_s"] = round(time.perf_counter() - start, 1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="60 + 20 images")
    ap.add_argument("--data", type=Path, help="an image folder (default: exported Fashion-MNIST)")
    ap.add_argument("--backbones", default=",".join(BACKBONES))
    ap.add_argument("--no-keras", action="store_true", help="skip the Keras/TensorFlow peer")
    ap.add_argument("--warmup-batches", type=int, default=3)
    args = ap.parse_args()
    data = args.data or ensure_data(args.quick)
    print(json.dumps(run(data, args.backbones.split(","), args.quick, not args.no_keras,
                         args.warmup_batches)))


if __name__ == "__main__":
    main()
