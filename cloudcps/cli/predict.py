"""``cloudcps predict``: whole scenes to georeferenced mask GeoTIFFs."""

from __future__ import annotations

import os
from pathlib import Path

import click

from cloudcps.contract import parse_bands
from cloudcps.scenes import SceneRef

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
    from cloudcps.errors import InputError
    from cloudcps.io import check_output_file, remove_stale_temps, written_by_cloudcps
    from cloudcps.predict import PredictOptions, check_window_options, predict_scene, scene_bands
    from cloudcps.predict.backends import load_model
    from cloudcps.scenes import output_paths

    if not 0 <= buffer <= MAX_BUFFER:
        raise InputError(f"--buffer {buffer} must be between 0 and {MAX_BUFFER} pixels")
    if skip_existing and overwrite:
        raise InputError("--skip-existing and --overwrite exclude each other; give one")
    check_window_options(tile_size, overlap, batch_size)
    if not scenes and not band_files:
        raise InputError(
            "no scene given; give scene files, product folders or archives (SAFE, Landsat), "
            "STAC items, or --band-files R,G,B[,NIR]"
        )
    refs = tuple(select_scenes(scenes, band_files, bands, ctx))
    check_out(out, len(refs))
    masks = output_paths(refs, out)
    opts = PredictOptions(
        tile_size,
        overlap,
        batch_size,
        tta,
        probabilities,
        buffer,
        bands,
        overwrite,
        scale,
        offset,
        cog,
        uncertainty,
    )
    scene_inputs = [p for r in refs for p in r.inputs]
    inputs = [*scene_inputs, model] if Path(model).exists() else scene_inputs
    label = "--out" if out is not None else "mask"
    rank, world = shard()
    # Shard by position in the argument list (the same on every rank whatever is on disk), then
    # check only this rank's scenes.
    mine: list[tuple[SceneRef, Path]] = []
    stale: list[Path] = []  # cloudcps's own sidecars of a run stopped before its mask
    skipped = 0
    for scene, m in list(zip(refs, masks, strict=True))[rank::world]:
        outputs = prediction_outputs(m, probabilities, uncertainty)
        for p in outputs:
            if p.is_symlink() and not p.exists():
                raise InputError(
                    f"{label} {p} is a symbolic link to {os.readlink(p)}, which does not exist; "
                    "give a real path"
                )
        if skip_existing and all(p.exists() for p in outputs):
            skipped += 1
            continue
        remove_stale_temps(outputs)
        for p in outputs:
            if skip_existing and p.exists():
                if m.exists() and not written_by_cloudcps(m):
                    raise InputError(
                        f"--skip-existing: {m} exists and is not a mask cloudcps wrote, so it is "
                        f"kept as it is; give another {label} for the mask of {scene.name}"
                    )
                if m.exists():  # a mask without its report (or probabilities)
                    lost = next(q for q in outputs if not q.exists())
                    raise InputError(
                        f"--skip-existing: {m} exists without its {lost.name}; delete {m} to "
                        f"predict {scene.name} again, or run without --skip-existing and with "
                        "--overwrite"
                    )
                if not written_by_cloudcps(p):
                    raise InputError(
                        f"--skip-existing: {p} exists and was not written by cloudcps, which "
                        f"never replaces it: move it away or choose another {label}"
                    )
                stale.append(p)
                continue
            check_output_file(p, overwrite, inputs, label)
        if out is None and not os.access(m.parent, os.W_OK):
            raise InputError(
                f"cannot write {m.name} beside the scene: {m.parent} is not writable; give "
                "--out FILE_OR_FOLDER"
            )
        mine.append((scene, m))
    for folder in sorted({m.parent for _, m in mine}):
        check_writable_folder(folder, label, out)
    if skipped and not quiet(ctx):
        click.echo(f"skipping {skipped} scene(s) whose mask exists (--skip-existing)")
    if mine:
        if uncertainty:
            from cloudcps.predict.uncertainty import load_for_uncertainty

            loaded = load_for_uncertainty(model, nets, backend, device, threads)
        else:
            loaded = load_model(model, nets=nets, backend=backend, device=device, threads=threads)
        for scene, _ in mine:  # every scene's bands, before any work
            scene_bands(scene, loaded.contract, bands)
        if out is not None and not (len(masks) == 1 and masks[0] == out):
            out.mkdir(parents=True, exist_ok=True)
        for p in stale:
            p.unlink(missing_ok=True)
        for scene, mask in mine:
            res = predict_scene(scene, loaded, mask, opts, progress=not quiet(ctx))
            if not quiet(ctx):
                cover = ", ".join(f"{k} {v:.1f}%" for k, v in res.cover_percent.items())
                click.echo(f"{scene.name} -> {res.mask} ({res.seconds:.1f} s): {cover}")
    if world > 1:
        done = gather_counts(len(mine))
        if rank == 0 and not quiet(ctx):
            click.echo(f"{world} ranks wrote {sum(done)} mask(s): {done} per rank")


