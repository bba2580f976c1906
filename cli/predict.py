"""``cloudcps predict``: whole scenes to georeferenced mask GeoTIFFs."""

from __future__ import annotations

from pathlib import Path

import click

from cloudcps.tiling import parse_bands

from .options import converter, device_opt, overwrite_opt, quiet, user_errors


@click.command(short_help="Predict georeferenced cloud masks for whole scenes.")
@click.argument("scenes", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--model",
    "-m",
    required=True,
    type=click.Path(path_type=Path),
    help="A run folder (its best.pt) or a checkpoint file.",
)
@click.option(
    "--out",
    "-o",
    required=True,
    type=click.Path(path_type=Path),
    help="Mask file (one scene, .tif) or folder (NAME_mask.tif per scene).",
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
@overwrite_opt
@click.pass_context
@user_errors
def predict(
    ctx: click.Context,
    /,
    scenes: tuple[Path, ...],
    model: Path,
    out: Path,
    tile_size: int | None,
    overlap: int | None,
    batch_size: int | None,
    device: str | None,
    tta: bool,
    nets: str,
    probabilities: bool,
    buffer: int,
    bands: tuple[int, ...] | None,
    overwrite: bool,
) -> None:
    """Predict cloud masks for whole scenes by sliding windows, blended without seams.

    The checkpoint's data contract (bands, stretch, normalisation, classes) is applied, so the
    scene is read exactly as the training tiles were. The mask GeoTIFF keeps the scene's CRS,
    transform and size, marks nodata as 255, and carries a colour table, the class names and the
    per-class cover (also in NAME.json beside it).

    \b
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
        tile_size, overlap, batch_size, tta, probabilities, buffer, bands, overwrite
    )
    from cloudcps.io import check_writable

    for m in masks:  # refuse before computing anything
        check_writable(m, overwrite)
    if len(scenes) > 1 or out.suffix.lower() not in (".tif", ".tiff"):
        out.mkdir(parents=True, exist_ok=True)
    for scene, mask in zip(scenes, masks, strict=True):
        res = predict_scene(scene, loaded, mask, opts, dev, progress=not quiet(ctx))
        if not quiet(ctx):
            cover = ", ".join(f"{k} {v:.1f}%" for k, v in res.cover_percent.items())
            click.echo(f"{scene} -> {res.mask} ({res.seconds:.1f} s): {cover}")
