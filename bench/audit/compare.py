"""The planted-fault table: ``graftwork.audit`` beside cleanlab's Datalab, CleanVision and
fastdup, all measured in one run (issue 31), from a fresh clone:

    python bench/audit/compare.py [--seeds 0] [--out bench/audit/compare.md]   (make audit-bench)

1. creates (or reuses) one venv per tool under bench/data/audit-venvs/ (pip, PyPI; pins below):
   ``gen`` for the generator, one per peer -- never graftwork dependencies;
2. writes both planted-fault sets of make_faults.py per seed under bench/data/audit-faults/;
3. runs the product (cold: empty cache; then cached) in this process and each peer in its venv
   (peers.py), Datalab on the product's features and out-of-fold probabilities;
4. scores every row the same way (score.py) and writes one Markdown table per dataset
   (``--out``) and the rows, versions, machine and load average as JSON beside it.

A peer that fails to install or run gets a row saying so. Needs Fashion-MNIST from Debian
(``apt-get install dataset-fashion-mnist``; ``make audit-bench`` installs it).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO / "bench"))
from _venv import VenvError, ensure_venv  # noqa: E402
from peers import FASTDUP_THRESHOLD, FASTDUP_TOP  # noqa: E402
from score import markdown, product, score  # noqa: E402

log = logging.getLogger("audit-bench")

DATA = REPO / "bench" / "data"
#: venv name -> (pip pins, modules that must import); what installed here on Python 3.11
VENVS: dict[str, tuple[tuple[str, ...], str]] = {
    "gen": (("numpy==2.4.6", "pillow==13.0.0", "scikit-image==0.26.0"), "numpy, PIL, skimage"),
    "datalab": (("cleanlab[datalab]==2.9.0",), "cleanlab, datasets"),
    "cleanvision": (("cleanvision==0.3.7",), "cleanvision"),
    # its own pins (numpy 1.26, pillow 10) break Datalab in a shared venv
    "fastdup": (("fastdup==2.54",), "fastdup"),
}
PEERS = ("datalab", "cleanvision", "fastdup")
#: packages whose installed versions the JSON records, per venv
RECORD = ("numpy", "pillow", "scikit-image", "cleanlab", "datasets", "scikit-learn", "pandas",
          "cleanvision", "fastdup", "opencv-python-headless")
PEER_TIMEOUT = 1800  # seconds; a peer past it gets an error row


def _git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True,
                          text=True).stdout.strip()


def machine() -> dict[str, Any]:
    """What the numbers were measured on (and the commit, marked when files were modified)."""
    info = Path("/proc/cpuinfo")
    models = [ln.split(":", 1)[1].strip() for ln in
              (info.read_text().splitlines() if info.exists() else []) if ln.startswith("model name")]
    modified = _git("status", "--porcelain", "--untracked-files=no")
    return {"platform": platform.platform(), "cpu": models[0] if models else platform.processor(),
            "cores": os.cpu_count(), "python": platform.python_version(),
            "graftwork_commit": _git("rev-parse", "--short", "HEAD") + (" (modified)" if modified
                                                                         else "")}


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def versions(py: Path) -> dict[str, str]:
    """Installed versions of :data:`RECORD` in the venv of ``py``."""
    code = ("import json, importlib.metadata as m\nout = {}\n"
            f"for n in {RECORD!r}:\n    try: out[n] = m.version(n)\n"
            "    except m.PackageNotFoundError: pass\nprint(json.dumps(out))")
    proc = subprocess.run([str(py), "-c", code], capture_output=True, text=True)
    return json.loads(proc.stdout) if proc.returncode == 0 else {}


def make_venvs(root: Path, names: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """name -> {python, pins, versions, install_seconds} or {error}."""
    out: dict[str, dict[str, Any]] = {}
    for name in names:
        pins, imports = VENVS[name]
        t0 = time.perf_counter()
        try:
            py = ensure_venv(root / name, pins, imports,
                             "check that PyPI is reachable and python3-venv is installed")
        except VenvError as exc:
            log.error("venv %s: %s", name, exc)
            out[name] = {"pins": list(pins), "error": str(exc)[-1500:]}
            continue
        out[name] = {"python": str(py), "pins": list(pins), "versions": versions(py),
                     "install_seconds": round(time.perf_counter() - t0, 1)}
    return out


def generate(py: Path, out: Path, seeds: list[int], which: list[str]) -> list[Path]:
    """The planted-fault folders (kept when already written)."""
    subprocess.run([str(py), str(HERE / "make_faults.py"), str(out), "--which", *which,
                    "--seed", *map(str, seeds)], check=True)
    return [out / f"{name}-s{seed}" for seed in seeds for name in which]


def run_peer(peer: str, env: dict[str, Any], root: Path, work: Path) -> dict[str, Any]:
    """One peer's scored row, or a row with its error."""
    row: dict[str, Any] = {"tool": peer, "dataset": root.name}
    if "error" in env:
        return {**row, "error": "install failed: " + env["error"].splitlines()[0]}
    work.mkdir(parents=True, exist_ok=True)
    cmd = [env["python"], str(HERE / "peers.py"), peer, str(root), "--work", str(work / peer)]
    if peer == "datalab":
        cmd += ["--inputs", str(work / "inputs.npz")]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=PEER_TIMEOUT,
                              env={**os.environ, "SENTRY_OPT_OUT": "1"})
    except subprocess.TimeoutExpired:
        return {**row, "error": f"timed out after {PEER_TIMEOUT} s"}
    wall = round(time.perf_counter() - t0, 1)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        log.error("%s on %s failed (exit %d): %s", peer, root.name, proc.returncode,
                  proc.stderr[-3000:])
        return {**row, "error": f"exit {proc.returncode}: {tail[:300]}", "seconds_process": wall}
    got = json.loads(lines[-1])
    return {"tool": got["tool"], **score(root, got["found"]), "seconds": got["seconds"],
            "seconds_process": wall}


