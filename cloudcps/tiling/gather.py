"""The input scenes of a tiling run, checked before anything is written: that they exist, can be
read with their label rasters, have distinct ids, that ``--clear`` and ``--label-dir`` fit them,
and which are too small to give a tile."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

from cloudcps.errors import InputError
from cloudcps.io import check_out_dir
from cloudcps.scenes.missing import check_scenes_exist
from cloudcps.tiling.labels import find_tile_labels
from cloudcps.tiling.options import TileOptions
from cloudcps.tiling.scene import SceneInfo, check_label_values, inspect_scene

log = logging.getLogger(__name__)


def _best_valid_share(scene: SceneInfo, tile: int) -> float:
    """The largest share of a tile a scene can fill (below 1 when it is smaller than a tile)."""
    return min(scene.width, tile) * min(scene.height, tile) / (tile * tile)


def _smaller_than_tile(small: Sequence[SceneInfo], opts: TileOptions) -> str:
    s, t = small[0], opts.tile_size
    more = f" (and {len(small) - 1} more)" if len(small) > 1 else ""
    return (
        f"scene {s.path}{more} is {s.width}x{s.height} px, smaller than --tile-size {t}: a tile "
        f"of it holds at most {_best_valid_share(s, t):.1%} valid pixels, under --min-valid "
        f"{opts.min_valid_fraction:g}"
    )


def gather_scenes(
    scenes: Sequence[str | os.PathLike[str]], out: Path, opts: TileOptions
) -> tuple[list[SceneInfo], list[str]]:
    """Check and inspect the scenes of a run into ``out`` (plain scenes, ``--clear`` scenes,
    ``--band-files``) with their labels; the scenes and the warnings given about them.

    Raises:
        InputError: a scene, label raster, ``--label-dir`` or ``--out`` cannot be used.
    """
    _check_inputs(scenes, out, opts)
    infos = _inspect_scenes(scenes, opts)
    _check_unique_ids(infos)
    for s in infos:
        s.tile_labels = find_tile_labels(
            s.id, s.crs, s.transform, s.width, s.height, opts.label_dirs, len(opts.classes)
        )
    if opts.label_dirs and not any(s.label or s.clear or s.tile_labels for s in infos):
        raise InputError(
            f"no label raster found in --label-dir {', '.join(map(str, opts.label_dirs))} for any "
            "scene; label files must have the scene's file name"
        )
    for s in infos:
        if s.label is not None:
            check_label_values(s.label, opts.label_map, len(opts.classes), opts.unknown_labels)
    return infos, _scene_warnings(infos, opts)


def _check_inputs(scenes: Sequence[str | os.PathLike[str]], out: Path, opts: TileOptions) -> None:
    """The scenes exist, ``--out`` may be written (and is none of them), there is a scene, and
    every ``--label-dir`` is a folder."""
    check_scenes_exist(scenes, "tile", [("--clear", opts.clear)], " (nothing was tiled)")
    inputs = [Path(p) for p in scenes] + list(opts.clear) + list(opts.label_dirs)
    inputs += [f for files in opts.band_files for f in files]
    check_out_dir(out, opts.overwrite, "tiles", inputs)
    if not scenes and not opts.clear and not opts.band_files:
        raise InputError(
            "no scenes given; pass 4-band rasters, product folders or archives (SAFE, "
            "Landsat), STAC items, or --band-files R,G,B[,NIR]"
        )
    for d in opts.label_dirs:
        if not Path(d).is_dir():
            raise InputError(f"--label-dir {d} is not a folder")


def _inspect_scenes(scenes: Sequence[str | os.PathLike[str]], opts: TileOptions) -> list[SceneInfo]:
    """Inspect the scenes, the ``--clear`` scenes not among them and the ``--band-files``; mark
    the ``--clear`` ones (which must have no label raster)."""
    paths = [Path(s) for s in scenes]
    known = {p.resolve() for p in paths}
    paths += [Path(p) for p in opts.clear if Path(p).resolve() not in known]
    clear = {Path(p).resolve() for p in opts.clear}
    infos = [inspect_scene(p, opts.bands, opts.label_dirs) for p in paths]
    infos += [inspect_scene(f[0], opts.bands, opts.label_dirs, f) for f in opts.band_files]
    for s in infos:
        if s.path.resolve() in clear:
            if s.label is not None:
                raise InputError(
                    f"scene {s.path} is given with --clear but has the label raster {s.label}; "
                    "drop --clear for it or remove the label"
                )
            s.clear = True
    return infos


def _check_unique_ids(infos: Sequence[SceneInfo]) -> None:
    """Tile ids and label lookup use the scene ids: two scenes must not share one."""
    seen: dict[str, Path] = {}
    for s in infos:
        if s.id in seen:
            if s.product_id:  # e.g. X.SAFE and X.zip: one product, named by its metadata
                raise InputError(
                    f"scenes {seen[s.id]} and {s.path} are the same product {s.id!r} (the id "
                    "comes from the product's metadata, not its file name); give only one of them"
                )
            raise InputError(
                f"scenes {seen[s.id]} and {s.path} share the name {s.id!r}; tile ids and label "
                "lookup use file names, so rename one"
            )
        seen[s.id] = s.path


def _scene_warnings(infos: Sequence[SceneInfo], opts: TileOptions) -> list[str]:
    """Warn of scenes without a CRS and of scenes too small to give a tile (an error when every
    scene is); the warnings."""
    notes: list[str] = []
    no_crs = [s.id for s in infos if s.crs is None]
    if no_crs:
        msg = f"{len(no_crs)} scene(s) have no CRS (e.g. {no_crs[0]}); tiles keep pixel transforms"
        log.warning(msg)
        notes.append(msg)
    small = [s for s in infos if _best_valid_share(s, opts.tile_size) < opts.min_valid_fraction]
    if small and len(small) == len(infos):
        side = min(min(s.width, s.height) for s in small)
        fix = f"pass --tile-size {side // 32 * 32} or less" if side >= 32 else "lower --min-valid"
        raise InputError(f"{_smaller_than_tile(small, opts)}; {fix}")
    for s in small:
        msg = f"{_smaller_than_tile([s], opts)}, so it gives no tile"
        log.warning(msg)
        notes.append(msg)
    return notes
