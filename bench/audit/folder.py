"""``graftwork.audit`` on a ~17,000-image folder: seconds and peak RSS, cold and cached.

    python bench/audit/folder.py [--root bench/data/audit-fmnist17k] [--cache DIR] [--keep-cache]

The folder is Fashion-MNIST from Debian's ``dataset-fashion-mnist`` (28x28 grayscale PNGs, 10
classes; written once, then reused): ``train/`` the first 1,400 images of each class of the
official training file, ``test/`` the first 300 of each class of the official test file (17,000
images). Each audit runs in a subprocess of its own so that its peak RSS is its own: ``cold``
on an empty cache folder (features extracted, pixel facts decoded; the backbone comes from its
installed weights), then ``cached`` on the same folder (nothing extracted). Prints one JSON
line per run, with the load average before and after (other jobs on the machine make the
seconds upper bounds).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1]
REPO = BENCH.parent
sys.path.insert(0, str(REPO / "scripts"))

TRAIN, TEST = 1400, 300  # per class: 10 x (1,400 + 300) = 17,000 images
STAMP = "folder-stamp.json"


def build(root: Path) -> int:
    """Write the folder once (a stamp records it); the number of images."""
    from export_fashion_mnist import SOURCE, export

    stamp = root / STAMP
    want = {"train": TRAIN, "test": TEST, "source": str(SOURCE)}
    if stamp.exists() and json.loads(stamp.read_text()).get("counts") == want:
        return int(json.loads(stamp.read_text())["images"])
    if not SOURCE.exists():
        raise SystemExit(f"{SOURCE} not found: apt-get install -y dataset-fashion-mnist")
    shutil.rmtree(root, ignore_errors=True)
    n = export(root, {"train": ("train", 0, TRAIN), "test": ("t10k", 0, TEST)}, 0, "png")
    stamp.write_text(json.dumps({"counts": want, "images": n}))
    return n


def run_one(root: Path, cache: Path) -> dict:
    """One audit in this process: wall seconds, the audit's own seconds, peak RSS."""
    import graftwork

    t0 = time.perf_counter()
    result = graftwork.audit(root, cache_dir=cache)
    wall = time.perf_counter() - t0
    s = result.summary
    return {"seconds": round(wall, 1), "audit_seconds": s["seconds"],
            "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
            "images": s["images"], "label_issues": s["label_issues"],
            "duplicate_groups": s["duplicate_groups"], "leaks": s["leaks"],
            "outliers": s["outliers"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=BENCH / "data" / "audit-fmnist17k")
    ap.add_argument("--cache", type=Path, help="cache folder (default: a fresh temporary one)")
    ap.add_argument("--keep-cache", action="store_true", help="do not remove the cache folder")
    ap.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # the subprocess
    args = ap.parse_args()
    if args.one:
        print(json.dumps(run_one(args.root, args.cache)))
        return
    n = build(args.root)
    cache = args.cache or Path(tempfile.mkdtemp(prefix="audit-folder-cache-"))
    if cache.exists() and any(cache.iterdir()):
        raise SystemExit(f"{cache} is not empty: the cold run needs an empty cache folder")
    try:
        for run in ("cold", "cached"):
            load = os.getloadavg()
            out = subprocess.run([sys.executable, __file__, "--one", "--root", str(args.root),
                                  "--cache", str(cache)], check=True, capture_output=True,
                                 text=True).stdout
            row = {"run": run, "folder_images": n, "cpus": os.cpu_count(),
                   **json.loads(out.strip().splitlines()[-1]),
                   "load_before": [round(x, 1) for x in load],
                   "load_after": [round(x, 1) for x in os.getloadavg()]}
            print(json.dumps(row), flush=True)
    finally:
        if not (args.keep_cache or args.cache):
            shutil.rmtree(cache, ignore_errors=True)


if __name__ == "__main__":
    main()
