"""Numbers a user can trust: every accuracy with n and its 95% interval, and a costlier rung
kept only when a paired test on the validation images says it is better (issue 30)."""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from scipy.stats import binomtest
from torch import nn

from graftwork import ImageClassifier
from graftwork.cli import final_summary
from graftwork.data.discover import Sample
from graftwork.phases.ladder import Rung, climb, decide
from graftwork.training.loop import FitResult
from graftwork.training.metrics import mcnemar_p, paired, score_logits, wilson_interval
from tests.conftest import TINY


@pytest.mark.parametrize("k,n", [(0, 1), (1, 1), (83, 100), (167, 200), (0, 12), (12, 12),
                                 (5, 7), (999, 1000)])
def test_wilson_interval_is_scipys(k: int, n: int) -> None:
    ci = binomtest(k, n).proportion_ci(method="wilson")
    assert wilson_interval(k, n) == pytest.approx((ci.low, ci.high), abs=1e-12)


@pytest.mark.parametrize("wins,losses", [(0, 0), (1, 0), (0, 1), (6, 0), (10, 2), (7, 7),
                                         (3, 25), (40, 22)])
def test_mcnemar_is_scipys_exact_binomial_test(wins: int, losses: int) -> None:
    n = wins + losses
    greater = binomtest(wins, n, alternative="greater").pvalue if n else 1.0
    both = binomtest(wins, n).pvalue if n else 1.0
    assert mcnemar_p(wins, losses) == pytest.approx(greater, rel=1e-12)
    assert mcnemar_p(wins, losses, "two-sided") == pytest.approx(both, rel=1e-12)


def test_score_logits_carries_n_and_the_interval() -> None:
    logits = torch.eye(3)[[0, 1, 2, 0]]
    samples = [Sample(f"{i}.png", label) for i, label in enumerate([0, 1, 2, 1])]
    scores = score_logits(samples, logits, torch.ones(4, dtype=torch.bool))
    assert scores["n"] == 4 and scores["accuracy"] == 0.75
    assert scores["accuracy_ci"] == pytest.approx(wilson_interval(3, 4), abs=1e-6)


def _rung(name: str, correct: list[bool]) -> Rung:
    return Rung(name, sum(correct) / len(correct), 0.5, {}, True, tuple(correct))


def test_one_image_better_of_100_is_noise_and_keeps_the_cheaper_rung() -> None:
    extract = _rung("extract", [True] * 81 + [False] * 19)
    finetune = _rung("finetune", [True] * 82 + [False] * 18)  # +1 image: 0.82 against 0.81
    d = decide(finetune, extract)
    assert (d["kept"], d["wins"], d["losses"], d["n"], d["p_value"]) == ("extract", 1, 0, 100, 0.5)
    assert not finetune.beats(extract)
    assert d["diff_ci"][0] < 0 < d["diff_ci"][1]
    assert "+1 of 100 images" in d["text"] and "p = 0.5" in d["text"]
    assert d["text"].endswith("kept extract")


def test_a_clearly_better_rung_is_kept() -> None:
    extract = _rung("extract", [True] * 70 + [False] * 30)
    frozen = _rung("frozen", [True] * 70 + [True] * 15 + [False] * 15)  # 15 more right
    d = decide(frozen, extract)
    assert d["kept"] == "frozen" and d["p_value"] < 0.001 and d["diff_ci"][0] > 0
    assert frozen.beats(extract) and frozen.beats(None)
    assert not paired([True, False], [False, True]).better


# ------------------------------------------------------------------ climb, end to end
@dataclass
class _Scripted:
    """A phase whose trained model predicts the validation labels of ``hits`` right."""

    name: str
    hits: list[bool]
    weight: float
    log: list[str] = field(default_factory=list)

    def skip(self, ctx: Any, best: float | None) -> None:
        return None

    def run(self, ctx: Any) -> tuple[FitResult, Any, dict[str, int]]:
        with torch.no_grad():
            ctx.session.model.weight.fill_(self.weight)
        ctx.session.hits = self.hits
        acc = sum(self.hits) / len(self.hits)
        result = FitResult(history=[{"epoch": 1}], best_val={"accuracy": acc, "loss": 0.1},
                           best_epoch=1)
        return result, None, {"trainable_params": 1}


class _Session:
    def __init__(self, labels: list[int]) -> None:
        self.model, self.pristine, self.labels = nn.Linear(1, 1), True, labels
        self.hits: list[bool] = []

    def logits(self, samples: list[Sample]) -> tuple[torch.Tensor, torch.Tensor]:
        pred = [y if hit else 1 - y for y, hit in zip(self.labels, self.hits)]
        return torch.eye(2)[pred] * 5, torch.ones(len(pred), dtype=torch.bool)


