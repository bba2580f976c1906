"""A tiling run: check and inspect the scenes, choose the validation scenes and the stretch, tile
every scene (in worker processes with ``--workers``), choose the labelled tiles and write the
split lists and the manifest, all into a temporary folder renamed to ``--out`` when complete."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from cloudcps.contract import Stretch
from cloudcps.errors import InputError
from cloudcps.io import atomic_dir, check_owned, remove_stale_temps, write_json, writing
from cloudcps.tiling.cut import SceneJob, tile_scene
from cloudcps.tiling.gather import gather_scenes
from cloudcps.tiling.manifest import build_manifest, dataset_contract
from cloudcps.tiling.options import TileOptions, TileSummary
from cloudcps.tiling.scene import SceneInfo
from cloudcps.tiling.splits import assign_val_scenes, split_tiles
from cloudcps.tiling.windows import tile_windows

log = logging.getLogger(__name__)


def tile_scenes(
    scenes: Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    options: TileOptions | None = None,
    progress: bool = False,
) -> TileSummary:
    """Tile ``scenes`` into ``out`` (images, labels, manifest, splits); see the package docstring.

    Args:
        scenes: 4-band (or 3-band with ``bands`` of length 3) rasters.
        out: output folder; written under a temporary name and renamed when complete.
        options: tiling options; defaults to :class:`TileOptions`.
        progress: show a tqdm progress bar.

    Returns:
        A :class:`TileSummary` of what was written.

    Raises:
        InputError: a scene, label raster or option cannot be used; nothing is written.
    """
    opts = options or TileOptions()
    opts.validate()
    out_path = Path(out)
    infos, notes = gather_scenes(scenes, out_path, opts)
    assign_val_scenes(infos, opts)
    contract = dataset_contract(infos, opts)
    remove_stale_temps([out_path])  # what a SIGKILL of an earlier run into --out left
    with writing(out_path), atomic_dir(out_path, opts.overwrite) as tmp:
        for sub in ("images", "labels", "valid", "splits"):
            (tmp / sub).mkdir()
        tiles, skipped = _tile_all(infos, tmp, opts, contract.stretch, progress)
        splits = split_tiles(tiles, infos, opts)
        _write_splits(tmp, splits, notes)
        manifest = build_manifest(opts, contract, infos, tiles, splits, skipped)
        write_json(tmp / "manifest.json", manifest)
        for sub in ("labels", "valid"):
            if not any((tmp / sub).iterdir()):
                (tmp / sub).rmdir()
        if opts.overwrite and out_path.is_dir() and any(out_path.iterdir()):
            check_owned(out_path, "tiles")  # again: a file may have been added while we worked

    return TileSummary(
        out=out_path,
        scenes=len(infos),
        labeled_scenes=sum(1 for s in infos if s.label is not None or s.clear),
        tiles=len(tiles),
        splits={k: len(v) for k, v in splits.items()},
        skipped_low_valid=skipped,
        class_shares=manifest["class_shares"],
        stretch=contract.stretch,
        warnings=notes,
    )


def _tile_all(
    infos: Sequence[SceneInfo], tmp: Path, opts: TileOptions, stretch: Stretch, progress: bool
) -> tuple[list[dict[str, Any]], int]:
    """Tile every scene into ``tmp`` (``--workers`` scenes at once); the tile records in scene
    order and the number of tiles skipped for too few valid pixels."""
    from tqdm import tqdm

    total = sum(len(tile_windows(s.width, s.height, opts.tile_size, opts.overlap)) for s in infos)
    jobs = [SceneJob(s, tmp, opts, stretch) for s in infos]
    results: list[tuple[list[dict[str, Any]], int]] = []
    bar = tqdm(total=total, unit="tile", desc="tile", disable=not progress)
    try:
        if opts.workers > 1 and len(jobs) > 1:
            ctx = get_context("spawn")
            with ProcessPoolExecutor(min(opts.workers, len(jobs)), mp_context=ctx) as ex:
                for res in ex.map(tile_scene, jobs):
                    results.append(res)
                    bar.update(len(res[0]) + res[1])
        else:
            for job in jobs:
                res = tile_scene(job)
                results.append(res)
                bar.update(len(res[0]) + res[1])
    finally:
        bar.close()
    tiles = [rec for recs, _ in results for rec in recs]
    if not tiles:
        raise InputError(
            f"no tile has at least {opts.min_valid_fraction:.0%} valid pixels; check the "
            "scenes' nodata or lower --min-valid"
        )
    return tiles, sum(n for _, n in results)


def _write_splits(tmp: Path, splits: dict[str, list[str]], notes: list[str]) -> None:
    """One id a line in ``splits/NAME.txt``; warn (into ``notes``) when no tile is labelled."""
    for name, ids in splits.items():
        (tmp / "splits" / f"{name}.txt").write_text("".join(f"{i}\n" for i in ids))
    if not splits["labeled"]:
        msg = "no labelled training tiles: training needs --label-dir and --labeled-fraction > 0"
        log.warning(msg)
        notes.append(msg)
