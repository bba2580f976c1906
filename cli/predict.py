"""``cloudcps predict``: whole scenes to georeferenced mask GeoTIFFs."""

from __future__ import annotations

import os
from pathlib import Path

import click

from cloudcps.tiling import parse_bands

from .options import converter, device_opt, overwrite_opt, quiet, user_errors


@click.command(short_help="Predict georeferenced cloud masks for whole scenes.")
@click.argument("scenes", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--model",
    "-m",
    default="default",
    show_default=True,
    type=click.Path(path_type=Path),
    help="A run folder (its best.pt), a checkpoint file, or default (the starter cloud model "
    "that ships with cloudcps).",
)
@click.option(
    "--out",
    "-o",
    default=None,
    type=click.Path(path_type=Path),
    help="Mask file (one scene, .tif) or folder (NAME_mask.tif per scene).  "
    "[default: NAME_mask.tif beside each scene]",
)
@click.option("--tile-size", type=int, help="Window side in px.  [default: the model's tile size]")
@click.option("--overlap", type=int, help="Window overlap in px.  [default: tile size / 4]")
@click.option("--batch-size", type=int, help="Windows per pass.  [default: 4 on CUDA, 1 on CPU]")
@device_opt
@click.option("--tta", is_flag=True, help="Average over horizontal and vertical flips.")
@click.option(
    "--nets",
    type=click.Choice(["1", "2", "both"]),
    default="both",
    show_default=True,
    help="Which CPS network(s); both = mean of their softmax.",
)
@click.option(
    "--probabilities",
    is_flag=True,
    help="Also write per-class probabilities (NAME_proba.tif, uint8 = p x 255).",
)
@click.option(
    "--buffer",
    default=0,
    show_default=True,
    type=int,
    help="Grow cloud and shadow classes by this many pixels into clear pixels.",
)
@click.option(
    "--bands",
    default=None,
    callback=converter(parse_bands),
    help="R,G,B[,NIR] band numbers of the scenes.  [default: the model's]",
)
@click.option(
    "--scale",
    default=1.0,
    show_default=True,
    type=float,
    help="Multiply the scene's values by this before the model's stretch (e.g. 10000 for "
    "reflectance in 0-1; the default model expects reflectance x 10000).",
)
@click.option(
    "--offset",
    default=0.0,
    show_default=True,
    type=float,
    help="Add this after --scale (e.g. -1000 for Sentinel-2 L2A of processing baseline 04.00+).",
)
@overwrite_opt
@click.pass_context
@user_errors
def predict(
    ctx: click.Context,
    /,
    scenes: tuple[Path, ...],
    model: Path,
    out: Path | None,
    tile_size: int | None,
    overlap: int | None,
    batch_size: int | None,
    device: str | None,
    tta: bool,
    nets: str,
    probabilities: bool,
    buffer: int,
    bands: tuple[int, ...] | None,
    scale: float,
    offset: float,
    overwrite: bool,
) -> None:
    """Predict cloud masks for whole scenes by sliding windows, blended without seams.

    The checkpoint's data contract (bands, stretch, normalisation, classes) is applied, so the
    scene is read exactly as the training tiles were. The mask GeoTIFF keeps the scene's CRS,
    transform and size, marks nodata as 255, and carries a colour table, the class names and the
    per-class cover (also in NAME.json beside it).

    Without --model the starter cloud model that ships with cloudcps is used (trained on
    L8 Biome and On Cloud N; it expects reflectance x 10000, see docs/model.md); without --out
    the mask is written beside the scene as NAME_mask.tif.

    \b
    $ cloudcps predict scene.tif
    $ cloudcps predict scene.tif --model runs/cps --out scene_mask.tif
    """
    from cloudcps.cps import pick_device
    from cloudcps.errors import InputError
    from cloudcps.models import load_for_inference
    from cloudcps.predict import PredictOptions, output_paths, predict_scene

    if buffer < 0:
        raise InputError(f"--buffer {buffer} must be >= 0")
    dev = pick_device(device or "auto")
    loaded = load_for_inference(model, nets=nets, device=dev)
    masks = output_paths(scenes, out)
    opts = PredictOptions(
        tile_size, overlap, batch_size, tta, probabilities, buffer, bands, overwrite, scale, offset
    )
    from cloudcps.io import check_writable

    for m in masks:  # refuse before computing anything
        check_writable(m, overwrite, "--out" if out is not None else "mask")
        if out is None and not os.access(m.parent, os.W_OK):
            raise InputError(
                f"cannot write {m.name} beside the scene: {m.parent} is not writable; give "
                "--out FILE_OR_FOLDER"
            )
    if out is not None and (len(scenes) > 1 or out.suffix.lower() not in (".tif", ".tiff")):
        out.mkdir(parents=True, exist_ok=True)
    for scene, mask in zip(scenes, masks, strict=True):
        res = predict_scene(scene, loaded, mask, opts, dev, progress=not quiet(ctx))
        if not quiet(ctx):
            cover = ", ".join(f"{k} {v:.1f}%" for k, v in res.cover_percent.items())
            click.echo(f"{scene} -> {res.mask} ({res.seconds:.1f} s): {cover}")
