"""One peer on one planted-fault folder, run with the python of the peer's own venv (never a
graftwork dependency; compare.py creates the venvs and calls this):

    VENV/bin/python bench/audit/peers.py datalab     DATASET --inputs INPUTS.npz
    VENV/bin/python bench/audit/peers.py cleanvision DATASET
    SENTRY_OPT_OUT=1 VENV/bin/python bench/audit/peers.py fastdup DATASET --work DIR

Prints one JSON line: {peer, tool, seconds, found} where ``found`` is what score.py scores
(paths relative to DATASET; a check the peer lacks is null). Datalab gets the product's lite0
features and out-of-fold probabilities (INPUTS.npz, written by score.write_inputs), so it is
compared on its cuts, not on other inputs; CleanVision and fastdup read the folder themselves
(their own hashes / model).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np

#: fastdup ranks every image by its outlier distance; its top this many are "the list"
#: (twice the six planted outliers)
FASTDUP_TOP = 12
#: fastdup's similarity threshold for its connected components (near duplicates)
FASTDUP_THRESHOLD = 0.9


def run_datalab(root: Path, inputs: Path, work: Path) -> dict[str, Any]:
    from cleanlab import Datalab

    d = np.load(inputs)
    paths = [str(p) for p in d["paths"]]
    lab = Datalab(data={"label": d["labels"].tolist()}, label_name="label", verbosity=0)
    lab.find_issues(features=d["features"], pred_probs=d["probs"],
                    issue_types={"label": {}, "outlier": {}, "near_duplicate": {}})
    labels = lab.get_issues("label")
    odd = lab.get_issues("outlier")
    sets = lab.get_info("near_duplicate")["near_duplicate_sets"]
    seen: set[int] = set()
    groups = []
    for i, s in enumerate(sets):  # sets[i]: the near duplicates of i; merged into groups
        if len(s) and i not in seen:
            members = {i, *map(int, s)}
            seen |= members
            groups.append({"paths": sorted(paths[j] for j in members), "kind": "near"})
    return {"labels": [paths[i] for i in labels.index[labels["is_label_issue"]]],
            "groups": groups,
            "outliers": [paths[i] for i in odd.index[odd["is_outlier_issue"]]]}


def run_cleanvision(root: Path, inputs: Path, work: Path) -> dict[str, Any]:
    from cleanvision import Imagelab

    paths = _images(root)
    lab = Imagelab(filepaths=paths)
    lab.find_issues({"exact_duplicates": {}, "near_duplicates": {}})
    groups = [{"paths": sorted(_rel(root, p) for p in s), "kind": kind}
              for kind in ("exact", "near") for s in lab.info[f"{kind}_duplicates"]["sets"]]
    return {"labels": None, "groups": groups, "outliers": None}


def run_fastdup(root: Path, inputs: Path, work: Path) -> dict[str, Any]:
    import fastdup

    known = {_rel(root, p) for p in _images(root)}
    fd = fastdup.create(work_dir=str(work), input_dir=str(root))
    fd.run(overwrite=True, verbose=False, threshold=FASTDUP_THRESHOLD, num_threads=2)
    cc = fd.connected_components()
    cc = cc[0] if isinstance(cc, tuple) else cc
    col = "component_id" if "component_id" in cc.columns else "__component_id"
    fcol = "filename" if "filename" in cc.columns else cc.columns[0]
    groups = []
    for _, g in cc.groupby(col):
        members = sorted({_rel(root, p) for p in g[fcol]} & known)
        if len(members) > 1:
            groups.append({"paths": members, "kind": "near"})
    out = fd.outliers()
    ocol = "filename_outlier" if "filename_outlier" in out.columns else "filename"
    odd: list[str] = []
    for p in out.sort_values("distance")[ocol]:
        rel = _rel(root, p)
        if rel in known and rel not in odd:
            odd.append(rel)
    return {"labels": None, "groups": groups, "outliers": odd[:FASTDUP_TOP]}


def _images(root: Path) -> list[str]:
    """The image files of ``root`` (lab_data's listing; it needs pillow, which Datalab's venv
    lacks)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from lab_data import list_folder

    return list_folder(root)[0]


def _rel(root: Path, path: Any) -> str:
    """``path`` (absolute, relative to the working folder as fastdup gives them, or relative
    to ``root``) relative to ``root``, links resolved."""
    path = str(path)
    full = os.path.realpath(path if os.path.exists(path) else os.path.join(root, path))
    return os.path.relpath(full, os.path.realpath(root))


#: name -> (package, the row's name with its version, runner)
PEERS = {"datalab": ("cleanlab", "Datalab (cleanlab {})", run_datalab),
         "cleanvision": ("cleanvision", "CleanVision {}", run_cleanvision),
         "fastdup": ("fastdup", "fastdup {}", run_fastdup)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("peer", choices=sorted(PEERS))
    ap.add_argument("dataset", type=Path)
    ap.add_argument("--inputs", type=Path, help="datalab: the product's features (npz)")
    ap.add_argument("--work", type=Path, default=Path("."), help="fastdup: its work folder")
    a = ap.parse_args()
    package, tool, fn = PEERS[a.peer]
    t0 = time.perf_counter()
    found = fn(a.dataset.resolve(), a.inputs, a.work)
    print(json.dumps({"peer": a.peer, "tool": tool.format(version(package)),
                      "seconds": round(time.perf_counter() - t0, 1), "found": found}), flush=True)


if __name__ == "__main__":
    main()
