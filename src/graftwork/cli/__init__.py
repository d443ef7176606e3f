"""``graft``: a thin command-line layer over the Python API, one library call per command.

Library errors (``GraftError``) and usage errors become ``Error: ...`` + ``Fix: ...`` and exit
code 2, never a traceback. Numeric options take their ranges from :mod:`graftwork.params`, the
``--strategy`` choices from the phase registry (:mod:`graftwork.phases`).
"""
from __future__ import annotations

import atexit
import functools
import gc
import json
import sys
from pathlib import Path
from typing import Any

import click

from graftwork.cli import extract as _cli_extract
from graftwork.cli import tools as _cli_tools
from graftwork.cli import deploy as cli_deploy
from graftwork.cli.common import (_friendly, _progress_bars, _setup_logging, build_report_quietly,
                                  device_option, load_classifier, phase_options_value,
                                  unfreeze_value)
from graftwork.params import OPTIMIZERS, SCHEDULES, click_type



class _Graft(click.Group):
    """The command group: usage errors too become one ``Error:`` and one ``Fix:`` line."""

    def main(self, *args: Any, **kwargs: Any) -> Any:
        kwargs["standalone_mode"] = False
        try:
            code = super().main(*args, **kwargs)
        except click.UsageError as exc:
            cmd = exc.ctx.command_path if exc.ctx else "graft"
            click.echo(f"Error: {exc.format_message()}", err=True)
            click.echo(f"Fix: see `{cmd} --help` for the allowed values", err=True)
            sys.exit(2)
        except click.ClickException as exc:
            click.echo(f"Error: {exc.format_message()}", err=True)
            click.echo("Fix: see `graft --help`", err=True)
            sys.exit(exc.exit_code)
        except click.Abort:
            click.echo("Aborted.", err=True)
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)


class StrategyChoice(click.Choice):
    """``--strategy``: the registered phases and sequences, read when parsing (a phase
    registered after import is a choice too)."""

    def __init__(self) -> None:
        super().__init__([])

    @property  # type: ignore[override]
    def choices(self) -> tuple[str, ...]:
        from graftwork.phases import strategy_names

        return tuple(strategy_names())

    @choices.setter
    def choices(self, value: Any) -> None:
        pass


@click.group(cls=_Graft, context_settings={"help_option_names": ["-h", "--help"],
                                            "max_content_width": 100})
@click.version_option(package_name="graftwork")
def main() -> None:
    """graft: turn a folder of labelled images into a classifier by transfer learning."""
    _skip_final_gc()


@functools.cache
def _skip_final_gc() -> None:
    """Interpreter shutdown garbage-collects every object torch created: ~0.7 s of a ~6 s cached
    re-run. Objects frozen at exit (stdlib ``gc.freeze``) are skipped by that last collection."""
    atexit.register(gc.freeze)


@main.command()
@click.argument("data", type=click.Path(path_type=Path))
@click.option("--backbone", default="efficientnet_lite0", show_default=True)
@click.option("--strategy", type=StrategyChoice(), default="extract", show_default=True)
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Run directory.")
@click.option("--overwrite", is_flag=True, help="Replace a finished run in --out.")
@click.option("--weights", default=None, help="Weights file (safetensors/state dict) or 'random'.")
@click.option("--epochs", type=click_type("epochs"), default=None,
              help="Epochs per phase (default per phase).")
@click.option("--image-size", type=click_type("image_size"), default=None)
@click.option("--batch-size", type=click_type("batch_size"), default=32, show_default=True)
@click.option("--lr", type=click_type("lr"), default=None,
              help="Learning rate (default per phase; finetune: 5e-4, 2e-4 below 40 "
              "training images per class).")
@click.option("--optimizer", type=click.Choice(OPTIMIZERS),
              default=None)
@click.option("--schedule", type=click.Choice(SCHEDULES), default=None,
              help="Default per phase; warmcosine: a one-epoch linear warm-up, then cosine.")
