"""``graft extract``: fill the feature cache for DATA, or one shard of it, ahead of ``graft train``.

Run it as N processes (a SLURM array, torchrun, or by hand with ``--shard i/N``) on one cache;
a later ``graft train`` with the same backbone, weights and image size extracts nothing.
"""
from __future__ import annotations

from pathlib import Path

import click

from graftwork.cli.common import _friendly, _progress_bars, _setup_logging
from graftwork.cli.options import param_option

__all__ = ["extract"]


@click.command()
@click.argument("data", type=click.Path(path_type=Path))
@param_option("backbone")
@param_option("weights")
@param_option("image_size", help="Input size (default: the backbone's); use the same as for "
              "`graft train`.")
@param_option("cache_dir")
@param_option("shard")
@param_option("engine", help="What runs the backbone (ray: Ray Data actors).")
@param_option("address")
@param_option("num_workers", help="Decode processes (with --engine ray: backbone actors).")
@param_option("batch_size", default=64)
@param_option("seed", help="As for `graft train` (with --weights random it picks the network).")
@param_option("quiet")
@param_option("verbose")
@_friendly
def extract(data: Path, backbone: str, weights: str | None, image_size: int | None,
            cache_dir: str | None, shard: str | None, engine: str, address: str | None,
            num_workers: int | None, batch_size: int, seed: int, quiet: bool,
            verbose: bool) -> None:
    """Extract backbone features of DATA's images (all splits) into the cache."""
    from graftwork.features.folder import extract_folder, parse_shard, shard_from_env

    _setup_logging(verbose, quiet)
    part = parse_shard(shard) if shard else shard_from_env()
    result = extract_folder(data, backbone, weights, image_size, cache_dir, shard=part,
                            engine=engine, batch_size=batch_size, num_workers=num_workers,
                            progress=_progress_bars(quiet), address=address,
                            seed=seed)
    total = int(result.ok.sum())  # usable images (several files may share one content)
    if result.skipped and not total:
        from graftwork.errors import DataError

        first = result.skipped[0]
        raise DataError(f"none of the {len(result.skipped)} files of {str(data)!r} (shard "
                        f"{part[0]}/{part[1]}) could be used (e.g. {first.path}: "
                        f"{first.reason})", "fix or replace the images")
    click.echo(f"shard {part[0]}/{part[1]}: {total} images, {result.extracted} extracted, "
               f"{result.cached} cached, {len(result.skipped)} skipped in {result.seconds:.1f}s"
               + (f" ({result.engine})" if result.engine else ""))
