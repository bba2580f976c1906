"""``cloudcps tile``: scenes to 8-bit RGB tiles, label tiles, a manifest and split lists."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from cloudcps.contract import DEFAULT_CLASSES, parse_bands, parse_label_map, parse_stretch
from cloudcps.tiling import TileOptions, summary_lines, tile_scenes

from .options import (
    band_files_opt,
    converter,
    offset_opt,
    overwrite_opt,
    quiet,
    scale_opt,
    user_errors,
)


def _classes(text: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    if len(names) < 2:
        raise ValueError("give at least two class names, comma-separated")
    return names


@click.command(short_help="Cut scenes into RGB tiles, label tiles, a manifest and splits.")
@click.argument("scenes", nargs=-1, type=click.Path(path_type=Path))
@click.option("--out", "-o", required=True, type=click.Path(path_type=Path), help="Output folder.")
@click.option(
    "--label-dir",
    multiple=True,
    type=click.Path(path_type=Path),
    help="Folder of label rasters named like their scenes (repeatable).",
)
@click.option(
    "--bands",
    default=None,
    callback=converter(parse_bands),
    help="1-based band numbers of R,G,B,NIR in the scenes (R,G,B for files without NIR).  "
    "[default: by the files' band names (B04,B03,B02,B08; red, green, blue, nir), else "
    "1,2,3,4; a product's own]",
)
@band_files_opt
@scale_opt
@offset_opt
@click.option(
    "--label-map",
    default=None,
    callback=converter(parse_label_map),
    help="Source label codes to class ids, e.g. 128:0,255:1,192:2,64:3 (L8 Biome); a code may "
    "map to a set of classes, e.g. 0:0|3,1:1|2 for a cloud / not-cloud label (partial labels).",
)
@click.option(
    "--unknown-labels",
    type=click.Choice(["error", "ignore"]),
    default="error",
    show_default=True,
    help="What to do with label values missing from --label-map.",
)
@click.option(
    "--classes",
    default=",".join(DEFAULT_CLASSES),
    show_default=True,
    callback=converter(_classes),
    help="Class names in id order.",
)
@click.option("--tile-size", default=1024, show_default=True, type=int, help="Tile side in pixels.")
@click.option(
    "--overlap", default=0, show_default=True, type=int, help="Overlap between tiles (px)."
)
@click.option(
    "--stretch",
    default="auto",
    show_default=True,
    callback=converter(parse_stretch),
    help="auto[:P_LOW:P_HIGH] (percentiles over all scenes), none, MIN:MAX, or MIN:MAX per band.",
)
@click.option(
    "--gamma",
    default=1.0,
    show_default=True,
    type=float,
    help="Gamma of the stretch (2 brightens dark ground while keeping bright clouds apart).",
)
@click.option(
    "--labeled-fraction",
    default=1 / 16,
    show_default="0.0625",
    type=float,
    help="Share of labelled training tiles kept as labelled; the rest become unlabelled.",
)
@click.option(
    "--val", multiple=True, help="A labelled scene (path or file name) to hold out (repeatable)."
)
@click.option(
    "--val-fraction",
    default=0.0,
    type=float,
    help="Share of labelled scenes drawn as validation scenes (instead of --val).",
)
@click.option(
    "--cover-classes/--no-cover-classes",
    default=True,
    show_default=True,
    help="Make every class of the training labels appear in the labelled subset where possible.",
)
@click.option(
    "--min-valid",
    default=0.1,
    show_default=True,
    type=float,
    help="Skip tiles with a smaller share of valid (not nodata) pixels.",
)
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the splits.")
@click.option("--workers", default=1, show_default=True, type=int, help="Scenes tiled in parallel.")
@click.option(
    "--format",
    "image_format",
    type=click.Choice(["jpg", "png"]),
    default="jpg",
    show_default=True,
    help="Image tile format.",
)
@click.option("--quality", default=95, show_default=True, type=int, help="JPEG quality.")
@click.option(
    "--clear",
    "clear",
    multiple=True,
    type=click.Path(path_type=Path),
    help="A scene known to be cloud-free (a catalogue cloud cover of 0 %): tiled with every "
    "valid pixel labelled clear. Repeatable; need not be listed among SCENES.",
)
@overwrite_opt
@click.pass_context
@user_errors
def tile(ctx: click.Context, /, scenes: tuple[Path, ...], out: Path, **flags: Any) -> None:
    """Cut 4-band scenes into 8-bit RGB tiles (NIR dropped), aligned label tiles, a
    manifest that keeps each tile's georeferencing, and labeled/unlabeled/val split lists.

    One stretch is used for the whole dataset and recorded in the manifest, so training and
    prediction read scenes the same way. Label rasters are found in --label-dir by the scene's
    file name. Validation is chosen by whole scene.

    \b
    $ cloudcps tile scenes/*.tif --label-dir labels --label-map 128:0,255:1,192:2,64:3 \\
        --val scenes/a.tif --out tiles
    $ cloudcps tile scenes/*.tif --label-dir labels --clear clear/LC08_*.tif --out tiles
    $ cloudcps tile downloads/*.SAFE downloads/LC08_L1TP_*.tar --out unlabelled-tiles

    Scenes may also be products as downloaded (Sentinel-2 SAFE/.zip, Landsat Collection 2
    folders/.tar, STAC items) or --band-files; see cloudcps predict --help.
    """
    summary = tile_scenes(scenes, out, _tile_options(flags), progress=not quiet(ctx))
    if not quiet(ctx):
        for line in summary_lines(summary, flags["min_valid"]):
            click.echo(line)


# flags named unlike their TileOptions field
_FIELDS = {"label_dir": "label_dirs", "min_valid": "min_valid_fraction", "quality": "jpeg_quality"}


def _tile_options(flags: dict[str, Any]) -> TileOptions:
    """The flags of ``cloudcps tile`` (but SCENES and --out) as :class:`TileOptions`: one to one,
    a few renamed; --scale / --offset not given are 1 / 0."""
    fields = {_FIELDS.get(name, name): value for name, value in flags.items()}
    fields["scale"] = 1.0 if fields["scale"] is None else fields["scale"]
    fields["offset"] = 0.0 if fields["offset"] is None else fields["offset"]
    return TileOptions(**fields)