@click.option("--patience", type=click_type("patience"), default=None,
              help="Early-stopping patience (epochs).")
@click.option("--head", type=click.Choice(["mlp", "linear", "auto"]), default="mlp",
              show_default=True, help="auto: the best of a few heads on the validation split "
              "(dense heads and L2-regularised linear probes; cheap on cached features).")
@click.option("--hidden", type=click_type("hidden"), default=256, show_default=True)
@click.option("--dropout", type=click_type("dropout"), default=None,
              help="Head dropout (default: 0.5 for mlp, none for linear).")
@click.option("--unfreeze", default="auto", show_default=True,
              help="Last N blocks, 'all', or 'auto' (the backbone's default: for "
              "efficientnet_lite* the last 4, the last 6 from 150 training images per class; "
              "see `graft backbones`).")
@click.option("--phase-option", "phase_option", multiple=True, metavar="PHASE.SETTING=VALUE",
              help="A setting for one phase only, e.g. finetune.lr=1e-4 (settings: epochs, lr, "
              "optimizer, schedule, patience, label_smoothing, weight_decay).")
@click.option("--lr-decay", type=click_type("lr_decay"), default=0.8, show_default=True,
              help="Learning-rate factor per block further from the head.")
@click.option("--label-smoothing", type=click_type("label_smoothing"), default=0.0,
              show_default=True)
@click.option("--weight-decay", type=click_type("weight_decay"), default=None,
              help="Weight decay, decoupled with adamw (default per phase: finetune 0.05 with "
              "adamw, else 0).")
@click.option("--train-bn", is_flag=True, help="Let unfrozen BN layers update statistics.")
@click.option("--no-augment", is_flag=True, help="Switch augmentation off.")
@click.option("--no-recalibrate", is_flag=True, help="Skip BN recalibration after training.")
@click.option("--augment-policy", type=click.Choice(["classic", "mild", "trivialwide", "none"]),
              default="mild", show_default=True,
              help="Augmentation for frozen/finetune and --aug-views: mild (rotation 10°, shift "
              "and zoom 0.1, flip; better than the classic Keras recipe in bench/quality.md), "
              "classic (rotation 40°, shifts, shear, zoom 0.2), trivialwide, none.")
@click.option("--aug-views", type=click_type("aug_views"), default=0, show_default=True,
              help="extract: K augmented views of every training image as extra features.")
@click.option("--tta", is_flag=True, help="Average each image's and its mirror's probabilities.")
@click.option("--class-weights", "class_weights_text", default=None,
              help="""Loss weight per class: 'auto' (inverse frequency) or JSON '{"cat": 2}'.""")
@click.option("--calibrate", is_flag=True, help="Fit a softmax temperature on validation.")
@click.option("--val-fraction", type=click_type("val_fraction"), default=0.2, show_default=True)
@click.option("--test-fraction", type=click_type("test_fraction"), default=0.2,
              show_default=True)
@click.option("--seed", type=click_type("seed"), default=0, show_default=True)
@click.option("--device", default="auto", show_default=True,
              help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps.")
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16", "fp16"]), default="auto",
              show_default=True, help="auto: bf16 where the hardware computes it natively "
              "(CPUs with AVX512-BF16/AMX, recent GPUs), fp16 on older GPUs, else fp32.")
@click.option("--engine", type=click.Choice(["auto", "onnx", "torch"]), default="auto",
              show_default=True, help="What runs the frozen part of the network: ONNX Runtime "
              "(when installed and the job repays an export), or eager torch.")
@click.option("--cache-dir", default=None, help="Feature cache (default ~/.cache/graftwork).")
@click.option("--workers", type=click_type("num_workers"), default=None,
              help="DataLoader workers.")
@click.option("--strict", is_flag=True, help="Any bad image is an error.")
@click.option("--resume", is_flag=True, help="Continue an interrupted run in --out.")
@click.option("--num-processes", type=click.IntRange(1, 1024), default=1, show_default=True,
              help="Local data-parallel processes (relaunches under torchrun; see "
                   "docs/scaling-out.md).")
