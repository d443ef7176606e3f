"""Wall time of `graft extract` on DATA: one process vs N concurrent shards (fresh caches).

    PYTHONPATH=src python bench/extract_shards.py data/fashion-mnist-small --processes 2 \
        [--threads 1] [--workers 1 --engine torch ...]   (the rest goes to `graft extract`)
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time


def run(data: str, n: int, extra: list[str], env: dict[str, str]) -> float:
    with tempfile.TemporaryDirectory() as cache:
        t0 = time.perf_counter()
        procs = [subprocess.Popen([sys.executable, "-m", "graftwork", "extract", data,
                                   "--cache-dir", cache, "--shard", f"{i}/{n}", "-q", *extra],
                                  env=env) for i in range(n)]
        codes = [p.wait() for p in procs]
        seconds = time.perf_counter() - t0
    if any(codes):
        raise SystemExit(f"a shard failed: {codes}")
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("data")
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0, help="OMP threads per process (0: default)")
    args, extra = ap.parse_known_args()  # the rest goes to `graft extract`
    args.extra = [e for e in extra if e != "--"]
    env = dict(os.environ)
    for n in (1, args.processes):
        if args.threads:
            env["OMP_NUM_THREADS"] = str(args.threads)
        print(f"{n} process(es): {run(args.data, n, args.extra, env):.1f}s", flush=True)


if __name__ == "__main__":
    main()
