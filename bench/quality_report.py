"""Tables of the quality benchmark: per-seed fits -> rows -> markdown (bench/quality.py)."""
from __future__ import annotations

import math
import statistics
from typing import Any

from graftwork.training.metrics import mcnemar_p

BASELINE = "extract"
LADDER_SKIP = "skipped by the ladder"  # status of a rung the ladder did not run (Phase.skip)
PHASE_LABEL = {"extract": "ladder: extract rung", "frozen": "ladder: frozen rung",
               "finetune": "ladder: finetune rung (from the best rung so far)"}


def rung_label(config: str, phase: str) -> str:
    """The row of one rung of a ladder config."""
    return PHASE_LABEL[phase] if config == "ladder" else f"{config}: {phase} rung"


def rows_of(fits: list[dict[str, Any]], configs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Table rows of one dataset: row name -> {status, per-seed val/test/seconds}.

    A ``ladder`` fit gives four rows: its three rungs (best val accuracy of the phase, test
    accuracy right after the phase, the phase's training time) and its pick (final metrics).
    The rungs of the ``ladder`` config are ``PHASE_LABEL``'s rows (the Targets table's); a
    variant's (``ladder, precision=bf16``) are rows of their own, added only when it ran.
    """
    rows: dict[str, dict[str, Any]] = {}

    def add(name: str, seed: int, status: str, val: float | None = None,
            test: float | None = None, seconds: float | None = None,
            cpu: float | None = None) -> None:
        row = rows.setdefault(name, {"status": [], "seeds": {}})
        if status != "ok":
            row["status"].append(status)
            return
        row["seeds"][seed] = {"val": val, "test": test, "seconds": seconds, "cpu": cpu}

    for cfg in configs:
        for fit in (f for f in fits if f["config"] == cfg["name"]):
            seed, status, name = fit["seed"], fit["status"], cfg["name"]
            if cfg["strategy"] == "ladder":
                for phase in PHASE_LABEL if name == "ladder" or status == "ok" else ():
                    label = rung_label(name, phase)
                    ph = next((p for p in fit.get("phases", []) if p["phase"] == phase), None)
                    why = (fit.get("skipped_phases") or {}).get(phase)
                    if status == "ok" and ph is not None:
                        add(label, seed, "ok", ph["best_val_accuracy"], ph["test_accuracy"],
                            ph["wall_time_s"])
                    elif status == "ok" and why:
                        add(label, seed, f"{LADDER_SKIP}: {why}")
                    else:
                        add(label, seed, status)
                name = f"{name} (its pick)"
            add(name, seed, status, fit.get("val"), fit.get("test"), fit.get("seconds"),
                fit.get("cpu_s"))
    return rows


def _mean_std(xs: list[float], scale: float = 100.0, digits: int = 1) -> str:
    if not xs:
        return ""
    m = statistics.fmean(xs) * scale
    s = statistics.stdev(xs) * scale if len(xs) > 1 else 0.0
    return f"{m:.{digits}f} ± {s:.{digits}f}"


def paired(row: dict[str, Any], base: dict[str, Any] | None) -> dict[str, Any]:
    """Test-accuracy differences row - baseline over the seeds both have."""
    if base is None:
        return {"diffs": []}
    seeds = sorted(set(row["seeds"]) & set(base["seeds"]))
    diffs = [row["seeds"][s]["test"] - base["seeds"][s]["test"] for s in seeds
             if row["seeds"][s]["test"] is not None and base["seeds"][s]["test"] is not None]
    return {"diffs": diffs, "wins": sum(d > 1e-9 for d in diffs),
            "losses": sum(d < -1e-9 for d in diffs), "ties": sum(abs(d) <= 1e-9 for d in diffs)}


def _status_text(statuses: list[str]) -> str:
    first = statuses[0]
    return first if len(set(statuses)) == 1 else f"{first} (and {len(statuses) - 1} more)"


def dataset_table(rows: dict[str, dict[str, Any]]) -> list[str]:
    """Markdown lines: config | val | test | Δ test vs extract | wins/losses | seconds."""
    out = ["| config | val acc % | test acc % | Δ test vs extract (pp, paired) "
           "| wins/losses/ties vs extract | seconds per fit | CPU s per fit |",
           "|---|---|---|---|---|---|---|"]
    base = rows.get(BASELINE)
    for name, row in rows.items():
        per = list(row["seeds"].values())
        if not per:
            out.append(f"| {name} | {_status_text(row['status'])} | | | | | |")
            continue
        vals = [p["val"] for p in per if p["val"] is not None and not math.isnan(p["val"])]
        tests = [p["test"] for p in per if p["test"] is not None]
        secs = [p["seconds"] for p in per if p["seconds"] is not None]
        cpus = [p["cpu"] for p in per if p["cpu"] is not None]
        cmp = paired(row, base)
        if name == BASELINE:
            delta, wl = "(baseline)", ""
        elif cmp["diffs"]:
            delta = _mean_std(cmp["diffs"], 100, 1)
            wl = f"{cmp['wins']}/{cmp['losses']}/{cmp['ties']}"
            delta = ("+" if not delta.startswith("-") else "") + delta
        else:
            delta, wl = "", ""
        n = f" (n={len(per)})" if len(per) != len(base["seeds"] if base else per) else ""
        errs = f"; {len(row['status'])} not ok: {row['status'][0]}" if row["status"] else ""
        out.append(f"| {name}{n}{errs} | {_mean_std(vals)} | {_mean_std(tests)} | {delta} | {wl} "
                   f"| {_mean_std(secs, 1.0, 1)} | {_mean_std(cpus, 1.0, 1)} |")
    return out


def summary_table(all_rows: dict[str, dict[str, dict[str, Any]]]) -> list[str]:
    """Rows across datasets: test mean (Δ vs extract) per dataset, mean Δ, wins/losses."""
    datasets = list(all_rows)
    names: list[str] = []
    for rows in all_rows.values():
        names += [n for n in rows if n not in names]
    head = "| config | " + " | ".join(datasets) + " | mean Δ (pp) | wins/losses/ties |"
    out = [head, "|---|" + "---|" * (len(datasets) + 2)]
    for name in names:
        cells, deltas, w, l, t = [], [], 0, 0, 0
        for ds in datasets:
            row = all_rows[ds].get(name)
            if row is None or not row["seeds"]:
                cells.append(row["status"][0].split(" (")[0].split(":")[0]
                             if row and row["status"] else "")
                continue
            test = _mean_test(row)
            cmp = paired(row, all_rows[ds].get(BASELINE))
            if name != BASELINE and cmp["diffs"]:
                d = statistics.fmean(cmp["diffs"]) * 100
                deltas.append(d)
                w, l, t = w + cmp["wins"], l + cmp["losses"], t + cmp["ties"]
                cells.append(f"{test:.1f} ({d:+.1f})")
            else:
                cells.append(f"{test:.1f}")
        md = f"{statistics.fmean(deltas):+.1f}" if deltas else ("(baseline)" if name == BASELINE
                                                               else "")
        out.append(f"| {name} | " + " | ".join(cells) + f" | {md} | "
                   + (f"{w}/{l}/{t}" if deltas else "") + " |")
    return out


def _mean_test(row: dict[str, Any] | None) -> float | None:
    tests = [p["test"] for p in (row or {}).get("seeds", {}).values() if p["test"] is not None]
    return statistics.fmean(tests) * 100 if tests else None


def _skipped_by_ladder(row: dict[str, Any] | None) -> bool:
    statuses = (row or {}).get("status", [])
    return bool(statuses) and all(st.startswith(LADDER_SKIP) for st in statuses)


def targets_table(all_rows: dict[str, dict[str, dict[str, Any]]],
                  fmnist_goal: tuple[str, float] = ("fmnist-2000", 88.0)) -> list[str]:
    """The issue's targets, checked on the ladder's rungs (mean test accuracy over seeds):
    frozen ≥ extract, finetune ≥ frozen, best rung ≥ extract + 2 points where extract is below
    97%, and the Fashion-MNIST-2000 goal."""
    out = ["| dataset | extract rung | frozen rung | finetune rung | frozen ≥ extract | "
           "finetune ≥ frozen | best rung − extract (≥ +2 where extract < 97%) |",
           "|---|---|---|---|---|---|---|"]
    goal_line = ""
    for ds, rows in all_rows.items():
        rung = [_mean_test(rows.get(PHASE_LABEL[p])) for p in ("extract", "frozen", "finetune")]
        ex, fr, ft = rung
        frozen_skipped = fr is None and _skipped_by_ladder(rows.get(PHASE_LABEL["frozen"]))
        if ex is None or ft is None or (fr is None and not frozen_skipped):
            continue
        best = max(r for r in rung if r is not None)
        gain = best - ex
        room = ex < 97.0
        met = gain >= 2.0 - 1e-9  # accuracies are image counts: exactly +2.0 is +2.0
        shown = f"{gain:+.1f}" if (round(gain, 1) >= 2.0) == met else f"{gain:+.2f}"
        gain_text = f"{shown} " + (("met" if met else "not met") if room
                                   else "(no room: extract ≥ 97%)")
        if fr is None:  # the alternative: the ladder skips a rung that does not pay
            fr_cell, fr_ok, below = LADDER_SKIP, "skipped (no gain at this size)", ex
        else:
            fr_cell, fr_ok, below = f"{fr:.1f}", "yes" if fr >= ex else "no", fr
        out.append(f"| {ds} | {ex:.1f} | {fr_cell} | {ft:.1f} | {fr_ok} | "
                   f"{'yes' if ft >= below else 'no'} | {gain_text} |")
        if ds == fmnist_goal[0]:
            goal = fmnist_goal[1]
            goal_line = (f"{ds}: best rung with default settings {best:.1f}% test (goal ≥ "
                         f"{goal:.0f}%: {'met' if best >= goal else 'not met'}).")
            tuned = {name: test for name, row in rows.items()
                     if name.startswith("finetune,") and (test := _mean_test(row)) is not None}
            if tuned:
                name = max(tuned, key=tuned.__getitem__)
                goal_line += (f" Best fine-tuning option: `{name}` {tuned[name]:.1f}% "
                              f"({'met' if tuned[name] >= goal else 'not met'}).")
    return out + ([ "", goal_line] if goal_line else [])


def _keep_stats(diffs: list[float], one_image: list[float]) -> str:
    """Cells: wins/ties/losses, mean ± std (pp), runs worse, runs worse by > one image."""
    wins = sum(d > 1e-9 for d in diffs)
    losses = sum(d < -1e-9 for d in diffs)
    worse_img = sum(d < -u - 1e-9 for d, u in zip(diffs, one_image))
    return (f"{wins}/{len(diffs) - wins - losses}/{losses} | {_mean_std(diffs)} | "
            f"{losses}/{len(diffs)} | {worse_img}/{len(diffs)}")


def keep_table(fits: list[dict[str, Any]]) -> list[str]:
    """The ladder's kept model against its own extraction rung (same fit, same test images):
    wins/ties/losses over seeds, mean ± std of the test difference, the runs where the kept
    model is worse (and worse by more than one test image), and the mean width of the 95%
    intervals of the test and validation accuracies. The other rows apply earlier rules to the
    same rungs: McNemar's two-sided test (this round's first rule) from each decision's
    recorded wins and losses, and the rule before issue 30 (keep the rung with the best
    validation accuracy): approximations, as under them a later rung may have warm-started
    elsewhere."""
    ladder = [f for f in fits if f["config"] == "ladder" and f["status"] == "ok"
              and f.get("phases") and "keep" in f]  # (fits of the rule before: no record)
    if not ladder:
        return []
    kept, old, two, one, widths, vwidths, picks = [], [], [], [], [], [], []
    for f in ladder:
        rungs = {p["phase"]: p for p in f["phases"]}
        ex = rungs.get("extract", {}).get("test_accuracy")
        if ex is None or f.get("test") is None:
            continue
        n = f.get("test_n") or 0
        one.append(1.0 / n if n else 0.0)
        kept.append(f["test"] - ex)
        best = max(f["phases"], key=lambda p: (p["best_val_accuracy"] or -1,))
        old.append(best["test_accuracy"] - ex)
        sided = "extract"
        for d in f["keep"][1:]:
            w, lo = d.get("wins") or 0, d.get("losses") or 0
            if w > lo and mcnemar_p(w, lo, "two-sided") < 0.05:
                sided = d["phase"]
        two.append(rungs.get(sided, {}).get("test_accuracy", ex) - ex)
        picks.append(f.get("best_phase") or "?")
        if f.get("test_ci"):
            widths.append(f["test_ci"][1] - f["test_ci"][0])
        if f.get("val_ci"):
            vwidths.append(f["val_ci"][1] - f["val_ci"][0])
    if not kept:
        return []
    counts = ", ".join(f"{k} {picks.count(k)}" for k in dict.fromkeys(picks))
    return ["| ladder's model vs its extraction rung (test) | wins/ties/losses | Δ pp, mean ± std "
            "| runs worse | runs worse by > 1 test image |",
            "|---|---|---|---|---|",
            f"| kept model (this rule: McNemar one-sided p < 0.05 on validation) | "
            f"{_keep_stats(kept, one)} |",
            f"| McNemar two-sided p < 0.05 (approximate) | {_keep_stats(two, one)} |",
            f"| highest validation rung (the rule before; approximate) | {_keep_stats(old, one)} |",
            "", f"Kept rung: {counts}. Mean width of the 95% intervals: test "
            f"{_mean_std(widths)} pp, validation {_mean_std(vwidths)} pp."]
