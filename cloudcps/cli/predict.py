"""``cloudcps predict``: whole scenes to georeferenced mask GeoTIFFs."""

from __future__ import annotations

from pathlib import Path

import click

from cloudcps.contract import parse_bands

from .options import (
    backend_opt,
    band_files_opt,
    converter,
    device_opt,
    offset_opt,
    overwrite_opt,
    quiet,
    scale_opt,
    user_errors,
)


@click.command(short_help="Predict georeferenced cloud masks for whole scenes.")
@click.argument("scenes", nargs=-1, type=click.Path(path_type=Path))
@band_files_opt
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
@click.option(
    "--overlap", type=int, help="Window overlap in px.  [default: 64, at most tile size / 4]"
)
@click.option("--batch-size", type=int, help="Windows per pass.  [default: 8 on CUDA, 1 on CPU]")
@device_opt
@backend_opt
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    default=None,
    help="CPU threads per process.  [default: the cores this process may use, divided among "
    "the torchrun ranks of a node]",
)
@click.option("--tta", is_flag=True, help="Average over horizontal and vertical flips.")
@click.option(
    "--nets",
    type=click.Choice(["1", "2", "both"]),
    default="1",
    show_default=True,
    help="Which CPS network(s); both = mean of their softmax (twice the time; see "
    "docs/benchmarks.md for what it gains).",
)
@click.option(
    "--probabilities",
    is_flag=True,
    help="Also write per-class probabilities (NAME_proba.tif, uint8 = p x 255).",
)
@click.option(
    "--uncertainty",
    is_flag=True,
    help="Also write NAME_uncertainty.tif on the mask's grid: uint8, 0 = certain, 255 = most "
    "unsure, nodata in its internal mask. With --nets both and a CPS run: the two networks' "
    "disagreement (Jensen-Shannon divergence of their softmax, in bits); with one network: the "
    "normalised entropy of its softmax. 128 and above (u >= 0.5) counts as unsure: the JSON "
    "report gives that share of the valid pixels.",
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
@scale_opt
@offset_opt
@click.option(
    "--cog",
    is_flag=True,
    help="Write Cloud Optimized GeoTIFFs (tiled, with overviews: mode for classes, average for "
    "probabilities).",
)
@click.option(
    "--skip-existing",
    is_flag=True,
    help="Skip scenes whose mask and report already exist (resume a batch that was stopped).",
)
@overwrite_opt
@click.pass_context
@user_errors
def predict(
    ctx: click.Context,
    /,
    scenes: tuple[Path, ...],
    band_files: tuple[tuple[Path, ...], ...],
    model: Path,
    out: Path | None,
    tile_size: int | None,
    overlap: int | None,
    batch_size: int | None,
    device: str | None,
    backend: str,
    threads: int | None,
    tta: bool,
    nets: str,
    probabilities: bool,
    uncertainty: bool,
    buffer: int,
    bands: tuple[int, ...] | None,
    scale: float | None,
    offset: float | None,
    cog: bool,
    skip_existing: bool,
    overwrite: bool,
) -> None:
    """Predict cloud masks for whole scenes by sliding windows, blended without seams.

    The checkpoint's data contract (bands, stretch, normalisation, classes) is applied, so the
    scene is read exactly as the training tiles were. The mask GeoTIFF keeps the scene's CRS,
    transform and size, marks nodata as 255, and carries a colour table, the class names and the
    per-class cover (also in NAME.json beside it).

    A scene is a raster file, a Sentinel-2 L1C/L2A product (.SAFE, its .zip, MTD_MSIL*.xml), a
    Landsat Collection 2 L1/L2 product (folder, .tar, _MTL.txt/json), a STAC item (.json) or
    --band-files; products are read as reflectance x 10000 with the scaling of their metadata,
    and their masks are named after the product.

    Without --model the starter cloud model that ships with cloudcps is used (trained on
    L8 Biome and On Cloud N; it expects reflectance x 10000, see docs/model.md); without --out
    the mask is written beside the scene as NAME_mask.tif.

    \b
    $ cloudcps predict scene.tif
    $ cloudcps predict scene.tif --model runs/cps --out scene_mask.tif
    $ cloudcps predict scenes/*.tif --out masks/ --skip-existing --cog
    $ cloudcps predict scene.tif --model runs/cps --nets both --uncertainty --out masks/
    $ cloudcps predict downloads/S2*_MSIL2A_*.zip downloads/LC09_L2SP_*.tar --out masks/
    $ cloudcps predict --band-files B04.tif,B03.tif,B02.tif,B08.tif
    $ torchrun --nproc_per_node 4 -m cloudcps.cli.main predict scenes/*.tif --out masks/

    Under torchrun (or any launcher that sets RANK and WORLD_SIZE) the scenes are shared among
    the ranks, each mask written by exactly one of them.
    """
    from cloudcps.predict import PredictJob, PredictOptions, predict_scenes

    opts = PredictOptions(
        tile_size=tile_size,
        overlap=overlap,
        batch_size=batch_size,
        tta=tta,
        probabilities=probabilities,
        buffer=buffer,
        bands=bands,
        overwrite=overwrite,
        scale=scale,
        offset=offset,
        cog=cog,
        uncertainty=uncertainty,
    )
    job = PredictJob(
        scenes, band_files, model, out, opts, nets, backend, device, threads, skip_existing
    )
    predict_scenes(job, say=None if quiet(ctx) else click.echo, progress=not quiet(ctx))
