"""Feature-extraction benchmark: forward-only vs end-to-end vs naive, cached re-runs, peak RSS.

    python bench/extract.py            # full run (make bench), 6-8 minutes on 2 cores
    python bench/extract.py --quick    # under a minute, for checking that it works

It writes its own images (Fashion-MNIST from Debian's ``dataset-fashion-mnist``, upscaled to
400 px JPEG, and 64 px JPEG for the memory part) under ``bench/data/`` (git-ignored), measures
everything in one run, prints one JSON line and a markdown table, and rewrites the generated part
of ``bench/results.md`` (between the ``bench:begin``/``bench:end`` markers; the notes stay).

Figures:
  forward_only   images/s of the backbone on pre-decoded, pre-resized uint8 tensors (best config)
  end_to_end     images/s of ``extract_features`` from JPEG files to cached features on disk
  naive          images/s of the Keras-tutorial loop: batch 20, no workers, decode + resize in the
                 main thread, NCHW, autograd on
  cached_rerun   wall time of a second ``graft train`` (another head) vs the first, both cold
                 processes
  peak_rss       peak resident memory of an extraction process at two dataset sizes
  training       frozen and fine-tuning epochs (bench/train.py) of efficientnet_lite0 and
                 mobilenet_v2, fp32 and bf16, and the Keras/TensorFlow recipe on the same images
                 (in bench/.venv-keras; skipped with --quick)
  predict        predict_proba of a saved run on the end_to_end images, vs end_to_end
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
DATA = BENCH / "data"
RESULTS = BENCH / "results.md"
sys.path.insert(0, str(REPO / "scripts"))

# Per-class counts (10 classes). main: the 400 px set `graft train` runs on (its train split also
# feeds forward_only, end_to_end and naive); rss: the 64 px set of the memory part.
PLANS: dict[str, dict[str, Any]] = {
    "full": {"main": (1500, 100, 100), "forward": 200, "end_to_end": 3000, "e2e_reps": 3,
             "torch_e2e": 300, "naive": 200,
             "rss": (500, 2500)},
    "quick": {"main": (6, 2, 2), "forward": 32, "end_to_end": 60, "e2e_reps": 1, "naive": 20,
              "torch_e2e": 0,
              "rss": (10, 50)},
}
PHOTO_PX = 400  # realistic photo size for the speed figures
RSS_PX = 64  # images and network input of the memory part (flatness does not depend on size)
TARGETS = {"end_to_end_vs_forward_only": 0.9, "end_to_end_vs_naive": 8.0,
           "first_vs_cached_rerun": 20.0, "rss_big_vs_small": 1.2,
           "frozen_vs_keras": 2.0, "finetune_vs_keras": 1.5, "frozen_train_vs_forward_only": 0.6,
           "predict_vs_end_to_end": 0.8}
BF16_DELTA_MAX = 0.01  # |bf16 - fp32| best validation accuracy of the same fine-tuning run


# ---------------------------------------------------------------------------------- data
def ensure_images(name: str, counts: tuple[int, ...], px: int) -> Path:
    """Export Fashion-MNIST JPEGs once (a stamp file records what is there)."""
    from export_fashion_mnist import SOURCE, export

    if not SOURCE.exists():
        raise SystemExit(f"{SOURCE} not found: apt-get install dataset-fashion-mnist")
    root = DATA / name
    stamp = root / ".stamp.json"
    want = {"counts": list(counts), "px": px, "format": "jpg"}
    if stamp.exists() and json.loads(stamp.read_text()) == want:
        return root
    shutil.rmtree(root, ignore_errors=True)
    train, val, test = (list(counts) + [0, 0])[:3]
    t0 = time.perf_counter()
    n = export(root, {"train": ("train", 0, train), "val": ("train", train, val),
                      "test": ("t10k", 0, test)}, px, "jpg")
    stamp.write_text(json.dumps(want))
    log(f"exported {n} {px}px JPEGs to {root} in {time.perf_counter() - t0:.1f}s")
    return root


def samples_of(folder: Path, per_class: int | None = None) -> list[Any]:
    """The first ``per_class`` images of each class folder (sorted), as graftwork Samples."""
    from graftwork.data.discover import Sample

    out = []
    for label, cls in enumerate(sorted(p.name for p in folder.iterdir() if p.is_dir())):
        files = sorted((folder / cls).glob("*.jpg"))[:per_class]
        out += [Sample(str(f), label) for f in files]
    return out


def interleave(samples: list[Any], n: int) -> list[Any]:
    """``n`` samples taken round-robin over the classes (so every prefix is balanced)."""
    by: dict[int, list[Any]] = {}
    for s in samples:
        by.setdefault(s.label, []).append(s)
    out, i = [], 0
    while len(out) < n and any(i < len(v) for v in by.values()):
        out += [v[i] for v in by.values() if i < len(v)]
        i += 1
    return out[:n]


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------- figures
def forward_only(backbone: Any, pre: dict[str, Any], samples: list[Any], cache: Path,
                 quick: bool = False) -> tuple[dict[str, float], dict[str, Any], Any]:
    """images/s of each backbone config on pre-decoded, pre-resized uint8 NHWC tensors.

    Also returns ``again(name)``, which measures a config once more (keeping the best figure):
    end_to_end interleaves it with its own runs, so both see the same machine conditions.
    """
    import torch

    from graftwork import features as F
    from graftwork.data.images import load_image

    tf = F.FastEvalTransform(pre)
    x = torch.stack([tf(load_image(s.path, F.resize_size(pre))) for s in samples])
    norm = F.Normalize(pre)
    rates: dict[str, float] = {}
    configs: dict[str, Any] = {}
    reps = 1 if quick else 2

    fns: dict[str, tuple[Any, int]] = {}

    def timed(name: str, fn: Any, batch: int, config: dict[str, Any], loops: int = 1,
              passes: int = reps) -> None:
        fn(x[:batch])  # warm-up (allocations, kernel selection)
        best = 0.0
        for _ in range(passes):  # best of passes: the machine is shared, noise only slows down
            t0 = time.perf_counter()
            for _ in range(loops):
                for i in range(0, len(x), batch):
                    fn(x[i:i + batch])
            best = max(best, loops * len(x) / (time.perf_counter() - t0))
        rates[name] = round(max(best, rates.get(name, 0.0)), 2)
        configs[name], fns[name] = config, (fn, batch, loops)
        log(f"forward_only {name}: {best:.1f} img/s over {loops * len(x)} images")

    def again(name: str) -> float:
        fn, batch, loops = fns[name]
        with torch.inference_mode():
            timed(name, fn, batch, configs[name], loops, 1)
        return rates[name]

    backbone.eval()
    if not quick:
        backbone.to(memory_format=torch.contiguous_format)  # (outside inference mode: weights
        with torch.inference_mode():                        # stay normal tensors for export)
            timed("torch eager NCHW, batch 64",
                  lambda b: backbone(norm(b).contiguous()), 64, {"engine": "torch"})
    backbone.to(memory_format=torch.channels_last)
    with torch.inference_mode():
        if not quick:
            timed("torch eager channels_last, batch 64",
                  lambda b: backbone(norm(b).contiguous(memory_format=torch.channels_last)), 64,
                  {"engine": "torch"})
        chunk = F.TorchEngine().chunk
        timed(f"torch eager channels_last, batch {chunk} (graftwork's torch engine)",
              F.bind_backbone(backbone, pre, F.FeatureCache(cache, backbone, pre),
                              F.TorchEngine(), None), 64, {"engine": "torch"})
    if F.onnx_available():
        fc = F.FeatureCache(cache, backbone, pre)
        t0 = time.perf_counter()
        F.bind_backbone(backbone, pre, fc, F.OnnxEngine(), None)
        configs["_onnx_export_and_check_s"] = round(time.perf_counter() - t0, 2)
        threads = torch.get_num_threads()
        default = F.OnnxEngine().chunk
        variants = [(threads, 1)] if quick else [(1, 16), (threads, 16), (threads, 1)]
        for lanes, chunk in variants:
            name = (f"onnxruntime, {threads} threads in one run, batch {chunk}" if lanes == 1
                    else f"onnxruntime, {lanes} runs of 1 thread side by side, batch {chunk}"
                    + (" (graftwork's default)" if chunk == default else ""))
            # passes about as long as an end_to_end run: a short pass is noisier, and a
            # best-of over noisy passes would flatter forward_only
            engine = F.OnnxEngine(chunk=chunk, lanes=lanes)
            timed(name, F.bind_backbone(backbone, pre, fc, engine, None), 64,
                  {"engine": "onnx", "chunk": chunk, "lanes": lanes}, loops=1 if quick else 5)
    return rates, configs, again


def end_to_end(backbone: Any, pre: dict[str, Any], warm: list[Any], samples: list[Any],
               cache: Path, engine: str, reps: int = 2, between: Any = None) -> dict[str, Any]:
    """images/s of extract_features from files to cached features (cold cache, warm engine).

    The images are split into ``reps`` parts, each extracted into an empty cache; the best part
    counts (as for forward_only: on a shared machine noise only ever slows a run down).
    """
    from graftwork.features import extract_features

    kw = {"progress": False, "materialize": False, "engine": engine}
    rates, setup = [], 0.0
    part = len(samples) // reps
    for r in range(reps):
        shutil.rmtree(cache, ignore_errors=True)
        t0 = time.perf_counter()
        extract_features(backbone, warm, pre, cache, **kw)  # ONNX export + session: not timed
        setup = max(setup, time.perf_counter() - t0)
        chunk = samples[r * part:(r + 1) * part]
        res = extract_features(backbone, chunk, pre, cache, **kw)
        assert res.extracted == len(chunk), (res.extracted, len(chunk), res.skipped[:3])
        rates.append(len(chunk) / res.seconds)
        log(f"end_to_end ({res.engine}): {rates[-1]:.1f} img/s over {len(chunk)} images")
        if between is not None:
            between()
    return {"rate": round(max(rates), 2), "rates": [round(x, 2) for x in rates],
            "engine": res.engine, "setup_s": round(setup, 2)}


def naive(name: str, size: int, samples: list[Any]) -> float:
    """The classic Keras-tutorial loop (flow_from_directory + conv_base.predict, in torch):
    batch 20, no workers, decode + resize in the main thread, NCHW float, autograd on."""
    import numpy as np
    import torch
    from PIL import Image

    from graftwork.backbones.catalog import create_backbone

    model = create_backbone(name).eval()  # parameters require grad: autograd records the graph
    spec = model.spec
    mean = np.array(spec.mean, dtype=np.float32)
    std = np.array(spec.std, dtype=np.float32)
    out = np.zeros((len(samples), model.feature_dim), dtype=np.float32)

    def batches() -> Any:
        for i in range(0, len(samples), 20):
            arrs = []
            for s in samples[i:i + 20]:
                img = Image.open(s.path).convert("RGB").resize((size, size), Image.BILINEAR)
                arr = (np.asarray(img, dtype=np.float32) / 255.0 - mean) / std
                arrs.append(arr.transpose(2, 0, 1))
            yield i, torch.from_numpy(np.stack(arrs))

    model(next(batches())[1][:2])  # warm-up, as for the other figures
    t0 = time.perf_counter()
    for i, x in batches():
        out[i:i + len(x)] = model(x).detach().numpy()
    rate = len(samples) / (time.perf_counter() - t0)
    log(f"naive: {rate:.1f} img/s over {len(samples)} images")
    return rate


def graft_train(data: Path, cache: Path, out: Path, head: str) -> tuple[float, dict[str, Any]]:
    """Wall time of one cold ``graft train`` process, and the run's metrics.json."""
    exe = Path(sys.executable).with_name("graft")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-c",
                                           "from graftwork.cli import main; main()"]
    cmd += ["train", str(data), "--strategy", "extract", "--head", head, "--out", str(out),
            "--cache-dir", str(cache), "-q"]
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"graft train failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    summary = [ln for ln in proc.stdout.splitlines() if ln.startswith(("time", "test acc"))]
    log(f"graft train --head {head}: {wall:.1f}s wall ({'; '.join(summary)})")
    return wall, json.loads((out / "metrics.json").read_text())