@click.option("--logger", "loggers", multiple=True, type=click.Choice(["tensorboard"]),
              help="Also log curves for TensorBoard (RUN/tensorboard).")
@click.option("--report/--no-report", default=True, show_default=True, help="Write report.html.")
@click.option("-q", "--quiet", is_flag=True,
              help="Warnings only (progress bars show on a terminal, else a line per epoch).")
@click.option("-v", "--verbose", is_flag=True)
@_friendly
def train(data: Path, out: Path, overwrite: bool, unfreeze: str, no_augment: bool,
          no_recalibrate: bool, workers: int | None, resume: bool, num_processes: int,
          loggers: tuple[str, ...], report: bool, quiet: bool, verbose: bool,
          class_weights_text: str | None, phase_option: tuple[str, ...],
          **params: Any) -> None:
    """Train a classifier on DATA (DATA/train|val|test/<class>/ or DATA/<class>/)."""
    import contextlib

    from graftwork import rundir
    from graftwork.training.callbacks import create_loggers
    from graftwork.estimator.classifier import ImageClassifier
    from graftwork.data.transforms import AugmentConfig
    from graftwork.training.distributed import is_main_process, relaunch

    if num_processes > 1:
        relaunch(num_processes)
    main_rank = is_main_process()  # under torchrun only rank 0 writes --out

    bars = _progress_bars(quiet)
    _setup_logging(verbose, quiet, bars)
    clf = ImageClassifier(**params, unfreeze=unfreeze_value(unfreeze),
                          augment=None if no_augment else AugmentConfig(),
                          recalibrate=not no_recalibrate, num_workers=workers, progress=bars,
                          class_weights=class_weights_value(class_weights_text),
                          phase_options=phase_options_value(phase_option))
    from graftwork.estimator.fit import validate_params

    validate_params(clf.get_params(deep=False))  # before touching --out
    with rundir.RunLock(out) if main_rank else contextlib.nullcontext():
        if main_rank:
            rundir.prepare_out(out, overwrite=overwrite, resume=resume)
        try:
            clf.fit(data, checkpoint_dir=out / rundir.CHECKPOINTS_DIR
                    if main_rank or resume else None, resume=resume,
                    callbacks=create_loggers(loggers, out) if main_rank else [])
        except KeyboardInterrupt:
            click.echo(f"Interrupted. The last finished epoch is saved in "
                       f"{out / rundir.CHECKPOINTS_DIR}; run the same command with --resume to "
                       "continue.", err=True)
            sys.exit(130)
        if not main_rank:
            return
        clf.save(out)
        if report:
            build_report_quietly(out)
    click.echo(final_summary(clf, out))


def class_weights_value(text: str | None) -> str | dict[str, float] | None:
    """``--class-weights``: None, 'auto', or a JSON object of class name to weight."""
    if text is None or text == "auto":
        return text
    try:
        value = json.loads(text)
    except ValueError:
        value = None
    if not isinstance(value, dict):
        from graftwork.errors import ConfigError

        raise ConfigError(f"--class-weights {text!r} is neither 'auto' nor a JSON object",
                          """pass --class-weights auto or '{"cat": 2.0, "dog": 1.0}'""")
    return value