def report(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    """The Markdown page: one table per dataset, then what was measured on."""
    out = ["# `graft audit` against its peers on planted faults", "",
           "Written by `bench/audit/compare.py` (`make audit-bench`). Each row: recall / "
           "precision of the returned label-issue list against the planted flips; planted "
           "exact copies (and those with other bytes) and near copies found in one group with "
           "their source, the number of groups, the size of the largest and how many planted "
           "copies (exact + near) were found in it (a copy inside one huge group with its "
           "source counts as found: read these together); planted "
           "outliers in the returned list and its length. \"-\": the tool has no such "
           "check. `seconds_cold`: graftwork with an empty feature cache (extraction "
           "included); `seconds`: graftwork cached, or the peer's own call (Datalab's excludes "
           "the features and probabilities it is given; `seconds_process` in the JSON adds the "
           "peer's imports).", "",
           "Inputs: Datalab (label, outlier and near-duplicate checks, defaults) gets "
           "graftwork's lite0 features and its out-of-fold probabilities; CleanVision (exact "
           "and near duplicates, defaults) and fastdup (its own model, components at "
           f"similarity {FASTDUP_THRESHOLD}, its {FASTDUP_TOP} top-ranked outliers) read the "
           "folder themselves.", "",
           f"Machine: {meta['machine']['cpu']}, {meta['machine']['cores']} cores, "
           f"{meta['machine']['platform']}. **Load average (1, 5, 15 min) at start "
           f"{meta['load_start']}, before the first tool {meta.get('load_before_runs')}, at end "
           f"{meta['load_end']}**: other jobs ran beside this one, so the seconds are upper "
           "bounds.", ""]
    for ds in dict.fromkeys(r["dataset"] for r in rows):
        mine = [r for r in rows if r["dataset"] == ds]
        out += [f"## {ds} ({mine[0].get('flips', '?')} flips)", "", markdown(mine), ""]
        out += [f"- {r['tool']}: **failed**: {r['error']}" for r in mine if "error" in r]
        out += [""] if any("error" in r for r in mine) else []
    out += ["## Versions", ""]
    out += [f"- {name}: " + (", ".join(f"{k} {v}" for k, v in env.get("versions", {}).items())
                             or "not installed: " + env.get("error", "?").splitlines()[0])
            for name, env in meta["venvs"].items()]
    out += [f"- graftwork {meta['graftwork']} (commit {meta['machine']['graftwork_commit']})", ""]
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--which", nargs="+", default=["fmnist-faults", "mnist-faults"])
    ap.add_argument("--peers", nargs="*", default=list(PEERS), choices=PEERS)
    ap.add_argument("--data", type=Path, default=DATA, help="where venvs, sets and work go")
    ap.add_argument("--out", type=Path, default=HERE / "compare.md")
    a = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="[audit-bench] %(message)s")
    import graftwork

    meta: dict[str, Any] = {"machine": machine(), "load_start": load(), "seeds": a.seeds,
                            "graftwork": graftwork.__version__}
    t0 = time.perf_counter()
    meta["venvs"] = make_venvs(a.data / "audit-venvs", ("gen", *a.peers))
    if "error" in meta["venvs"]["gen"]:
        raise SystemExit("the generator's venv could not be created: "
                         + meta["venvs"]["gen"]["error"])
    roots = generate(Path(meta["venvs"]["gen"]["python"]), a.data / "audit-faults", a.seeds,
                     a.which)
    meta["load_before_runs"] = load()  # after the installs and the generator
    rows = []
    for root in roots:
        work = a.data / "audit-peers" / root.name
        log.info("%s: graftwork (cold, then cached)", root.name)
        rows.append(product(root, work / "cache",
                            work / "inputs.npz" if "datalab" in a.peers else None))
        for peer in a.peers:
            log.info("%s: %s", root.name, peer)
            rows.append(run_peer(peer, meta["venvs"][peer], root, work))
        log.info("%s", json.dumps(rows[-1 - len(a.peers):]))
    meta.update(load_end=load(), seconds_total=round(time.perf_counter() - t0, 1))
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(report(rows, meta))
    a.out.with_suffix(".json").write_text(json.dumps({**meta, "rows": rows}, indent=1) + "\n")
    log.info("wrote %s and %s", a.out, a.out.with_suffix(".json"))


if __name__ == "__main__":
    main()
