"""The shared parameter table: every boundary, None, bools, NaN, messages, click types."""
from __future__ import annotations

import math
from typing import Any

import click
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from graftwork.errors import ConfigError
from graftwork.params import RANGES, ParamSpec, check_param, check_params, click_type

# name: (values that pass, values that fail)
BOUNDS: dict[str, tuple[list[Any], list[Any]]] = {
    "epochs": ([1, 10000, None], [0, 10001, -1]),
    "batch_size": ([1, 4096], [0, 4097, None]),
    "lr": ([1e-12, 10, 10.0, 1], [0, 0.0, 10.0001, -1e-3]),
    "hidden": ([1, 65536], [0, 65537, None]),
    "dropout": ([0, 0.0, 0.999, None], [1, 1.0, -0.01]),
    "patience": ([1, 10000, None], [0, 10001]),
    "lr_decay": ([1e-9, 1, 1.0], [0, 0.0, 1.0001, None]),
    "image_size": ([16, 2048, None], [15, 2049]),
    "val_fraction": ([0, 0.0, 0.9], [-0.01, 0.9001, None]),
    "test_fraction": ([0, 0.9], [-0.01, 0.91, None]),
    "seed": ([0, 2**32 - 1], [-1, 2**32, None]),
    "num_workers": ([0, 64, None], [-1, 65]),
    "aug_views": ([0, 64], [-1, 65, None]),
    "label_smoothing": ([0, 0.5], [-0.1, 0.5001, None]),
    "weight_decay": ([0, 0.0, 1, None], [-0.01, 1.0001, float("nan")]),
    "top_k": ([1, 1000], [0, 1001, None]),
    "smoothing": ([0, 0.0, 0.99], [1, 1.0, -0.1, None]),
    "num_processes": ([1, 1024], [0, 1025, None]),
}
FLAGS = {"num_workers": "--workers", "top_k": "--top-k", "smoothing": "--smoothing",
         "batch_size": "--batch-size", "epochs": "--epochs", "lr_decay": "--lr-decay"}


def test_table_covers_the_parameters() -> None:
    assert set(RANGES) == set(BOUNDS)
    for name, spec in RANGES.items():
        assert isinstance(spec, ParamSpec) and spec.name == name
        assert spec.kind in ("int", "float") and spec.flag.startswith("--") and spec.help
        spec.check(spec.example)  # every example in a fix message is itself valid
    for name, flag in FLAGS.items():
        assert RANGES[name].flag == flag


@pytest.mark.parametrize("name", sorted(BOUNDS))
def test_boundaries(name: str) -> None:
    good, bad = BOUNDS[name]
    for value in good:
        check_param(name, value)
    for value in bad:
        with pytest.raises(ConfigError) as info:
            check_param(name, value)
        spec = RANGES[name]
        assert info.value.message.startswith(f"{name} ({spec.flag}) must be ")
        assert "(got " in info.value.message and spec.flag in info.value.fix


def test_message_names_flag_range_and_value() -> None:
    with pytest.raises(ConfigError) as info:
        check_param("epochs", 0)
    assert info.value.message == "epochs (--epochs) must be an integer from 1 to 10000 (got 0)"
    assert info.value.fix == ("pass a value in that range, e.g. --epochs 10, "
                              "or leave it unset for the default")
    with pytest.raises(ConfigError, match=r"^lr \(--lr\) must be a number above 0 and at most 10 "
                                          r"\(got 0\)"):
        check_param("lr", 0)
    with pytest.raises(ConfigError, match=r"dropout \(--dropout\) must be a number at least 0 "
                                          r"and below 1 \(got 1.5\)"):
        check_param("dropout", 1.5)
    with pytest.raises(ConfigError, match=r"num_workers \(--workers\) must be an integer from "
                                          r"0 to 64 \(got 65\)"):
        check_param("num_workers", 65)
    with pytest.raises(ConfigError, match=r"from 0 to 4294967295"):
        check_param("seed", -1)
    with pytest.raises(ConfigError) as info:
        check_param("batch_size", 0)
    assert info.value.fix == "pass a value in that range, e.g. --batch-size 32"


@pytest.mark.parametrize("name", ["epochs", "batch_size", "seed", "top_k"])
def test_bools_and_non_integers_are_not_ints(name: str) -> None:
    for value in (True, False, 5.0, "5", [5]):
        with pytest.raises(ConfigError, match=r"must be an integer"):
            check_param(name, value)


