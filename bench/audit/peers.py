"""Peers on the planted-fault datasets, each from its own venv (never a graftwork dependency).

    /work/scratch/venv-datalab/bin/python     bench/audit/peers.py datalab     [DATASET ...]
    /work/scratch/venv-cleanvision/bin/python bench/audit/peers.py cleanvision [DATASET ...]
    SENTRY_OPT_OUT=1 /work/scratch/venv-fastdup/bin/python bench/audit/peers.py fastdup [DATASET ...]

datalab reads the features run_lab cached as /work/scratch/<dataset>.pkl (the same lite0
features) and the same out-of-fold probabilities (/work/scratch/<dataset>-P.npy, written by
checks.oof_probabilities), so it is compared on its cuts, not on other inputs. cleanvision and
fastdup read the image folder themselves (their own hashes / model). Rows are scored by
run_lab.score; a check a peer does not have reads as empty.
"""
from __future__ import annotations

import json
import os
import pickle
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lab_data import list_folder  # noqa: E402
from run_lab import DEFAULT, score  # noqa: E402


def groups_from_sets(sets, kind: str) -> list[dict]:
    return [{"members": sorted(int(i) for i in s), "kind": kind, "score": 0.0}
            for s in sets if len(s) > 1]


def run_datalab(root: Path) -> tuple[dict, dict]:
    from cleanlab import Datalab

    d = pickle.load(open(f"/work/scratch/{root.name}.pkl", "rb"))
    probs = np.load(f"/work/scratch/{root.name}-P.npy")
    lab = Datalab(data={"label": d["labels"].tolist()}, label_name="label", verbosity=0)
    lab.find_issues(features=d["features"], pred_probs=probs,
                    issue_types={"label": {}, "outlier": {}, "near_duplicate": {}})
    li = lab.get_issues("label")
    flagged = li.index[li["is_label_issue"]].tolist()
    oi = lab.get_issues("outlier")
    out = oi.index[oi["is_outlier_issue"]].tolist()
    sets = lab.get_info("near_duplicate")["near_duplicate_sets"]
    seen, groups = set(), []
    for i, s in enumerate(sets):  # sets[i]: the near duplicates of i; merge to groups
        if len(s) and i not in seen:
            members = {i, *map(int, s)}
            seen |= members
            groups.append(members)
    res = {"labels": [{"index": int(i)} for i in flagged],
           "dups": groups_from_sets(groups, "near"),
           "outliers": [{"index": int(i)} for i in out]}
    return d, res


def run_cleanvision(root: Path) -> tuple[dict, dict]:
    from cleanvision import Imagelab

    paths, *_ = list_folder(root)
    idx = {os.path.realpath(p): i for i, p in enumerate(paths)}
    lab = Imagelab(filepaths=paths)
    lab.find_issues({"exact_duplicates": {}, "near_duplicates": {}}, verbose=False) \
        if "verbose" in Imagelab.find_issues.__code__.co_varnames else \
        lab.find_issues({"exact_duplicates": {}, "near_duplicates": {}})
    groups = []
    for kind in ("exact", "near"):
        for s in lab.info[f"{kind}_duplicates"]["sets"]:
            groups.append({"members": sorted(idx[os.path.realpath(p)] for p in s),
                           "kind": kind, "score": 0.0})
    return {"paths": paths}, {"labels": [], "dups": groups, "outliers": []}


def run_fastdup(root: Path) -> tuple[dict, dict]:
    import fastdup

    paths, *_ = list_folder(root)
    idx = {os.path.realpath(p): i for i, p in enumerate(paths)}
    work = tempfile.mkdtemp(prefix="fastdup-", dir="/work/scratch")
    fd = fastdup.create(work_dir=work, input_dir=str(root))
    fd.run(overwrite=True, verbose=False, threshold=0.9, num_threads=2)
    cc = fd.connected_components()
    cc = cc[0] if isinstance(cc, tuple) else cc
    groups = []
    col = "component_id" if "component_id" in cc.columns else "__component_id"
    fcol = "filename" if "filename" in cc.columns else cc.columns[0]
    for _, g in cc.groupby(col):
        members = sorted({idx[os.path.realpath(str(p) if os.path.isabs(str(p)) else os.path.join(root, str(p)))]
                          for p in g[fcol]})
        if len(members) > 1:
            groups.append({"members": members, "kind": "near", "score": 0.0})
    out = fd.outliers()
    ocol = "filename_outlier" if "filename_outlier" in out.columns else "filename"
    odd = []
    for p in out.sort_values("distance")[ocol].tolist():
        p = os.path.realpath(str(p) if os.path.isabs(str(p)) else os.path.join(root, str(p)))
        if p in idx and idx[p] not in odd:
            odd.append(idx[p])
    return {"paths": paths}, {"labels": [], "dups": groups, "outliers": odd[:12]}


def main() -> None:
    peer = sys.argv[1]
    datasets = [Path(p) for p in (sys.argv[2:] or DEFAULT)]
    fn = {"datalab": run_datalab, "cleanvision": run_cleanvision, "fastdup": run_fastdup}[peer]
    for ds in datasets:
        t0 = time.perf_counter()
        try:
            d, res = fn(ds)
        except Exception as exc:  # report, go on
            print(json.dumps({"peer": peer, "dataset": ds.name, "error": repr(exc)[:500]}),
                  flush=True)
            continue
        res["outliers"] = [o if isinstance(o, dict) else {"index": o} for o in res["outliers"]]
        row = {"peer": peer, **score(ds, d, res), "seconds": round(time.perf_counter() - t0, 1)}
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
