"""Numeric flags out of range are one error naming the flag; any value either trains or is
one error (property-based)."""
from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from graftwork.cli import main
from tests.cli_runs import MODEL, shared_run, train_cli
from tests.test_cli_errors import _friendly_error


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One tiny data set, one shared feature cache and one finished run for the module."""
    return shared_run(tmp_path_factory.mktemp("shared"))


BAD_FLAGS = [
    (["--epochs", "0"], "--epochs"), (["--epochs", "-1"], "--epochs"),
    (["--image-size", "100000"], "--image-size"), (["--batch-size", "0"], "--batch-size"),
    (["--lr", "-1"], "--lr"), (["--image-size", "0"], "--image-size"),
    (["--image-size", "7"], "--image-size"), (["--val-fraction", "1.5"], "--val-fraction"),
    (["--hidden", "0"], "--hidden"), (["--dropout", "1.5"], "--dropout"),
    (["--lr", "nan"], "--lr"), (["--lr", "inf"], "--lr"), (["--workers", "-2"], "--workers"),
]


@pytest.mark.parametrize("args,flag", BAD_FLAGS, ids=[" ".join(a) for a, _ in BAD_FLAGS])
def test_an_out_of_range_flag_is_one_error(shared: dict[str, Path], tmp_path: Path,
                                           args: list[str], flag: str) -> None:
    out = tmp_path / "R"
    result = train_cli(shared["data"], out, shared["cache"], *args)
    text = _friendly_error(result, flag)
    assert any(w in text for w in ("range", "at least", "at most", "between", "finite")), text
    assert not out.exists()


def test_predict_top_k_zero(shared: dict[str, Path], tmp_path: Path) -> None:
    _friendly_error(CliRunner().invoke(main, ["predict", str(shared["run"]),
                                              str(shared["data"]), "--top-k", "0"]), "--top-k")


NUMERIC = {"--epochs": "1", "--batch-size": "8", "--lr": "0.01", "--image-size": "32",
           "--hidden": "8", "--dropout": "0.1", "--patience": "1", "--lr-decay": "0.5",
           "--val-fraction": "0.2", "--test-fraction": "0.2", "--seed": "0",
           "--label-smoothing": "0", "--workers": "0"}
_values = st.one_of(
    st.integers(min_value=-10**12, max_value=10**12).map(str),
    st.integers(min_value=-3, max_value=40).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.floats(min_value=-2, max_value=2).map(str),
    st.sampled_from(["nan", "inf", "-inf", "1e308", "1e-320", "", " ", "abc", "0x10", "1_0"]))


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture,
                                 HealthCheck.too_slow])
@given(flag=st.sampled_from(sorted(NUMERIC)), value=_values)
def test_any_numeric_flag_value_trains_or_is_one_error(shared: dict[str, Path], flag: str,
                                                       value: str) -> None:
    if flag == "--epochs" and value.lstrip("+").isdigit() and int(value) > 2:
        value = "2"  # valid but slow: the range itself is covered above
    if flag == "--image-size" and value.isdigit() and 64 < int(value) <= 1024:
        value = "64"
    if flag == "--patience" and value.isdigit() and int(value) > 1:
        value = "1"
    opts = {**NUMERIC, flag: value}
    out = shared["tmp"] / f"prop-{time.time_ns()}"
    args = ["train", str(shared["data"]), "--out", str(out), "--cache-dir", str(shared["cache"]),
            "--backbone", "test_efficientnet", "--weights", "random", "--strategy", "extract",
            "-q", "--no-report"]
    for k, v in opts.items():
        args += [f"{k}={v}"]
    result = CliRunner().invoke(main, args)
    if result.exit_code == 0:
        assert (out / MODEL).is_file(), result.output
    else:
        _friendly_error(result)
    shutil.rmtree(out, ignore_errors=True)