@pytest.mark.parametrize("name", ["lr", "dropout", "val_fraction", "smoothing", "lr_decay"])
def test_nan_inf_bool_and_text_are_not_floats(name: str) -> None:
    for value in (math.nan, math.inf, -math.inf, True, "0.1", None if name != "dropout" else "x"):
        if value is None and RANGES[name].allow_none:
            continue
        with pytest.raises(ConfigError, match=r"must be a number"):
            check_param(name, value)


def test_numpy_numbers_are_numbers() -> None:
    np = pytest.importorskip("numpy")
    check_param("epochs", np.int64(5))
    check_param("lr", np.float32(0.01))
    with pytest.raises(ConfigError):
        check_param("lr", np.float64("nan"))


def test_unknown_name_is_a_programming_error() -> None:
    with pytest.raises(KeyError):
        check_param("no_such_param", 1)


def test_check_params_checks_known_entries_and_the_fraction_sum() -> None:
    check_params({"epochs": 3, "strategy": "whatever", "val_fraction": 0.45, "test_fraction": 0.45})
    check_params({})
    with pytest.raises(ConfigError, match=r"hidden \(--hidden\)"):
        check_params({"epochs": 3, "hidden": 0})
    with pytest.raises(ConfigError) as info:
        check_params({"val_fraction": 0.5, "test_fraction": 0.5})
    assert "--val-fraction + --test-fraction" in info.value.message
    assert "(got 0.5 + 0.5)" in info.value.message and "--val-fraction" in info.value.fix


def test_click_types_have_the_same_bounds() -> None:
    for name, spec in RANGES.items():
        typ = click_type(name)
        assert isinstance(typ, click.IntRange if spec.kind == "int" else click.FloatRange)
        assert (typ.min, typ.max, typ.min_open, typ.max_open) == (spec.min, spec.max,
                                                                  spec.min_open, spec.max_open)
        good, bad = BOUNDS[name]
        for value in good:
            if value is not None:
                assert typ.convert(str(value), None, None) == value
        for value in bad:
            if value is not None:
                with pytest.raises(click.BadParameter):
                    typ.convert(str(value), None, None)
    for text in ("nan", "inf", "-inf"):
        with pytest.raises(click.BadParameter):
            click_type("smoothing").convert(text, None, None)


def test_click_option_rejects_out_of_range() -> None:
    from click.testing import CliRunner

    @click.command()
    @click.option("--epochs", type=click_type("epochs"), default=None)
    @click.option("--dropout", type=click_type("dropout"), default=None)
    def cmd(epochs: int | None, dropout: float | None) -> None:
        click.echo(f"{epochs} {dropout}")

    runner = CliRunner()
    assert runner.invoke(cmd, []).output.strip() == "None None"
    assert runner.invoke(cmd, ["--epochs", "3", "--dropout", "0.2"]).output.strip() == "3 0.2"
    assert runner.invoke(cmd, ["--epochs", "0"]).exit_code == 2
    assert runner.invoke(cmd, ["--dropout", "1"]).exit_code == 2


NUMBERS = st.one_of(st.integers(min_value=-(2**70), max_value=2**70),
                    st.floats(allow_nan=True, allow_infinity=True), st.booleans(), st.none())


@settings(max_examples=300, deadline=None)
@given(name=st.sampled_from(sorted(RANGES)), value=NUMBERS)
def test_any_number_passes_or_is_a_config_error(name: str, value: Any) -> None:
    try:
        check_param(name, value)
    except ConfigError as exc:
        assert exc.message.startswith(f"{name} ({RANGES[name].flag}) must be ")
        return
    spec = RANGES[name]
    if value is None:
        assert spec.allow_none
        return
    assert not isinstance(value, bool) and math.isfinite(value)
    assert spec.min is not None and spec.max is not None
    assert spec.min <= value <= spec.max
    assert spec.kind == "float" or isinstance(value, int)


@settings(max_examples=100, deadline=None)
@given(val=NUMBERS, test=NUMBERS)
def test_fraction_pairs_pass_or_are_a_config_error(val: Any, test: Any) -> None:
    try:
        check_params({"val_fraction": val, "test_fraction": test})
    except ConfigError:
        return
    assert val + test < 1
