"""``graft extract``: fill the feature cache for DATA, or one shard of it, ahead of ``graft train``.

Run it as N processes (a SLURM array, torchrun, or by hand with ``--shard i/N``) on one cache;
a later ``graft train`` with the same backbone, weights and image size extracts nothing.
"""
from __future__ import annotations

from pathlib import Path

import click

from graftwork.cli.common import _friendly, _progress_bars, _setup_logging
from graftwork.params import click_type

__all__ = ["extract"]


@click.command()
@click.argument("data", type=click.Path(path_type=Path))
@click.option("--backbone", default="efficientnet_lite0", show_default=True)
@click.option("--weights", default=None, help="Weights file (safetensors/state dict) or 'random'.")
@click.option("--image-size", type=click_type("image_size"), default=None,
              help="Input size (default: the backbone's); use the same as for `graft train`.")
@click.option("--cache-dir", default=None, help="Feature cache (default ~/.cache/graftwork).")
@click.option("--shard", default=None, metavar="I/N",
              help="Extract shard I of N (every N-th file by path). Default: from "
                   "$SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT or torchrun's $RANK/$WORLD_SIZE, "
                   "else all files.")
@click.option("--engine", type=click.Choice(["auto", "onnx", "torch", "ray"]), default="auto",
              show_default=True, help="What runs the backbone (ray: Ray Data actors).")
@click.option("--address", default=None,
              help="Ray cluster address for --engine ray (default: a local Ray).")
@click.option("--workers", type=click_type("num_workers"), default=None,
              help="Decode processes (with --engine ray: backbone actors).")
@click.option("--batch-size", type=click_type("batch_size"), default=64, show_default=True)
@click.option("--seed", type=click_type("seed"), default=0, show_default=True,
              help="As for `graft train` (with --weights random it picks the network).")
@click.option("-q", "--quiet", is_flag=True)
@click.option("-v", "--verbose", is_flag=True)
@_friendly
def extract(data: Path, backbone: str, weights: str | None, image_size: int | None,
            cache_dir: str | None, shard: str | None, engine: str, address: str | None,
            workers: int | None, batch_size: int, seed: int, quiet: bool, verbose: bool) -> None:
    """Extract backbone features of DATA's images (all splits) into the cache."""
    from graftwork.features.folder import extract_folder, parse_shard, shard_from_env

    _setup_logging(verbose, quiet)
    part = parse_shard(shard) if shard else shard_from_env()
    result = extract_folder(data, backbone, weights, image_size, cache_dir, shard=part,
                            engine=engine, batch_size=batch_size, num_workers=workers,
                            progress=_progress_bars(quiet), address=address,
                            seed=seed)
    total = result.extracted + result.cached
    click.echo(f"shard {part[0]}/{part[1]}: {total} images, {result.extracted} extracted, "
               f"{result.cached} cached, {len(result.skipped)} skipped in {result.seconds:.1f}s"
               + (f" ({result.engine})" if result.engine else ""))
