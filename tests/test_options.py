"""The one options table (``graftwork.params.PARAMS``): every ``graft train``/``extract`` option
is generated from it, choices come from the registries (read when parsing), and the Python API
and saved configs are checked against the same table."""
from __future__ import annotations

import inspect
import json
import re
import shutil
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner

from graftwork.cli import main
from graftwork.cli.options import TableOption, param_option
from graftwork.errors import ConfigError, RunConfigError
from graftwork.params import PARAMS, RANGES, check_choices, check_param
from graftwork.registry import Registry

CLI = Path(__file__).parent.parent / "src" / "graftwork" / "cli"
FIXTURE_RUN = Path(__file__).parent / "fixtures" / "run-2a89f13"


@pytest.mark.parametrize("command", ["train", "extract"])
def test_every_option_comes_from_the_table(command: str) -> None:
    options = [p for p in main.commands[command].params if isinstance(p, click.Option)]
    assert options
    for option in options:
        assert isinstance(option, TableOption), option.name
        spec = PARAMS[option.table_name]
        assert option.name == (spec.dest or spec.name)
        assert spec.flag in option.opts and (not spec.short or spec.short in option.opts)
        assert (option.help or "") and spec.help
        if spec.kind in ("int", "float"):
            assert isinstance(option.type, click.IntRange if spec.kind == "int"
                              else click.FloatRange)
            assert (option.type.min, option.type.max) == (spec.min, spec.max)
        elif spec.kind == "choice":
            assert set(spec.allowed()) <= set(option.type.choices)
        elif spec.kind == "flag":
            assert option.is_flag
        if command == "train":  # extract gives batch_size, help texts of its own
            assert option.help == spec.help
            assert option.default == spec.default


def test_table_defaults_are_the_estimators() -> None:
    from graftwork.estimator.classifier import ImageClassifier

    signature = inspect.signature(ImageClassifier).parameters
    shared = [name for name in PARAMS if name in signature]
    assert {"backbone", "strategy", "head", "engine", "precision", "augment_policy",
            "epochs", "unfreeze", "device"} <= set(shared)
    assert {n: PARAMS[n].default for n in shared
            if PARAMS[n].default != signature[n].default} == {}


def test_no_literal_choice_list_in_the_cli_modules() -> None:
    modules = sorted(CLI.glob("*.py"))
    assert len(modules) >= 5
    for module in modules:
        text = module.read_text()
        assert not re.search(r"click\.Choice\(\s*[\[(]", text), module.name
        assert "click.Choice(" not in text or module.name == "options.py", module.name


def test_choices_are_the_registries() -> None:
    from graftwork.features.engines import ENGINES
    from graftwork.model.heads import HEADS
    from graftwork.phases import strategy_names
    from graftwork.training.loop import OPTIMIZERS, SCHEDULES

    for name, registry in (("engine", ENGINES), ("head", HEADS), ("optimizer", OPTIMIZERS),
                           ("schedule", SCHEDULES)):
        assert isinstance(registry, Registry)
        assert PARAMS[name].allowed() == tuple(registry.names())
    assert PARAMS["strategy"].allowed() == tuple(strategy_names())
    assert set(RANGES) < set(PARAMS)


def test_a_phase_and_an_engine_registered_later_are_choices() -> None:
    from graftwork.features.engines import ENGINES, TorchEngine
    from graftwork.phases import PHASES, register_phase
    from graftwork.phases.extract import Extract

    class Later(Extract):
        name = "later_phase"

    @click.command()
    @param_option("strategy")
    @param_option("engine")
    def cmd(strategy: str, engine: str) -> None:
        click.echo(f"{strategy} {engine}")

    runner = CliRunner()
    assert runner.invoke(cmd, ["--strategy", "later_phase"]).exit_code == 2
    register_phase(Later)
    ENGINES.register("later_engine", TorchEngine)
    try:
        res = runner.invoke(cmd, ["--strategy", "later_phase", "--engine", "later_engine"])
        assert res.exit_code == 0 and res.output.strip() == "later_phase later_engine"
        check_choices({"engine": "later_engine"})
        assert "later_phase" in runner.invoke(main, ["train", "--help"]).output
    finally:
        PHASES.pop("later_phase")
        ENGINES.pop("later_engine")
    with pytest.raises(ConfigError, match="is not one of"):
        check_choices({"engine": "later_engine"})


@pytest.mark.parametrize("args, flag, meant", [
    (["train", "DATA", "--out", "r", "--engine", "tortch"], "'--engine'", "'torch'"),
    (["train", "DATA", "--out", "r", "--head", "mpl"], "'--head'", "'mlp'"),
    (["train", "DATA", "--out", "r", "--strategy", "finetun"], "'--strategy'", "'finetune'"),
    (["train", "DATA", "--out", "r", "--optimizer", "adamm"], "'--optimizer'", "'adam'"),
    (["extract", "DATA", "--engine", "rya"], "'--engine'", "'ray'"),
])
def test_unknown_choice_is_a_did_you_mean_error(args: list[str], flag: str, meant: str) -> None:
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 2
    lines = res.stderr.strip().splitlines()
    assert lines[-2].startswith("Error: ") and flag in lines[-2] and "is not one of" in lines[-2]
    hint, _, choices = lines[-1].partition("? ")
    assert hint.startswith("Fix: did you mean ") and meant in hint
    assert choices.startswith("choose one of: ")
    assert "Traceback" not in res.output


def test_python_api_choices_name_the_closest_value() -> None:
    with pytest.raises(ConfigError) as info:
        check_param("optimizer", "adamm")
    assert info.value.message.startswith("optimizer='adamm' is not one of ['adam', ")
    assert info.value.fix.startswith("did you mean 'adam' or ")
    assert "choose one of: adam, adamw, rmsprop, nadam, sgd (--optimizer)" in info.value.fix
    assert "leave it unset" in info.value.fix
    check_choices({"optimizer": None, "head": "linear", "strategy": "anything", "epochs": 0})


@pytest.mark.parametrize("field, value", [("head", "deep"), ("optimizer", "lion"),
                                          ("schedule", "linear"), ("augment_policy", "wild")])
def test_saved_config_with_an_unknown_choice_is_refused(tmp_path: Path, field: str,
                                                        value: Any) -> None:
    from graftwork.estimator.classifier import ImageClassifier
    from graftwork.rundir.config import validate_config

    run = Path(shutil.copytree(FIXTURE_RUN, tmp_path / "run"))
    cfg = json.loads((run / "config.json").read_text())
    assert "integrity" not in cfg  # an unsealed (format 1) run: edits are not tampering
    cfg["hyperparameters"][field] = value
    (run / "config.json").write_text(json.dumps(cfg))
    validate_config(cfg, run / "config.json")  # a torch-free reader checks no registry
    with pytest.raises(RunConfigError) as info:
        ImageClassifier.load(run)
    assert f"hyperparameters: {field}={value!r} is not one of" in info.value.message


def test_saved_head_kind_is_checked_against_the_heads(tmp_path: Path) -> None:
    from graftwork.rundir.config import load_config

    run = Path(shutil.copytree(FIXTURE_RUN, tmp_path / "run"))
    cfg = json.loads((run / "config.json").read_text())
    cfg["head"]["kind"] = "deep"
    (run / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(RunConfigError, match=r"head.kind must be one of 'mlp', 'linear'"):
        load_config(run)
