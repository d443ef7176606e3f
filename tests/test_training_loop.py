"""The training loop's schedules and its keep-the-start rule for warm-started phases."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from graftwork import ImageClassifier
from graftwork.training.loop import TrainConfig, _make_schedule, evaluate, fit, tensor_batches
from tests.conftest import TINY


def _lrs(name: str, epochs: int, steps: int) -> list[float]:
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = _make_schedule(name, opt, epochs, steps)
    out = []
    for _ in range(epochs * steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_warmcosine_rises_over_the_first_epoch_then_decays_to_zero() -> None:
    lrs = _lrs("warmcosine", epochs=4, steps=10)
    assert lrs[0] == pytest.approx(0.1)  # 1/10 of the rate on the first step
    assert lrs[:10] == sorted(lrs[:10]) and lrs[9] == pytest.approx(1.0)
    assert lrs[10:] == sorted(lrs[10:], reverse=True)
    assert lrs[-1] < 0.01


def test_warmcosine_warmup_is_at_most_a_quarter_of_a_short_run() -> None:
    lrs = _lrs("warmcosine", epochs=2, steps=10)  # 20 steps: warm-up 5, not 10
    assert lrs[3] < 1.0 and lrs[4] == pytest.approx(1.0) and lrs[6] < 1.0


def _separable(n: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 4, generator=g)
    return x, (x[:, 0] > 0).long()


def _good_model() -> nn.Linear:
    """A linear model that already classifies ``_separable`` perfectly."""
    model = nn.Linear(4, 2)
    with torch.no_grad():
        model.weight.zero_()
        model.bias.zero_()
        model.weight[1, 0], model.weight[0, 0] = 5.0, -5.0
    return model


@pytest.mark.parametrize("keep_start", [True, False])
def test_keep_start_never_ends_worse_on_validation_than_it_started(keep_start: bool) -> None:
    x, y = _separable()
    model = _good_model()
    start = {k: v.clone() for k, v in model.state_dict().items()}
    wrong = 1 - y  # training on flipped labels makes every epoch worse on validation
    cfg = TrainConfig(epochs=3, lr=0.5, optimizer="sgd", patience=5)
    validate = lambda: evaluate(model, tensor_batches(x, y, 32))  # noqa: E731
    result = fit(model, lambda g: tensor_batches(x, wrong, 16, g), validate, cfg,
                 steps_per_epoch=4, progress=False, keep_start=keep_start)
    after = evaluate(model, tensor_batches(x, y, 32))["accuracy"]
    if keep_start:
        assert result.best_epoch == 0 and after == 1.0
        assert all(torch.equal(v, start[k]) for k, v in model.state_dict().items())
        assert len(result.history) == 3  # the epochs still ran and are in the history
    else:
        assert result.best_epoch >= 1 and after < 1.0


def test_keep_start_still_takes_an_epoch_that_improves() -> None:
    x, y = _separable()
    model = nn.Linear(4, 2)
    with torch.no_grad():
        model.weight.zero_()
        model.bias.zero_()
    cfg = TrainConfig(epochs=3, lr=0.5, optimizer="sgd", patience=5)
    validate = lambda: evaluate(model, tensor_batches(x, y, 32))  # noqa: E731
    result = fit(model, lambda g: tensor_batches(x, y, 16, g), validate, cfg,
                 steps_per_epoch=4, progress=False, keep_start=True)
    assert result.best_epoch >= 1 and result.best_val["accuracy"] > 0.9


def test_ladder_rungs_never_fall_below_where_they_started(tiny_data: Path,
                                                          cache_dir: str) -> None:
    """Each rung warm-starts from the best rung so far and keeps its starting weights when
    no epoch beats them, so best validation accuracy never falls along the ladder (up to one
    validation image of numeric difference between the engine and torch paths)."""
    clf = ImageClassifier(**TINY, strategy="ladder", epochs=2, lr=0.5,
                          cache_dir=cache_dir).fit(tiny_data)
    vals = [p["best_val_accuracy"] for p in clf.phases_]
    n_val = len(clf.splits_.val)
    for i in range(1, len(vals)):
        assert vals[i] >= max(vals[:i]) - 1.0 / n_val - 1e-9, clf.phases_
    assert any(p["best_epoch"] == 0 for p in clf.phases_[1:]) or vals[-1] > vals[0]


def test_patience_counts_from_the_best_trained_epoch_not_the_kept_start() -> None:
    """A warm start's first epochs may dip below it: early stopping waits for the trained
    epochs to stop improving instead of stopping ``patience`` epochs after the start."""
    x, y = _separable()
    model = _good_model()
    cfg = TrainConfig(epochs=6, lr=0.5, optimizer="sgd", patience=1)
    validate = lambda: evaluate(model, tensor_batches(x, y, 32))  # noqa: E731
    result = fit(model, lambda g: tensor_batches(x, 1 - y, 16, g), validate, cfg,
                 steps_per_epoch=4, progress=False, keep_start=True)
    # epoch 1 is the best trained epoch (though worse than the start), epoch 2 is worse
    # than epoch 1: one bad epoch, so training stops there, and keeps the start
    assert len(result.history) == 2 and result.stopped_early and result.best_epoch == 0


def test_cli_offers_every_schedule_and_optimizer() -> None:
    from click.testing import CliRunner

    from graftwork.cli import main
    from graftwork.training.loop import OPTIMIZERS, SCHEDULES

    text = CliRunner().invoke(main, ["train", "--help"]).output
    assert "warmcosine" in SCHEDULES and all(name in text for name in (*SCHEDULES, *OPTIMIZERS))