def final_summary(clf: Any, out: Path) -> str:
    """The one-screen summary printed after training."""
    m = clf.metrics_
    lines = [f"backbone {clf.backbone} ({clf.pretrained_weights_.source} weights), "
             f"strategy {clf.strategy}, {len(clf.classes_)} classes, splits {clf.splits_.counts()}"]
    if len(m.get("phases", [])) > 1:
        from graftwork.report import format_table

        lines.append(format_table(m["phases"], ["phase", "warm_start", "best_val_accuracy",
                                                "best_epoch", "test_accuracy", "wall_time_s",
                                                "trainable_params"]))
        kept = [p["phase"] for p in m["phases"][1:] if p.get("best_epoch") == 0]
        if kept:
            lines.append(f"{', '.join(kept)}: no epoch beat the starting weights on validation "
                         "(best_epoch 0); kept them")
    for phase, why in (m.get("skipped_phases") or {}).items():
        lines.append(f"{phase}: skipped ({why})")
    val, test = m.get("val", {}), m.get("test", {})
    if val:
        lines.append(f"val accuracy  {val['accuracy']:.4f}  loss {val['loss']:.4f}")
    if test:
        lines.append(f"test accuracy {test['accuracy']:.4f}  loss {test['loss']:.4f}")
    bn = m.get("bn", {})
    if bn.get("recalibrated"):
        lines.append(f"BN recalibrated: val accuracy {bn['val_before'].get('accuracy', 0):.4f}"
                     f" -> {bn['val_after'].get('accuracy', 0):.4f}")
    if m.get("skipped"):
        lines.append(f"skipped {m['skipped']} bad files (see {out / 'skipped.csv'})")
    feats = m.get("features", {})
    lines.append(f"time {m.get('wall_time_s', 0):.1f}s; features extracted "
                 f"{feats.get('extracted', 0)}, cached {feats.get('cached', 0)}")
    lines.append(f"saved to {out}" + (f" (report: {out / 'report.html'})"
                                       if (out / "report.html").exists() else ""))
    return "\n".join(lines)


@main.command("evaluate")
@click.argument("run", type=click.Path(path_type=Path))
@click.argument("data", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True)
@click.option("--tta/--no-tta", default=None, help="Flip test-time augmentation (default: as "
              "trained).")
@device_option
@_friendly
def evaluate_cmd(run: Path, data: Path, as_json: bool, tta: bool | None, device: str) -> None:
    """Accuracy and loss of the model in RUN on DATA (one sub-folder per class)."""
    _setup_logging(False, True)
    clf = load_classifier(run, device)
    if tta is not None:
        clf.set_params(tta=tta)
    result = clf.evaluate(data)
    if as_json:
        click.echo(json.dumps(result))
    else:
        click.echo(f"accuracy {result['accuracy']:.4f}  loss {result['loss']:.4f}  "
                   f"images {result['n']}  skipped {result['skipped']}")


@main.command()
@click.argument("run", type=click.Path(path_type=Path))
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--top-k", type=click_type("top_k"), default=1, show_default=True)
@click.option("--format", "fmt", type=click.Choice(["table", "json", "csv"]), default="table",
              show_default=True)
@click.option("--tta/--no-tta", default=None, help="Flip test-time augmentation (default: as "
              "trained).")
@device_option
@_friendly
def predict(run: Path, inputs: tuple[Path, ...], top_k: int, fmt: str,
            tta: bool | None, device: str) -> None:
    """Predict the class of image files and folders of images with the model in RUN."""
    from graftwork.rundir.files import write_csv_rows

    _setup_logging(False, True)
    clf = load_classifier(run, device)
    if tta is not None:
        clf.set_params(tta=tta)
    rows = clf.predict(list(inputs), top_k=top_k)
    if fmt == "json":
        click.echo(json.dumps(rows, indent=2))
        return
    flat = []
    for r in rows:
        row = {"path": r["path"], "label": r.get("label", ""), "prob": r.get("prob", ""),
               "error": r.get("error", "")}
        for i, t in enumerate(r.get("top_k", [])[1:], start=2):
            row[f"label_{i}"], row[f"prob_{i}"] = t["label"], t["prob"]
        flat.append(row)
    cols = list(dict.fromkeys(k for row in flat for k in row))
    if fmt == "csv":
        write_csv_rows(sys.stdout, cols, flat)
    else:
        from graftwork.report import format_table

        click.echo(format_table(flat, cols))


for _command in (*_cli_tools.COMMANDS, cli_deploy.export, cli_deploy.serve,
                 _cli_extract.extract):
    main.add_command(_command)

if __name__ == "__main__":
    main()
