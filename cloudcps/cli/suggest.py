"""``cloudcps suggest``: which tiles to label next."""

from __future__ import annotations

from pathlib import Path

import click

from .options import backend_opt, device_opt, overwrite_opt, quiet, user_errors


@click.command(short_help="Rank unlabelled tiles by uncertainty: which to label next.")
@click.option(
    "--model",
    "-m",
    required=True,
    type=click.Path(path_type=Path),
    help="A run folder (its best.pt) or checkpoint trained on tiles with these classes.",
)
@click.option(
    "--data",
    required=True,
    type=click.Path(path_type=Path),
    help="A tile folder written by cloudcps tile.",
)
@click.option(
    "--split",
    default="unlabeled",
    show_default=True,
    help="The split list whose tiles are scored (splits/NAME.txt).",
)
@click.option("--count", "-n", default=20, show_default=True, type=int, help="Tiles to suggest.")
@click.option(
    "--per-scene",
    type=int,
    default=None,
    help="Tiles of one scene at most.  [default: count / scenes in the split, rounded up]",
)
@click.option(
    "--nets",
    type=click.Choice(["1", "2", "both"]),
    default="both",
    show_default=True,
    help="both: the two CPS networks' disagreement; 1 or 2: that network's entropy (also what a "
    "checkpoint of one network gets).",
)
@backend_opt
@device_opt
@click.option("--threads", type=click.IntRange(min=1), default=None, help="CPU threads.")
@click.option("--out", "-o", required=True, type=click.Path(path_type=Path), help="Output folder.")
@overwrite_opt
@click.pass_context
@user_errors
def suggest(
    ctx: click.Context,
    /,
    model: Path,
    data: Path,
    split: str,
    count: int,
    per_scene: int | None,
    nets: str,
    backend: str,
    device: str | None,
    threads: int | None,
    out: Path,
    overwrite: bool,
) -> None:
    """Score every tile of a split by how unsure the model is there and suggest the few to label
    next, spread over the scenes.

    The uncertainty is the two CPS networks' disagreement (Jensen-Shannon divergence of their
    softmax; with --nets 1|2 or a single-network checkpoint: the normalised entropy), weighted
    toward the classes the model predicts rarely over the split (thin cloud and shadow, usually:
    weight 1 / sqrt(share)), averaged over the tile. Tiles are taken by score, at most
    --per-scene of a scene and none touching another chosen tile; README.md says why.

    Writes to --out: suggestions.csv (rank, tile, scene, window, score, predicted class
    shares), suggestions.geojson (footprints in EPSG:4326 for QGIS; null geometry for scenes
    without a CRS), suggestions.png (RGB, mask, uncertainty of the top tiles) and labels/TILE.tif:
    per suggested tile a label GeoTIFF on its grid, the predicted classes with 255 where the
    model is unsure. Correct them (class ids; 255 = unlabelled) and tile again with
    --label-dir OUT/labels: the tiles join the labelled split, and the manifest records the
    round of their labels.

    \b
    $ cloudcps suggest --model runs/cps --data tiles --count 20 --out round1
    $ cloudcps tile scenes/*.tif --label-dir labels --label-dir round1/labels --out tiles-r1
    """
    from cloudcps.suggest import SuggestOptions, suggest_from_run

    opts = SuggestOptions(split=split, count=count, per_scene=per_scene, overwrite=overwrite)
    res = suggest_from_run(
        model, data, out, opts, nets, backend, device, threads, progress=not quiet(ctx)
    )
    if quiet(ctx):
        return
    click.echo(
        f"scored {res.scored} tiles ({res.measure}); suggested {len(res.chosen)} for label round "
        f"{res.label_round} -> {res.out}"
    )
    for c in res.chosen[:10]:
        click.echo(f"  #{c.rank} {c.tile['id']} score {c.score:.4f}")
