"""Bounded load test of ``graft serve`` on a free 127.0.0.1 port (never any other address).

    python bench/serve_load.py RUN [--requests 200] [--concurrency 8]

Starts ``graft serve RUN`` as a subprocess on a free loopback port, waits for ``/health``,
sends ``requests`` POST /predict requests (one image each, raw bytes) from ``concurrency``
threads, stops the server, and prints one JSON line: requests/s, p50/p95/max latency,
failures, and the server's micro-batching figures (images per forward pass).
"""
from __future__ import annotations

import argparse
import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"  # the only address this script ever sends to
REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _image(run: Path) -> bytes:
    """One of the run's test images, else a generated 256 px PNG."""
    import csv

    try:
        with open(run / "predictions_test.csv", newline="", encoding="utf-8") as fh:
            for row in csv.DictReader(fh):
                p = Path(row["path"])
                if p.is_file():
                    return p.read_bytes()
    except (OSError, KeyError):
        pass
    import numpy as np
    from PIL import Image

    buf = io.BytesIO()
    arr = np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8)
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


def _get(url: str, timeout: float = 5.0) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return json.loads(resp.read())


def _start(run: Path, port: int, timeout: float = 180.0) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [
        str(REPO / "src"), os.environ.get("PYTHONPATH", "")]))}
    proc = subprocess.Popen([sys.executable, "-m", "graftwork.cli", "serve", str(run),
                             "--host", HOST, "--port", str(port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"graft serve exited: {proc.stderr.read().decode()[-2000:]}")
        try:
            _get(f"http://{HOST}:{port}/health", 2.0)
            return proc
        except (OSError, ValueError):
            time.sleep(0.2)
    proc.terminate()
    raise RuntimeError("graft serve did not answer /health in time")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


def run_load(run_dir: str | Path, requests: int = 200, concurrency: int = 8,
             timeout_s: float = 300.0) -> dict[str, Any]:
    """Start ``graft serve`` on a free loopback port, send ``requests`` images from
    ``concurrency`` threads (bounded by ``timeout_s`` overall), stop it, return the figures."""
    run = Path(run_dir)
    body = _image(run)
    port = _free_port()
    url = f"http://{HOST}:{port}/predict"
    proc = _start(run, port)
    latencies: list[float] = []
    failures: list[str] = []
    lock = threading.Lock()
    counter = iter(range(requests))
    deadline = time.monotonic() + timeout_s

    def worker() -> None:
        while time.monotonic() < deadline:
            with lock:
                if next(counter, None) is None:
                    return
            req = urllib.request.Request(url, data=body, method="POST",
                                         headers={"Content-Type": "image/png"})
            t0 = time.perf_counter()
            try:
                with urllib.request.urlopen(req, timeout=60) as resp:
                    ok = resp.status == 200 and json.loads(resp.read())["predictions"]
                err = "" if ok else "empty answer"
            except (OSError, ValueError, KeyError) as exc:
                err = f"{type(exc).__name__}: {exc}"
            dt = time.perf_counter() - t0
            with lock:
                (failures.append(err) if err else latencies.append(dt))

    try:
        _get(url.replace("/predict", "/health"))
        warm = urllib.request.Request(url, data=body, method="POST",
                                      headers={"Content-Type": "image/png"})
        urllib.request.urlopen(warm, timeout=60).read()  # first forward pass off the clock
        threads = [threading.Thread(target=worker) for _ in range(concurrency)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
        health = _get(url.replace("/predict", "/health"))
    finally:
        _stop(proc)
    model = health.get("model", {})
    done = len(latencies) + len(failures)
    return {
        "run": str(run), "backbone": model.get("backbone"), "requests": done,
        "concurrency": concurrency, "image_bytes": len(body),
        "requests_per_s": round(len(latencies) / wall, 1) if wall else None,
        "p50_ms": round(1000 * _pct(latencies, 0.5), 1),
        "p95_ms": round(1000 * _pct(latencies, 0.95), 1),
        "max_ms": round(1000 * max(latencies), 1) if latencies else None,
        "failures": len(failures) + (requests - done), "failure_examples": failures[:3],
        "forward_passes": model.get("batches"), "images_served": model.get("images"),
        "wall_s": round(wall, 2), "cpus": os.cpu_count(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--concurrency", type=int, default=8)
    args = ap.parse_args()
    print(json.dumps(run_load(args.run, args.requests, args.concurrency)))


if __name__ == "__main__":
    main()