def cache_child(args: argparse.Namespace) -> None:
    """(subprocess) the steps of a cached ``graft train`` re-run before training, timed."""
    t0 = time.perf_counter()
    import torch  # noqa: F401

    import graftwork.estimator.classifier  # noqa: F401  (what `graft train` imports)
    import graftwork.cli  # noqa: F401
    from graftwork.features.prepared import load_prepared
    from graftwork.data.discover import discover
    from graftwork.features import extract_features

    t1 = time.perf_counter()
    import torch._dynamo  # noqa: F401  (the first torch.optim optimizer imports it)

    t2 = time.perf_counter()
    backbone = load_prepared(args.rss_cache, args.backbone, None)
    assert backbone is not None, "no prepared backbone record"
    splits = discover(args.cache_child)
    samples = splits.train + splits.val + splits.test
    res = extract_features(backbone, samples, backbone.spec.preprocessing(), args.rss_cache,
                           progress=False)
    t3 = time.perf_counter()
    assert res.extracted == 0, res.extracted
    print(json.dumps({"imports_s": t1 - t0, "dynamo_s": t2 - t1, "features_s": t3 - t2,
                      "n": len(samples), "timm": "timm" in sys.modules,
                      "torchvision": "torchvision" in sys.modules}))


def cached_parts(backbone: str, data: Path, cache: Path) -> dict[str, Any]:
    """Where a cached re-run's time goes: imports, features from the cache."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--cache-child", str(data),
           "--rss-cache", str(cache), "--backbone", backbone]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"cache child failed:\n{proc.stderr[-3000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["process_s"] = time.perf_counter() - t0
    log(f"cached features of all {out['n']} images in a fresh process: {out['features_s']:.2f}s"
        f" (imports {out['imports_s']:.1f}s + torch._dynamo {out['dynamo_s']:.1f}s; timm "
        f"imported: {out['timm']}, torchvision: {out['torchvision']})")
    return out


def rss_child(args: argparse.Namespace) -> None:
    """(subprocess) extract features of the first N images per class; print peak memory."""
    import resource

    import torch

    from graftwork.backbones.catalog import create_backbone
    from graftwork.features import extract_features

    torch.set_num_threads(os.cpu_count() or 1)
    backbone = create_backbone(args.backbone)
    pre = backbone.spec.preprocessing(RSS_PX)
    samples = samples_of(Path(args.rss_data) / "train", args.rss_child)
    before = _vm("VmRSS")
    t0 = time.perf_counter()
    res = extract_features(backbone, samples, pre, args.rss_cache, progress=False,
                           materialize=False, engine=args.engine)
    seconds = time.perf_counter() - t0
    workers_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    print(json.dumps({"n": len(samples), "extracted": res.extracted, "seconds": seconds,
                      "engine": res.engine, "rss_before_mb": before / 1024,
                      "peak_rss_mb": _vm("VmHWM") / 1024, "worker_peak_mb": workers_kb / 1024}))


def _vm(field: str) -> int:
    """A /proc/self/status memory figure in kB."""
    text = Path("/proc/self/status").read_text()
    return int(re.search(rf"^{field}:\s+(\d+)", text, re.M).group(1))  # type: ignore[union-attr]


def peak_rss(backbone: str, data: Path, per_class: int, cache: Path,
             engine: str) -> dict[str, Any]:
    shutil.rmtree(cache, ignore_errors=True)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--rss-child", str(per_class),
           "--rss-data", str(data), "--rss-cache", str(cache), "--backbone", backbone,
           "--engine", engine]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"rss child failed:\n{proc.stderr[-3000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    log(f"peak_rss at {out['n']} images: {out['peak_rss_mb']:.0f} MB "
        f"(before extraction {out['rss_before_mb']:.0f} MB, worker {out['worker_peak_mb']:.0f} MB,"
        f" {out['n'] / out['seconds']:.0f} img/s at {RSS_PX}px, {out['engine']})")
    return out


# ---------------------------------------------------------------------------------- report
def training_and_prediction(quick: bool, forward_only: float, end_to_end: float,
                            e2e_samples: list[Any], warm: list[Any], run_dir: Path
                            ) -> dict[str, Any]:
    """The training part (bench/train.py: frozen and fine-tuning epochs of efficientnet_lite0
    and mobilenet_v2 in fp32 and bf16, and the Keras/TensorFlow recipe on the same images) and
    prediction speed (``predict_proba`` of a saved run on the end_to_end images), in this run."""
    import train as T

    from graftwork import ImageClassifier

    tr = T.run(T.ensure_data(quick), list(T.BACKBONES), quick, with_keras=not quick)
    lite = tr["detail"].get("efficientnet_lite0@fp32")
    head = tr["headline_backbone"].split("@")[0]
    fp32, bf16 = tr["detail"][f"{head}@fp32"], tr["detail"][f"{head}@bf16"]
    clf = ImageClassifier.load(run_dir).set_params(engine="onnx")
    clf.predict_proba([s.path for s in warm])  # ONNX export of the whole model + session
    t0 = time.perf_counter()
    proba = clf.predict_proba([s.path for s in e2e_samples])
    predict = len(proba) / (time.perf_counter() - t0)
    log(f"predict: {predict:.1f} img/s over {len(proba)} images (end_to_end {end_to_end:.1f})")
    return {
        "frozen_train_img_s": tr["frozen_train_img_s"],
        "finetune_train_img_s": tr["finetune_train_img_s"],
        "frozen_train_vs_forward_only": (round(lite["frozen"]["train_img_s"] / forward_only, 3)
                                         if lite else None),
        "frozen_vs_keras": tr.get("frozen_vs_keras"),
        "finetune_vs_keras": tr.get("finetune_vs_keras"),
        "bf16_vs_fp32_finetune": round(bf16["finetune"]["train_img_s"]
                                       / fp32["finetune"]["train_img_s"], 3),
        "bf16_val_accuracy_delta": round(bf16["finetune"]["best_val_accuracy"]
                                         - fp32["finetune"]["best_val_accuracy"], 4),
        "predict_img_s": round(predict, 2),
        "predict_vs_end_to_end": round(predict / end_to_end, 3),
        "training_detail": tr,
    }


def machine() -> dict[str, str]:
    import importlib.metadata as md

    cpu = "unknown"
    try:
        cpu = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(),
                        re.M).group(1)  # type: ignore[union-attr]
    except (OSError, AttributeError):
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    import torch

    info = {"cpu": f"{cpu}, {os.cpu_count()} cores", "memory": f"{mem:.0f} GiB",
            "os": platform.platform(), "python": platform.python_version(),
            "torch_threads": str(torch.get_num_threads())}
    for pkg in ("graftwork", "torch", "torchvision", "timm", "onnxruntime", "onnx", "pillow",
                "numpy"):
        try:
            info[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            info[pkg] = "not installed"
    return info


def markdown(res: dict[str, Any]) -> str:
    r = res
    ok = lambda key: "yes" if r[key] >= TARGETS[key] else "**no**"  # noqa: E731
    rss_ok = "yes" if r["rss_big_vs_small"] <= TARGETS["rss_big_vs_small"] else "**no**"
    n_small, n_big = r["rss_images"]
    rows = [
        ("forward_only", f"{r['forward_only']:.1f} img/s", f"{r['forward_only_config']}", "", ""),
        ("end_to_end", f"{r['end_to_end']:.1f} img/s",
         f"best of {r['end_to_end_reps']} runs of {r['end_to_end_images']} JPEGs ({PHOTO_PX} px)"
         " to cached features, "
         f"{r['engine']}",
         "", ""),
        ("naive", f"{r['naive']:.1f} img/s", f"{r['naive_images']} images", "", ""),
        *([("end_to_end, torch engine", f"{r['end_to_end_torch']:.1f} img/s",
            f"without onnxruntime: {r['end_to_end_vs_forward_only_torch']:.2f} × its "
            f"forward_only ({r['forward_only_torch']:.1f})", "", "")]
          if r["end_to_end_torch"] else []),
        ("first run", f"{r['first_run_s']:.1f} s",
         f"`graft train` (extract, mlp head), {r['train_images']} images, cold cache", "", ""),
        ("cached_rerun", f"{r['cached_rerun_s']:.1f} s", "same data and cache, `--head linear`",
         "", ""),
        ("  of which: startup + imports", f"{r['rerun_imports_s']:.1f} s",
         "python, torch, graftwork (no timm, no torchvision: no network is built)", "", ""),
        ("  of which: torch._dynamo", f"{r['rerun_dynamo_s']:.1f} s",
         "imported by the first `torch.optim` optimizer", "", ""),
        ("  of which: features", f"{r['features_cached_s']:.2f} s",
         f"all {r['train_images']} features from the cache (hash files, verify shards, load)",
         "", ""),
        ("  of which: head training", f"{r['rerun_head_training_s']:.1f} s",
         "linear head on the cached features (first run's mlp head: "
         f"{r['first_head_training_s']:.1f} s)", "", ""),
        ("  of which: the rest", f"{r['rerun_other_s']:.1f} s",
         "evaluation, report, save, Python start and exit", "", ""),
        ("features cold vs cached", f"{r['features_cold_vs_cached']:.0f}×",
         f"{r['features_cold_s']:.0f} s to extract (at end_to_end) vs "
         f"{r['features_cached_s']:.2f} s cached", "", ""),
        ("peak_rss small", f"{r['peak_rss_small_mb']:.0f} MB", f"{n_small} images, {RSS_PX} px",
         "", ""),
        ("peak_rss big", f"{r['peak_rss_big_mb']:.0f} MB", f"{n_big} images, {RSS_PX} px", "", ""),
        ("**end_to_end / forward_only**", f"**{r['end_to_end_vs_forward_only']:.2f}**", "",
         "≥ 0.9", ok("end_to_end_vs_forward_only")),
        ("**end_to_end / naive**", f"**{r['end_to_end_vs_naive']:.1f}×**", "", "≥ 8",
         ok("end_to_end_vs_naive")),
        ("**first / cached re-run**", f"**{r['first_vs_cached_rerun']:.1f}×**", "", "≥ 20",
         ok("first_vs_cached_rerun")),
        ("**peak RSS big / small**", f"**{r['rss_big_vs_small']:.3f}**", "", "≤ 1.2", rss_ok),
        ("frozen epoch", f"{r['frozen_train_img_s']:.1f} img/s", "train images / phase time, "
         f"{r['training_detail']['headline_backbone']}, {r['training_detail']['train_images']} "
         "400-px JPEGs, batch 32", "", ""),
        ("fine-tuning epoch", f"{r['finetune_train_img_s']:.1f} img/s", "the same, finetune",
         "", ""),
        *[(f"Keras/TF {k}", f"{r['training_detail']['keras'][k]:.1f} img/s",
           "MobileNetV2, the seed's recipe, same images", "", "")
          for k in ("frozen_train_img_s", "finetune_img_s") if "keras" in r["training_detail"]],
        ("predict", f"{r['predict_img_s']:.1f} img/s",
         "`predict_proba` of a saved run on the end_to_end images", "", ""),
        *[(f"**{key}**", f"**{r[key]:.2f}**" if r[key] is not None else "n/a", "",
           f"≥ {TARGETS[key]}", ("yes" if r[key] >= TARGETS[key] else "**no**")
           if r[key] is not None else "n/a")
          for key in ("frozen_train_vs_forward_only", "frozen_vs_keras", "finetune_vs_keras",
                      "predict_vs_end_to_end")],
        ("**bf16 / fp32 fine-tuning speed**", f"**{r['bf16_vs_fp32_finetune']:.2f}×**", "", "",
         ""),
        ("**bf16 − fp32 best val accuracy**", f"**{r['bf16_val_accuracy_delta']:+.4f}**",
         "the same fine-tuning run", f"≤ {BF16_DELTA_MAX} in absolute value",
         "yes" if abs(r["bf16_val_accuracy_delta"]) <= BF16_DELTA_MAX else "**no**"),
    ]
    lines = ["| figure | value | what | target | met |", "|---|---|---|---|---|"]
    lines += [f"| {' | '.join(row)} |" for row in rows]
    lines += ["", "forward_only configs (images/s, best pass; ONNX Runtime passes are ~1000 "
              "images, about as long as an end_to_end run, and are repeated between those):", "",
              "| config | images/s |", "|---|---|"]
    lines += [f"| {k} | {v:.1f} |" for k, v in r["forward_variants"].items()]
    return "\n".join(lines)


def write_results(res: dict[str, Any], table: str) -> None:
    info = res["machine"]
    block = [
        "<!-- bench:begin (generated by bench/extract.py; edit outside the markers) -->",
        f"Run: `{res['command']}` on {time.strftime('%Y-%m-%d %H:%M')}, "
        f"{res['wall_s'] / 60:.1f} min{' (QUICK: too small to judge)' if res['quick'] else ''}."
        f" Backbone `{res['backbone']}` at {res['image_size']} px.",
        "",
        "Machine: " + ", ".join(f"{k} {info[k]}" for k in ("cpu", "memory", "os")) + ".",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in info.items()
                                 if k not in ("cpu", "memory", "os")) + ".",
        "", table, "", "JSON line:", "", "```json", json.dumps(res["summary"]), "```",
        "<!-- bench:end -->",
    ]
    text = RESULTS.read_text() if RESULTS.exists() else "# Feature-extraction benchmark\n\n"
    begin, end = text.find("<!-- bench:begin"), text.find("<!-- bench:end -->")
    if begin >= 0 and end > begin:
        text = text[:begin] + "\n".join(block) + text[end + len("<!-- bench:end -->"):]
    else:
        text = text.rstrip() + "\n\n" + "\n".join(block) + "\n"
    RESULTS.write_text(text)


# ---------------------------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes, under a minute")
    ap.add_argument("--backbone", default="efficientnet_lite0")
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--no-write", action="store_true", help="do not touch bench/results.md")
    ap.add_argument("--rss-child", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--rss-data", help=argparse.SUPPRESS)
    ap.add_argument("--rss-cache", help=argparse.SUPPRESS)
    ap.add_argument("--cache-child", help=argparse.SUPPRESS)
    ap.add_argument("--engine", default="auto", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.rss_child:
        return rss_child(args)
    if args.cache_child:
        return cache_child(args)

    start = time.perf_counter()
    plan = PLANS["quick" if args.quick else "full"]
    tag = "quick" if args.quick else "full"
    main_data = ensure_images(f"fmnist-{PHOTO_PX}-{tag}", plan["main"], PHOTO_PX)
    rss_data = ensure_images(f"fmnist-{RSS_PX}-{tag}", (plan["rss"][1], 0, 0), RSS_PX)

    import torch

    from graftwork.backbones.catalog import create_backbone

    torch.set_num_threads(os.cpu_count() or 1)  # pinned: one compute thread per core
    backbone = create_backbone(args.backbone)
    pre = backbone.spec.preprocessing(args.image_size)
    train = samples_of(main_data / "train")
    val = samples_of(main_data / "val")

    fwd, configs, again = forward_only(backbone, pre, interleave(train, plan["forward"]),
                                       DATA / "cache-forward", args.quick)
    best = max(fwd, key=fwd.__getitem__)
    engine = configs[best]["engine"]
    e2e_engine: Any = engine
    if engine == "onnx":  # end_to_end runs the best forward config, passed as an engine object
        from graftwork.features import OnnxEngine

        e2e_engine = OnnxEngine(chunk=configs[best]["chunk"], lanes=configs[best]["lanes"])
    e2e_samples = interleave(train, plan["end_to_end"])
    e2e = end_to_end(backbone, pre, interleave(val, 64), e2e_samples, DATA / "cache-e2e",
                     e2e_engine,
                     reps=plan["e2e_reps"], between=lambda: again(best))
    torch_cl = next(k for k in fwd if k.endswith("(graftwork's torch engine)"))
    e2e_torch = {"rate": None}
    if plan["torch_e2e"]:  # the same pipeline without onnxruntime, for comparison
        e2e_torch = end_to_end(backbone, pre, samples_of(main_data / "test", 1),
                               interleave(val, plan["torch_e2e"]),
                               DATA / "cache-e2e-torch", "torch", reps=1,
                               between=lambda: again(torch_cl))
    naive_rate = naive(args.backbone, args.image_size, interleave(train, plan["naive"]))
    del backbone

    cache = DATA / "cache-train"
    shutil.rmtree(cache, ignore_errors=True)
    first, first_metrics = graft_train(main_data, cache, DATA / "run-first", "mlp")
    rerun, rerun_metrics = graft_train(main_data, cache, DATA / "run-rerun", "linear")
    head_s = [sum(p["wall_time_s"] for p in m["phases"]) for m in (first_metrics, rerun_metrics)]
    parts = cached_parts(args.backbone, main_data, cache)

    small = peak_rss(args.backbone, rss_data, plan["rss"][0], DATA / "cache-rss-small", engine)
    big = peak_rss(args.backbone, rss_data, plan["rss"][1], DATA / "cache-rss-big", engine)

    summary = {
        "backbone": args.backbone, "image_size": args.image_size, "quick": args.quick,
        "forward_only": fwd[best], "end_to_end": e2e["rate"], "naive": round(naive_rate, 2),
        "first_run_s": round(first, 2), "cached_rerun_s": round(rerun, 2),
        "peak_rss_small_mb": round(small["peak_rss_mb"], 1),
        "peak_rss_big_mb": round(big["peak_rss_mb"], 1),
        "end_to_end_vs_forward_only": round(e2e["rate"] / fwd[best], 3),
        "end_to_end_vs_naive": round(e2e["rate"] / naive_rate, 2),
        "first_vs_cached_rerun": round(first / rerun, 2),
        "rss_big_vs_small": round(big["peak_rss_mb"] / small["peak_rss_mb"], 3),
        "end_to_end_torch": e2e_torch["rate"], "forward_only_torch": fwd[torch_cl],
        "end_to_end_vs_forward_only_torch": (round(e2e_torch["rate"] / fwd[torch_cl], 3)
                                             if e2e_torch["rate"] else None),
        "features_cold_s": round(parts["n"] / e2e["rate"], 1),
        "features_cached_s": round(parts["features_s"], 2),
        "features_cold_vs_cached": round(parts["n"] / e2e["rate"] / parts["features_s"], 1),
        "rerun_imports_s": round(parts["imports_s"], 2),
        "rerun_dynamo_s": round(parts["dynamo_s"], 2),
        "rerun_head_training_s": round(head_s[1], 2),
        "rerun_other_s": round(rerun - parts["imports_s"] - parts["dynamo_s"]
                               - parts["features_s"] - head_s[1], 2),
        "first_head_training_s": round(head_s[0], 2),
        "forward_only_config": best, "engine": e2e["engine"],
        "threads": torch.get_num_threads(), "cores": os.cpu_count(),
    }
    extra = training_and_prediction(args.quick, fwd[best], e2e["rate"], e2e_samples,
                                    interleave(val, 64), DATA / "run-first")
    summary.update({k: v for k, v in extra.items() if k != "training_detail"})
    res = {**summary, "summary": summary, "forward_variants": fwd,
           "training_detail": extra["training_detail"],
           "onnx_export_and_check_s": configs.get("_onnx_export_and_check_s"),
           "end_to_end_images": len(e2e_samples) // plan["e2e_reps"],
           "end_to_end_reps": plan["e2e_reps"], "naive_images": plan["naive"],
           "train_images": sum(plan["main"]) * 10, "rss_images": (small["n"], big["n"]),
           "rss_detail": {"small": small, "big": big}, "machine": machine(),
           "command": "python bench/extract.py" + (" --quick" if args.quick else ""),
           "wall_s": time.perf_counter() - start}
    table = markdown(res)
    print(json.dumps(summary))
    print(table)
    if not (args.no_write or args.quick):  # quick figures mean nothing: keep the recorded run
        write_results(res, table)
        log(f"wrote {RESULTS} ({res['wall_s'] / 60:.1f} min)")


if __name__ == "__main__":
    main()
