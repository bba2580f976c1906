"""The ``cloudcps`` command group."""

from __future__ import annotations

import contextlib
import logging
import signal
import warnings

import click

from cloudcps import __version__

from .demo import demo
from .evaluate import evaluate
from .predict import predict
from .suggest import suggest
from .tile import tile
from .train import train


class CloudGroup(click.Group):
    """Usage errors (a bad option value, a missing argument) are one line with exit status 1,
    like every other error, instead of click's usage block and status 2."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except click.UsageError as exc:
            sub = f" {ctx.invoked_subcommand}" if ctx.invoked_subcommand else ""
            raise click.ClickException(
                f"{exc.format_message()} (see: cloudcps{sub} --help)"
            ) from None


@click.group(cls=CloudGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="cloudcps")
@click.option("-v", "--verbose", count=True, help="More log output (repeat for debug).")
@click.option("-q", "--quiet", count=True, help="Less output: warnings and errors only.")
@click.option("--debug", is_flag=True, help="Show the traceback of an error instead of one line.")
@click.pass_context
def cli(ctx: click.Context, verbose: int, quiet: int, debug: bool) -> None:
    """Cloud and cloud-shadow masking for 4-band satellite scenes with Cross Pseudo Supervision.

    \b
    tile      cut scenes into 8-bit RGB tiles, labels, a manifest and split lists
    train     train two networks with CPS (or the supervised baseline)
    predict   write a georeferenced mask GeoTIFF for whole scenes
    evaluate  score a model or mask rasters: IoU, F1, confusion matrix, plots
    suggest   rank unlabelled tiles by uncertainty: which to label next
    demo      run the whole pipeline on generated scenes, offline
    """
    level = logging.INFO - 10 * verbose + 10 * quiet
    logging.basicConfig(level=max(logging.DEBUG, level), format="%(levelname)s: %(message)s")
    logging.getLogger().setLevel(max(logging.DEBUG, level))
    # GDAL's own chatter (e.g. "not recognized as a supported file format") repeats our errors.
    logging.getLogger("rasterio").setLevel(max(logging.WARNING, level))
    ctx.ensure_object(dict)
    ctx.obj["quiet"] = quiet > 0
    ctx.obj["debug"] = debug
    # Python warnings go through logging (one line, "WARNING: ..."), not as raw warnings
    logging.captureWarnings(True)
    warnings.simplefilter("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", module="torch.*")
    warnings.filterwarnings("ignore", category=UserWarning, module="segmentation_models_pytorch")
    warnings.filterwarnings("ignore", message=".*NotGeoreferencedWarning.*")
    from rasterio.errors import NotGeoreferencedWarning

    warnings.simplefilter("ignore", NotGeoreferencedWarning)
    install_signal_handlers()


def install_signal_handlers() -> None:
    """SIGTERM (what kill, schedulers and timeouts send) ends a command like Ctrl-C, so every
    temporary file is removed on the way out instead of being left behind."""

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    with contextlib.suppress(ValueError):  # not the main thread (e.g. a test runner's thread)
        signal.signal(signal.SIGTERM, on_term)


cli.add_command(tile)
cli.add_command(train)
cli.add_command(predict)
cli.add_command(evaluate)
cli.add_command(suggest)
cli.add_command(demo)


if __name__ == "__main__":
    cli()
