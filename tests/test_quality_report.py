"""bench/quality_report.py: a rung the ladder skips is reported as skipped, not as missing."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
quality_report = pytest.importorskip("quality_report")


def _ladder(seed: int, frozen: bool) -> dict[str, Any]:
    phases = [{"phase": "extract", "best_val_accuracy": 0.80, "test_accuracy": 0.80,
               "wall_time_s": 1.0}]
    if frozen:
        phases.append({"phase": "frozen", "best_val_accuracy": 0.81, "test_accuracy": 0.81,
                       "wall_time_s": 5.0})
    phases.append({"phase": "finetune", "best_val_accuracy": 0.84, "test_accuracy": 0.83,
                   "wall_time_s": 9.0})
    return {"config": "ladder", "seed": seed, "status": "ok", "val": 0.84, "test": 0.83,
            "seconds": 15.0, "phases": phases,
            "skipped_phases": {} if frozen else {"frozen": "200 training images per class"}}


@pytest.mark.parametrize("frozen", [True, False])
def test_targets_with_and_without_the_frozen_rung(frozen: bool) -> None:
    configs = [{"name": "extract", "strategy": "extract"}, {"name": "ladder", "strategy": "ladder"}]
    fits = [f for seed in (0, 1) for f in (
        {"config": "extract", "seed": seed, "status": "ok", "val": 0.8, "test": 0.8,
         "seconds": 1.0}, _ladder(seed, frozen))]
    rows = quality_report.rows_of(fits, configs)
    frozen_row = rows["ladder: frozen rung"]
    if frozen:
        assert set(frozen_row["seeds"]) == {0, 1}
    else:
        assert frozen_row["status"] == ["skipped by the ladder: 200 training images per class"] * 2
    table = "\n".join(quality_report.targets_table({"ds": rows}))
    line = next(x for x in table.splitlines() if x.startswith("| ds |"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[1] == "80.0" and cells[3] == "83.0" and cells[5] == "yes"
    assert cells[2] == ("81.0" if frozen else "skipped by the ladder")
    assert cells[4] == ("yes" if frozen else "skipped (no gain at this size)")
    assert cells[6] == "+3.0 met"


def test_a_gain_just_below_two_points_is_not_shown_as_two() -> None:
    configs = [{"name": "extract", "strategy": "extract"}, {"name": "ladder", "strategy": "ladder"}]
    fits = [{"config": "extract", "seed": 0, "status": "ok", "val": 0.8, "test": 0.8,
             "seconds": 1.0}, _ladder(0, frozen=True)]
    fits[1]["phases"][-1]["test_accuracy"] = 0.8197  # +1.97 points
    table = "\n".join(quality_report.targets_table({"ds": quality_report.rows_of(fits, configs)}))
    assert "+1.97 not met" in table


def test_exactly_two_points_is_met_despite_float_error() -> None:
    configs = [{"name": "extract", "strategy": "extract"}, {"name": "ladder", "strategy": "ladder"}]
    fits = []
    for seed, (ex, ft) in enumerate([(0.81, 0.831), (0.81, 0.847), (0.812, 0.814)]):
        lad = _ladder(seed, frozen=True)
        lad["phases"][0]["test_accuracy"] = ex
        lad["phases"][1]["test_accuracy"] = ex
        lad["phases"][-1]["test_accuracy"] = ft
        fits += [{"config": "extract", "seed": seed, "status": "ok", "val": 0.8, "test": ex,
                  "seconds": 1.0}, lad]
    table = "\n".join(quality_report.targets_table({"ds": quality_report.rows_of(fits, configs)}))
    assert "+2.0 met" in table


def test_a_skipped_ladder_variant_leaves_the_ladder_rungs_alone() -> None:
    """A ladder variant the run skipped (``ladder, precision=bf16``) adds no statuses to the
    ``ladder`` config's rung rows: the Targets table still shows the dataset, with its frozen
    rung skipped by the ladder."""
    configs = [{"name": "extract", "strategy": "extract"}, {"name": "ladder", "strategy": "ladder"},
               {"name": "ladder, precision=bf16", "strategy": "ladder"}]
    fits = []
    for seed in (0, 1):
        fits += [{"config": "extract", "seed": seed, "status": "ok", "val": 0.8, "test": 0.8,
                  "seconds": 1.0}, _ladder(seed, frozen=False),
                 {"config": "ladder, precision=bf16", "seed": seed,
                  "status": "skipped (time budget)"}]
    rows = quality_report.rows_of(fits, configs)
    assert rows["ladder: extract rung"]["status"] == []
    assert not any(name.startswith("ladder, precision=bf16:") for name in rows)
    assert rows["ladder, precision=bf16 (its pick)"]["status"] == ["skipped (time budget)"] * 2
    table = "\n".join(quality_report.targets_table({"fmnist-2000": rows}))
    assert "| fmnist-2000 | 80.0 | skipped by the ladder | 83.0 |" in table
    assert ("fmnist-2000: best rung with default settings 83.0% test (goal ≥ 88%: not met)"
            in table)
    ran = dict(_ladder(0, frozen=True), config="ladder, precision=bf16")
    rows = quality_report.rows_of(fits[:2] + [ran], configs)
    assert rows["ladder, precision=bf16: frozen rung"]["seeds"][0]["test"] == 0.81
