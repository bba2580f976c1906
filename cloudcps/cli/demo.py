"""``cloudcps demo``: the whole pipeline on generated scenes, offline."""

from __future__ import annotations

from pathlib import Path

import click

from .options import device_opt, overwrite_opt, quiet, user_errors


@click.command(short_help="Run the whole pipeline on generated scenes (offline).")
@click.option(
    "--out",
    "-o",
    default="demo-run",
    show_default=True,
    type=click.Path(path_type=Path),
    help="Folder for scenes, tiles, runs, masks and the report.",
)
@click.option(
    "--quick", is_flag=True, help="A smoke test: smaller data and budget (< 3 min on CPU)."
)
@click.option("--seed", default=0, show_default=True, type=int)
@device_opt
@overwrite_opt
@click.pass_context
@user_errors
def demo(
    ctx: click.Context, /, out: Path, quick: bool, seed: int, device: str | None, overwrite: bool
) -> None:
    """Generate georeferenced 4-band scenes with exact labels (fields, forest, soil, water,
    towns; thick and thin clouds; cast shadows), tile them with 1/16 labelled, train the
    supervised baseline and CPS with the same budget, predict a held-out scene to a mask
    GeoTIFF with each, and evaluate both against its labels. Needs no data and no network.
    Default budget: about 12 minutes on 2 CPU cores; on a GPU it is used automatically.

    \b
    $ cloudcps demo --out demo-run
    $ cloudcps demo --quick --out demo-quick
    """
    from cloudcps.demo import format_result, run_demo

    res = run_demo(
        out,
        quick=quick,
        device=device or "auto",
        seed=seed,
        overwrite=overwrite,
        progress=not quiet(ctx),
        say=lambda m: click.echo(m, err=True),
    )
    for line in format_result(res):
        click.echo(line)