def select_scenes(
    scenes: tuple[Path, ...],
    band_files: tuple[tuple[Path, ...], ...],
    bands: tuple[int, ...] | None,
    ctx: click.Context,
) -> list[SceneRef]:
    """The scenes to predict: every one must exist and open (products are read and checked,
    before any work); files that cloudcps wrote (masks, probabilities of an earlier run, e.g.
    picked up again by ``dir/*.tif``) are skipped with a notice, and refused when they are all
    there is."""
    from cloudcps.errors import InputError
    from cloudcps.io import is_virtual_path, written_by_cloudcps
    from cloudcps.scenes import scene_ref

    kept: list[SceneRef] = []
    own: list[Path] = []
    for scene in scenes:
        if not scene.exists() and not is_virtual_path(str(scene)):
            name = str(scene)
            if name.startswith("-"):
                raise InputError(
                    f"scene {name} does not exist: after -- every argument is a scene, options "
                    f"too; give the options before --, e.g. cloudcps predict --out DIR -- "
                    f"-name.tif"
                )
            hint = " (a pattern that matched no file?)" if any(c in name for c in "*?[") else ""
            raise InputError(f"scene {name} does not exist{hint}; check the path")
        if scene.is_file() and written_by_cloudcps(scene):  # a mask, its JSON, probabilities
            own.append(scene)
            continue
        kept.append(scene_ref(scene, bands=bands))
    kept += [scene_ref(files[0], band_files=files) for files in band_files]
    if own and not kept:
        raise InputError(
            f"{own[0]} is a mask or probability raster that cloudcps wrote, not a scene"
            + (f" (and so are the other {len(own) - 1} files given)" if len(own) > 1 else "")
            + "; give the scenes themselves"
        )
    if own and not quiet(ctx):
        click.echo(
            f"skipping {len(own)} file(s) that cloudcps wrote (masks or probabilities, not "
            f"scenes): {', '.join(str(p) for p in own[:3])}{' ...' if len(own) > 3 else ''}"
        )
    return kept


def check_out(out: Path | None, n_scenes: int) -> None:
    """Refuse an ``--out`` that is a dangling symbolic link, or that names a file other than a
    GeoTIFF for one scene (``--out mask.png`` would silently become a folder)."""
    from cloudcps.errors import InputError

    if out is None:
        return
    if out.is_symlink() and not out.exists():
        raise InputError(
            f"--out {out} is a symbolic link to {os.readlink(out)}, which does not exist; give "
            "a real path"
        )
    suffix = out.suffix.lower()
    if n_scenes == 1 and suffix and suffix not in (".tif", ".tiff") and not out.is_dir():
        raise InputError(
            f"--out {out}: a mask is a GeoTIFF; give NAME.tif for the mask of one scene, or a "
            "folder (without a suffix) for NAME_mask.tif files"
        )


def check_writable_folder(folder: Path, option: str, shown: Path | None = None) -> None:
    """Refuse, before any work, an output folder where no file can be made (read-only, not a
    folder, or a kernel file system such as /proc or /sys); ``shown``: the path the user gave."""
    import tempfile

    from cloudcps.errors import InputError

    given = shown or folder

    probe_in = folder
    while not probe_in.exists():
        if probe_in.is_symlink():
            raise InputError(
                f"{option} {given}: {probe_in} is a symbolic link to {os.readlink(probe_in)}, "
                "which does not exist; give a real path"
            )
        if probe_in.parent == probe_in:
            break
        probe_in = probe_in.parent
    if not probe_in.is_dir():
        raise InputError(f"{option} {given}: {probe_in} is a file, not a folder")
    real = probe_in.resolve()
    kernel = next((k for k in ("/proc", "/sys") if real.as_posix().startswith(k + "/")
                   or real.as_posix() == k), None)  # fmt: skip
    if kernel is not None:
        raise InputError(
            f"{option} {given} is in {kernel}, the kernel's view of the system, where no "
            f"mask can be written; choose another {option}"
        )
    try:
        fd, name = tempfile.mkstemp(prefix=".cloudcps-probe-", dir=probe_in)
    except OSError as exc:
        raise InputError(
            f"{option} {given}: cannot write in {probe_in} ({exc.strerror}); choose another "
            f"{option}"
        ) from None
    os.close(fd)
    os.unlink(name)


MAX_BUFFER = 250  # scikit-image's disk decomposition stops at radius 251


def prediction_outputs(mask: Path, probabilities: bool, uncertainty: bool = False) -> list[Path]:
    """The files one scene's prediction writes: the mask, its JSON report, its probabilities,
    its uncertainty."""
    from cloudcps.predict.uncertainty import uncertainty_path
    from cloudcps.scenes import sidecars

    proba, report = sidecars(mask)
    extra = [uncertainty_path(mask)] if uncertainty else []
    return [mask, report] + ([proba] if probabilities else []) + extra


def shard() -> tuple[int, int]:
    """(rank, world size) from torchrun's environment; (0, 1) when run alone."""
    from cloudcps.errors import InputError

    try:
        rank = int(os.environ.get("RANK", "0"))
        world = int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise InputError("RANK and WORLD_SIZE must be integers (as torchrun sets them)") from None
    if world < 1 or not 0 <= rank < world:
        raise InputError(f"RANK {rank} is not within WORLD_SIZE {world}")
    return rank, world


def gather_counts(count: int) -> list[int]:
    """Every rank's count of written masks (gloo; the ranks also wait for each other here)."""
    import torch.distributed as dist

    own = not dist.is_initialized()
    if own:
        dist.init_process_group("gloo")
    try:
        counts: list[int] = [0] * dist.get_world_size()
        dist.all_gather_object(counts, count)
    finally:
        if own:
            dist.destroy_process_group()
    return counts
