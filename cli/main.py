"""The ``cloudcps`` command group."""

from __future__ import annotations

import logging

import click

from cloudcps import __version__

from .demo import demo
from .evaluate import evaluate
from .predict import predict
from .tile import tile
from .train import train


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="cloudcps")
@click.option("-v", "--verbose", count=True, help="More log output (repeat for debug).")
@click.option("-q", "--quiet", count=True, help="Less output: warnings and errors only.")
@click.pass_context
def cli(ctx: click.Context, verbose: int, quiet: int) -> None:
    """Cloud and cloud-shadow masking for 4-band satellite scenes with Cross Pseudo Supervision.

    \b
    tile      cut scenes into 8-bit RGB tiles, labels, a manifest and split lists
    train     train two networks with CPS (or the supervised baseline)
    predict   write a georeferenced mask GeoTIFF for whole scenes
    evaluate  score a model or mask rasters: IoU, F1, confusion matrix, plots
    demo      run the whole pipeline on generated scenes, offline
    """
    level = logging.INFO - 10 * verbose + 10 * quiet
    logging.basicConfig(level=max(logging.DEBUG, level), format="%(levelname)s: %(message)s")
    logging.getLogger().setLevel(max(logging.DEBUG, level))
    # GDAL's own chatter (e.g. "not recognized as a supported file format") repeats our errors.
    logging.getLogger("rasterio").setLevel(max(logging.WARNING, level))
    ctx.ensure_object(dict)
    ctx.obj["quiet"] = quiet > 0


cli.add_command(tile)
cli.add_command(train)
cli.add_command(predict)
cli.add_command(evaluate)
cli.add_command(demo)


if __name__ == "__main__":
    cli()
