"""``graft``: a thin command-line layer over the Python API, one library call per command.

Library errors (``GraftError``) and usage errors become ``Error: ...`` + ``Fix: ...`` and exit
code 2, never a traceback. Every option of ``graft train`` is generated from the one options
table (:data:`graftwork.params.PARAMS`, with ``graftwork.cli.options.param_option``): ranges,
defaults, help, and choices read from the registries (``--strategy`` from the phases,
``--engine`` from the engines, ...) when parsing, so an entry registered after import is one.
"""
from __future__ import annotations

import atexit
import contextlib
import functools
import gc
import json
import shutil
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from graftwork.cli import extract as _cli_extract
from graftwork.cli import audit as _cli_audit
from graftwork.cli import tools as _cli_tools
from graftwork.cli import deploy as cli_deploy
from graftwork.cli.common import (_friendly, _progress_bars, _setup_logging, build_report_quietly,
                                  device_option, echo_json, load_classifier, phase_options_value,
                                  unfreeze_value)
from graftwork.cli.options import param_option



class _Graft(click.Group):
    """The command group: usage errors too become one ``Error:`` and one ``Fix:`` line."""

    def main(self, *args: Any, **kwargs: Any) -> Any:
        kwargs["standalone_mode"] = False
        try:
            code = super().main(*args, **kwargs)
        except click.UsageError as exc:
            cmd = exc.ctx.command_path if exc.ctx else "graft"
            click.echo(f"Error: {exc.format_message()}", err=True)
            fix = getattr(exc, "fix", None)  # set by the options table's choices
            click.echo(f"Fix: {fix}" if fix else f"Fix: see `{cmd} --help` for the allowed "
                       "values", err=True)
            sys.exit(2)
        except click.ClickException as exc:
            click.echo(f"Error: {exc.format_message()}", err=True)
            click.echo("Fix: see `graft --help`", err=True)
            sys.exit(exc.exit_code)
        except click.Abort:
            click.echo("Aborted.", err=True)
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)


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
@param_option("backbone")
@param_option("strategy")
@param_option("out")
@param_option("overwrite")
@param_option("weights")
@param_option("epochs")
@param_option("image_size")
@param_option("batch_size")
@param_option("lr")
@param_option("optimizer")
@param_option("schedule")
@param_option("patience")
@param_option("head")
@param_option("hidden")
@param_option("dropout")
@param_option("unfreeze")
@param_option("phase_options")
@param_option("lr_decay")
@param_option("label_smoothing")
@param_option("weight_decay")
@param_option("train_bn")
@param_option("no_augment")
@param_option("no_recalibrate")
@param_option("augment_policy")
@param_option("aug_views")
@param_option("tta")
@param_option("class_weights")
@param_option("calibrate")
@param_option("refit")
@param_option("val_fraction")
@param_option("test_fraction")
@param_option("seed")
@param_option("device")
@param_option("precision")
@param_option("engine")
@param_option("cache_dir")
@param_option("exclude")
@param_option("num_workers")
@param_option("strict")
@param_option("resume")
@param_option("num_processes")
@param_option("loggers")
@param_option("report")
@param_option("quiet")
@param_option("verbose")
@_friendly
def train(data: Path, out: Path, overwrite: bool, unfreeze: str, no_augment: bool,
          no_recalibrate: bool, resume: bool, num_processes: int,
          loggers: tuple[str, ...], report: bool, quiet: bool, verbose: bool,
          class_weights_text: str | None, phase_option: tuple[str, ...],
          **params: Any) -> None:
    """Train a classifier on DATA (DATA/train|val|test/<class>/ or DATA/<class>/)."""
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
                          recalibrate=not no_recalibrate, progress=bars,
                          class_weights=class_weights_value(class_weights_text),
                          phase_options=phase_options_value(phase_option))
    from graftwork.estimator.validate import validate_params

    validate_params(clf.get_params(deep=False))  # before touching --out
    if main_rank:
        from graftwork.features.cache import cache_root

        rundir.check_out_place(out, data, cache_root(params.get("cache_dir")))
    with rundir.RunLock(out) if main_rank else contextlib.nullcontext(), _sigterm_interrupts():
        if main_rank:
            target = rundir.prepare_out(out, overwrite=overwrite, resume=resume)
        else:
            target = out / rundir.STAGING_DIR if overwrite else out
        try:
            clf.fit(data, checkpoint_dir=target / rundir.CHECKPOINTS_DIR
                    if main_rank or resume else None, resume=resume,
                    callbacks=create_loggers(loggers, target) if main_rank else [])
        except KeyboardInterrupt as exc:
            click.echo(_interrupted(exc, out, target), err=True)
            sys.exit(143 if isinstance(exc, Terminated) else 130)
        except BaseException:
            if main_rank and target != out and not any(target.rglob("*.pt")):
                shutil.rmtree(target, ignore_errors=True)  # nothing to resume: the old run stays
            raise
        if not main_rank:
            return
        clf.save(target)
        if target != out:
            rundir.commit(out, target)  # the complete new run replaces the old one
        if report:
            build_report_quietly(out)
    click.echo(final_summary(clf, out))


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread like Ctrl-C: the same clean-up, the same message."""


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """While training, SIGTERM (``kill``, a scheduler's stop, ``docker stop``) ends the run as
    Ctrl-C does: the last finished epoch stays in the checkpoints, resumable."""
    def terminate(signum: int, frame: Any) -> None:
        raise Terminated()

    try:
        previous = signal.signal(signal.SIGTERM, terminate)
    except ValueError:  # not the main thread: leave the signal as it is
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _interrupted(exc: BaseException, out: Path, target: Path) -> str:
    """What an interrupted (Ctrl-C) or terminated (SIGTERM) training says: where the last
    finished epoch is and how to continue."""
    from graftwork import rundir

    what = "Terminated (SIGTERM)." if isinstance(exc, Terminated) else "Interrupted."
    checkpoints = target / rundir.CHECKPOINTS_DIR
    if not any(checkpoints.glob("*.pt")):
        if target != out:
            shutil.rmtree(target, ignore_errors=True)
            return f"{what} No epoch had finished; {out} still holds the previous run, unchanged."
        return f"{what} No epoch had finished: run the same command to start again."
    if target == out:
        return (f"{what} The last finished epoch is saved in {checkpoints}; run the same command "
                "with --resume to continue.")
    return (f"{what} {out} still holds the previous run, unchanged. The new run's last finished "
            f"epoch is saved in {checkpoints}; run the same command with --resume added to "
            "continue it (it replaces the previous run once it is complete).")


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
    """The one-screen summary printed after training: accuracies with their 95% intervals,
    and for a ladder which rung was kept and why (the paired test on validation)."""
    from graftwork.report import fmt_acc_ci, format_table

    m = clf.metrics_
    lines = [f"backbone {clf.backbone} ({clf.pretrained_weights_.source} weights), "
             f"strategy {clf.strategy}, {len(clf.classes_)} classes, splits {clf.splits_.counts()}"]
    if len(m.get("phases", [])) > 1:
        rows = [{**p, "best_val_accuracy": fmt_acc_ci(p.get("best_val_accuracy"),
                                                 p.get("val_accuracy_ci")),
                 "test_accuracy": fmt_acc_ci(p.get("test_accuracy"), p.get("test_accuracy_ci")),
                 "vs_kept": p.get("vs_kept") or "-"} for p in m["phases"]]
        lines.append(format_table(rows, ["phase", "warm_start", "best_val_accuracy", "vs_kept",
                                         "best_epoch", "test_accuracy", "wall_time_s",
                                         "trainable_params"]))
        kept = [p["phase"] for p in m["phases"][1:] if p.get("best_epoch") == 0]
        if kept:
            lines.append(f"{', '.join(kept)}: no epoch beat the starting weights on validation "
                         "(best_epoch 0); kept them")
    lines += [f"warning: {w}" for w in m.get("warnings") or []]
    for phase, why in (m.get("skipped_phases") or {}).items():
        lines.append(f"{phase}: skipped ({why})")
    keep = m.get("keep") or {}
    for decision in keep.get("decisions", [])[1:]:
        lines.append(decision.get("text", ""))
    if keep.get("kept"):
        lines.append(f"kept model: {keep['kept']} (a costlier rung is kept only when it is "
                     "significantly better on the validation images)")
    if (m.get("refit") or {}).get("text"):
        lines.append(m["refit"]["text"])
    val, test = m.get("val", {}), m.get("test", {})
    for name, score in (("val accuracy ", val), ("test accuracy", test)):
        if score:
            acc = fmt_acc_ci(score["accuracy"], score.get("accuracy_ci"), score.get("n"))
            lines.append(f"{name} {acc}  loss {score['loss']:.4f}")
    if val or test:
        lines.append("[low, high]: 95% interval (Wilson) of each accuracy on its n images")
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
        echo_json(result)
    else:
        from graftwork.report import fmt_acc_ci

        click.echo(f"accuracy {fmt_acc_ci(result['accuracy'], result.get('accuracy_ci'))}  "
                   f"loss {result['loss']:.4f}  images {result['n']}  skipped "
                   f"{result['skipped']}  ([low, high]: 95% interval)")
        click.echo(f"scored: {result['scored']}")


@main.command()
@click.argument("run", type=click.Path(path_type=Path))
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
@param_option("top_k")
@param_option("output_format")
@click.option("--tta/--no-tta", default=None, help="Flip test-time augmentation (default: as "
              "trained).")
@device_option
@_friendly
def predict(run: Path, inputs: tuple[Path, ...], top_k: int, fmt: str,
            tta: bool | None, device: str) -> None:
    """Predict the class of image files and folders of images with the model in RUN."""
    _setup_logging(False, True)
    clf = load_classifier(run, device)
    if tta is not None:
        clf.set_params(tta=tta)
    rows = clf.predict(list(inputs), top_k=top_k)
    _print_predictions(rows, fmt)
    failed = [r for r in rows if "error" in r]
    if len(failed) == len(rows):
        from graftwork.errors import DataError

        raise DataError(f"none of the {len(rows)} files could be predicted (e.g. "
                        f"{failed[0]['path']}: {failed[0]['error']})",
                        "fix or replace the images (each row above gives its reason)")


def _print_predictions(rows: list[dict[str, Any]], fmt: str) -> None:
    """``graft predict``'s rows as JSON, CSV or a table (an ``error`` column for bad files)."""
    from graftwork.rundir.files import write_csv_rows

    if fmt == "json":
        echo_json(rows, indent=2)
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
                 _cli_extract.extract, _cli_audit.audit):
    main.add_command(_command)

if __name__ == "__main__":
    main()
