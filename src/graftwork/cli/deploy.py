"""``graft export`` and ``graft serve``: deployment commands, registered by ``graftwork.cli``."""
from __future__ import annotations

from pathlib import Path

import click

from graftwork.cli.common import _friendly, _setup_logging
from graftwork.cli.options import param_option

__all__ = ["export", "serve"]


@click.command()
@click.argument("run", type=click.Path(path_type=Path))
@param_option("export_format")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Output file [default: RUN/export/model.onnx or model.pt].")
@click.option("--check-images", type=click.Path(path_type=Path), multiple=True,
              help="Images to verify the export on when the run has no readable test images.")
@_friendly
def export(run: Path, fmt: str, out: Path | None, check_images: tuple[Path, ...]) -> None:
    """Export RUN to one self-contained file (uint8 RGB [N,H,W,3] in; logits, probs out),
    verified against the torch model; NAME.labels.txt and NAME.preprocess.json (which says how
    to decode, resize and crop an image for it) are written beside NAME.onnx or NAME.pt."""
    from graftwork.deploy.export import export_model

    _setup_logging(False, True)
    res = export_model(run, fmt, out, check_images=list(check_images) or None)
    click.echo(f"wrote {res.path} ({res.format}, {res.path.stat().st_size / 1e6:.1f} MB)")
    click.echo(f"labels: {res.labels_path}   preprocessing: {res.preprocess_path}")
    click.echo(f"check: {res.n_images} {res.image_source} images at batch sizes "
               f"{', '.join(map(str, res.batch_sizes))}: max |logit diff| "
               f"{res.max_abs_logit_diff:.2e}, top-1 agreement {res.agreement:.1%}")


@click.command()
@click.argument("run", type=click.Path(path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535))
@click.option("--max-bytes", default="10MB", show_default=True,
              help="Largest request body accepted (e.g. 10MB, 512KB).")
@click.option("--max-files", default=16, show_default=True, type=click.IntRange(1, 1024),
              help="Most images in one request.")
@click.option("--top-k", default=3, show_default=True, type=click.IntRange(1, 1000))
@click.option("-v", "--verbose", is_flag=True, help="Log every request.")
@_friendly
def serve(run: Path, host: str, port: int, max_bytes: str, max_files: int, top_k: int,
          verbose: bool) -> None:
    """Serve RUN over HTTP: POST /predict, GET /health, and a page at /."""
    from graftwork.deploy.serve import parse_size, serve as run_server

    _setup_logging(verbose, False)
    run_server(run, host, port, max_bytes=parse_size(max_bytes), max_files=max_files,
               top_k=top_k, log_level="info" if verbose else "warning")
