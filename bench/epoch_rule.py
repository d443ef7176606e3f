"""Which epoch should a phase keep? Best-epoch rules compared on the same training curves
(issue 30: "the same rule wherever graftwork picks among candidates ... best epoch when the curve
is flat").

    python bench/epoch_rule.py            # after `make quality` built the data and the cache

The extraction head (40 epochs, no early stop) is trained per dataset and seed with graftwork's
defaults; every epoch's per-image correctness on validation and test is recorded (a measurement
harness: the extract phase's validation function is wrapped to record it; nothing else
changes), then each rule picks an epoch from the same curve, cut where patience 8 would stop:
A: highest validation accuracy, ties to the lower loss (graftwork's rule); B: a later epoch
replaces the best only when McNemar's one-sided test says it is better (the ladder's keep
rule); C: the earliest epoch not significantly worse than A's; D: the lowest validation loss.
Prints each rule's test accuracy (mean ± std over seeds 0-4); results: bench/epoch-rule.md.
"""
import json
import statistics
from pathlib import Path

import torch
import graftwork.phases.extract as ex
from graftwork import ImageClassifier
from graftwork.training.loop import evaluate as ev
from graftwork.training.metrics import paired

HERE = Path(__file__).resolve().parent
CACHE = str(HERE / "data" / "quality-cache")
SETS = {"fmnist-small": (str(HERE.parent / "data" / "fashion-mnist-small"), 64),
        "fmnist-400": (str(HERE / "data" / "quality" / "fmnist-400"), 160),
        "mnist-1000": (str(HERE / "data" / "quality" / "mnist-1000"), 64)}
LOG, TEST = [], {}

def wrapped(model, batches, runtime=None):
    batches = list(batches)
    out = ev(model, batches, runtime)
    model.eval()
    with torch.inference_mode():
        xv = torch.cat([b[0] for b in batches]); yv = torch.cat([b[1] for b in batches])
        vh = (model(xv).argmax(1) == yv).tolist()
        th = (model(TEST["x"]).argmax(1) == TEST["y"]).tolist() if TEST else []
    LOG.append((vh, th, out["loss"]))
    return out

ex.evaluate = wrapped

def stop_at(curve, patience=8):
    best, bad = None, 0
    for e, (vh, th, loss) in enumerate(curve):
        acc = sum(vh)
        if best is None or (acc, -loss) > best:
            best, bad = (acc, -loss), 0
        else:
            bad += 1
            if bad >= patience:
                return e + 1
    return len(curve)

def rules(curve):
    curve = curve[:stop_at(curve)]
    a = max(range(len(curve)), key=lambda e: (sum(curve[e][0]), -curve[e][2], -e))
    b = 0
    for e in range(1, len(curve)):
        if paired(curve[e][0], curve[b][0]).better:
            b = e
    c = min(e for e in range(len(curve)) if not paired(curve[a][0], curve[e][0]).better)
    d = min(range(len(curve)), key=lambda e: curve[e][2])
    return {k: sum(curve[e][1]) / len(curve[e][1]) for k, e in
            (("A max-acc", a), ("B paired climb", b), ("C earliest not worse", c), ("D min loss", d))} | {
            "epochs": {"A": a + 1, "B": b + 1, "C": c + 1, "D": d + 1}}

res = {}
for ds, (folder, size) in SETS.items():
    TEST.clear()
    clf = ImageClassifier(strategy="extract", image_size=size, cache_dir=CACHE, progress=False).fit(folder)
    x, y = clf.session_.features(clf.splits_.test, "test")
    TEST.update(x=x, y=y)
    for seed in range(5):
        LOG.clear()
        ImageClassifier(strategy="extract", image_size=size, cache_dir=CACHE, progress=False,
                        seed=seed, patience=40).fit(folder)
        r = rules(list(LOG))
        res.setdefault(ds, []).append(r)
        print(ds, seed, r, flush=True)
for ds, rows in res.items():
    print(ds, {k: f"{100*statistics.fmean(r[k] for r in rows):.2f}±{100*statistics.stdev(r[k] for r in rows):.2f}"
               for k in rows[0] if k != "epochs"})
(HERE / "data" / "epoch-rule.json").write_text(json.dumps(res))