def _climb(rungs: list[tuple[str, list[bool]]]) -> tuple[Any, Any]:
    labels = [i % 2 for i in range(len(rungs[0][1]))]
    session = _Session(labels)
    ctx = SimpleNamespace(session=session, previous=None, callbacks=[],
                          splits=SimpleNamespace(val=[Sample(f"{i}", y) for i, y in
                                                      enumerate(labels)]))
    phases = [_Scripted(name, hits, float(i + 1)) for i, (name, hits) in enumerate(rungs)]
    return climb(phases, ctx, sequence=True, test=lambda: {}), session  # type: ignore[arg-type]


def test_the_ladder_keeps_extract_when_finetune_is_one_image_better(
        caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="graftwork.phases.ladder"):
        out, session = _climb([("extract", [True] * 81 + [False] * 19),
                               ("finetune", [True] * 82 + [False] * 18)])
    assert out.kept.phase == "extract"
    assert float(session.model.weight.detach()) == 1.0  # extract's weights restored
    assert [d["kept"] for d in out.decisions] == ["extract", "extract"]
    assert out.rows[1]["vs_kept"] == "+1/100 [-1.7, +3.7] pts, p=0.5"
    assert out.rows[1]["val_accuracy_ci"] == pytest.approx(wilson_interval(82, 100), abs=1e-6)
    assert "finetune vs extract: +1 of 100 images" in caplog.text
    assert "kept extract" in caplog.text


def test_the_ladder_keeps_a_rung_that_is_clearly_better() -> None:
    out, session = _climb([("extract", [True] * 60 + [False] * 40),
                           ("frozen", [True] * 61 + [False] * 39),  # noise: not kept
                           ("finetune", [True] * 90 + [False] * 10)])
    assert out.kept.phase == "finetune" and float(session.model.weight.detach()) == 3.0
    assert out.decisions[1]["kept"] == "extract" and out.decisions[2]["against"] == "extract"


# ------------------------------------------------------------------ the record of a real fit
def test_the_keep_decision_is_in_metrics_json_and_the_summary(tiny_data: Path, cache_dir: str,
                                                                 tmp_path: Path) -> None:
    clf = ImageClassifier(**TINY, strategy="ladder", epochs=1, cache_dir=cache_dir).fit(tiny_data)
    clf.save(tmp_path / "run")
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    keep = metrics["keep"]
    assert keep["kept"] == clf.best_phase_ and "McNemar" in keep["rule"]
    assert [d["phase"] for d in keep["decisions"]] == ["extract", "frozen", "finetune"]
    for d in keep["decisions"][1:]:
        assert {"n", "wins", "losses", "p_value", "diff_ci", "kept", "text"} <= set(d)
        assert d["n"] == 12
    for row in metrics["phases"]:
        assert row["val_n"] == 12 and len(row["val_accuracy_ci"]) == 2
        assert row["test_n"] == 12 and len(row["test_accuracy_ci"]) == 2
    for split in ("val", "test"):
        assert metrics[split]["n"] == 12 and len(metrics[split]["accuracy_ci"]) == 2
    text = final_summary(clf, tmp_path / "run")
    assert f"kept model: {keep['kept']}" in text
    assert keep["decisions"][2]["text"] in text


def test_the_rule_asks_one_sided_whether_the_costlier_rung_is_better() -> None:
    """The question is directional: a two-sided test at 0.05 is a one-sided one at 0.025 and
    declined fine-tuning that was 1.8 points better on 1,000 validation images (fmnist-400,
    56 better, 38 worse: two-sided p = 0.079, one-sided 0.039)."""
    extract = _rung("extract", [True] * 800 + [True] * 38 + [False] * 56 + [False] * 106)
    finetune = _rung("finetune", [True] * 800 + [False] * 38 + [True] * 56 + [False] * 106)
    d = decide(finetune, extract)
    assert (d["wins"], d["losses"]) == (56, 38)
    assert d["p_value"] == pytest.approx(binomtest(56, 94, alternative="greater").pvalue, abs=1e-6)
    assert d["kept"] == "finetune" and mcnemar_p(56, 38, "two-sided") > 0.05
    # the demo's decision: 5 better, 3 worse of 100 is chance (p = 0.36): extraction stays
    demo = decide(_rung("finetune", [True] * 5 + [False] * 3 + [True] * 75 + [False] * 17),
                  _rung("extract", [False] * 5 + [True] * 3 + [True] * 75 + [False] * 17))
    assert demo["kept"] == "extract" and demo["p_value"] == pytest.approx(0.363281, abs=1e-6)
