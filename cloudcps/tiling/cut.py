"""Cutting one scene into tiles (runs in worker processes): each window's RGB stretched to 8 bits,
its valid mask where a part is nodata, its label tile where the scene (or a tile label) has one,
and the tile's manifest record."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from PIL import Image
from rasterio.windows import Window

from cloudcps.contract import IGNORE_INDEX, Stretch, gdal_env
from cloudcps.io import open_raster, read_valid_mask, reading
from cloudcps.tiling.labels import TileLabel, paste
from cloudcps.tiling.options import TileOptions
from cloudcps.tiling.scene import SceneInfo, label_lut, open_scene_source, scaled
from cloudcps.tiling.windows import clip_window, tile_windows


@dataclass
class SceneJob:
    """One scene to tile into the folder ``out`` with the dataset's ``stretch``."""

    scene: SceneInfo
    out: Path
    options: TileOptions
    stretch: Stretch


@dataclass
class _SceneLabels:
    """Where the label tiles of a scene come from: ``--clear`` (every valid pixel clear), its
    label raster (mapped to class ids by ``to_class``) and tile label files pasted over them."""

    raster: rasterio.DatasetReader | None
    to_class: Callable[[np.ndarray], np.ndarray] | None
    clear_id: int | None
    tile_labels: tuple[TileLabel, ...]

    @property
    def scene_labelled(self) -> bool:
        return self.clear_id is not None or (self.raster is not None and self.to_class is not None)

    def label(
        self, vw: Window, row: int, col: int, t: int
    ) -> tuple[np.ndarray, list[TileLabel]] | None:
        """The label tile of the window ``vw`` (its part in the scene; 255 elsewhere) and the
        tile labels pasted into it; None where nothing labels it."""
        if not (self.scene_labelled or self.tile_labels):
            return None
        h, w = int(vw.height), int(vw.width)
        label = np.full((t, t), IGNORE_INDEX, dtype=np.uint8)
        if self.clear_id is not None:  # known cloud-free: every valid pixel is clear
            label[:h, :w] = self.clear_id
        elif self.raster is not None and self.to_class is not None:
            label[:h, :w] = self.to_class(self.raster.read(1, window=vw))
        used = paste(label, row, col, self.tile_labels, h, w)
        if not self.scene_labelled and not used:
            return None
        return label, used


def tile_scene(job: SceneJob) -> tuple[list[dict[str, Any]], int]:
    """Tile one scene: the records of the tiles written and the number skipped (too few valid
    pixels)."""
    with reading(job.scene.name, "scene (or its label raster)"):
        return _tile_scene_unchecked(job)


def _tile_scene_unchecked(job: SceneJob) -> tuple[list[dict[str, Any]], int]:
    scene, opts = job.scene, job.options
    records: list[dict[str, Any]] = []
    skipped = 0
    with rasterio.Env(**gdal_env()), open_scene_source(scene) as src:
        lab = open_raster(scene.label, "label raster") if scene.label else None
        try:
            to_class = label_lut(opts.label_map, len(opts.classes), lab.nodata)[0] if lab else None
            labels = _SceneLabels(
                raster=lab,
                to_class=to_class,
                clear_id=opts.classes.index("clear") if scene.clear else None,
                tile_labels=scene.tile_labels,
            )
            for window in tile_windows(src.width, src.height, opts.tile_size, opts.overlap):
                rec = _cut_tile(job, src, window, labels)
                if rec is None:
                    skipped += 1
                else:
                    records.append(rec)
        finally:
            if lab is not None:
                lab.close()
    return records, skipped


def _read_window(
    src: rasterio.DatasetReader, scene: SceneInfo, opts: TileOptions, vw: Window
) -> tuple[np.ndarray, np.ndarray]:
    """The scaled R, G, B of the window ``vw`` (NaN as 0) and its valid mask, both padded to a
    full tile (invalid outside the scene)."""
    t = opts.tile_size
    h, w = int(vw.height), int(vw.width)
    valid = np.zeros((t, t), dtype=bool)
    valid[:h, :w] = read_valid_mask(src, scene.bands, window=vw)
    data = scaled(src.read(list(scene.bands[:3]), window=vw), opts)
    if np.issubdtype(data.dtype, np.floating):
        valid[:h, :w] &= np.all(np.isfinite(data), axis=0)
        data = np.nan_to_num(data)
    return data, valid


def _cut_tile(
    job: SceneJob, src: rasterio.DatasetReader, window: Window, labels: _SceneLabels
) -> dict[str, Any] | None:
    """Write the tile of ``window`` (image, valid mask, label) and return its record; None: too
    few valid pixels, nothing written."""
    scene, opts, out, t = job.scene, job.options, job.out, job.options.tile_size
    vw = clip_window(window, src.width, src.height)
    h, w = int(vw.height), int(vw.width)
    data, valid = _read_window(src, scene, opts, vw)
    fraction = float(valid.mean())
    if fraction < opts.min_valid_fraction or not valid.any():
        return None
    image = np.zeros((3, t, t), dtype=np.uint8)
    image[:, :h, :w] = job.stretch.apply(data)
    image[:, ~valid] = 0
    row, col = int(window.row_off), int(window.col_off)
    tile_id = f"{scene.id}_r{row:05d}_c{col:05d}"
    rec: dict[str, Any] = {
        "id": tile_id,
        "scene": scene.id,
        "window": {"col_off": col, "row_off": row, "width": t, "height": t},
        "valid_window": {"col_off": col, "row_off": row, "width": w, "height": h},
        "transform": list(src.window_transform(window))[:6],
        "crs": scene.crs,
        "valid_fraction": round(fraction, 6),
        "image": _write_image(image, out, tile_id, opts),
        "label": None,
        "valid_mask": None,
        "class_counts": None,
        "ignore_count": None,
    }
    if not valid.all():
        rec["valid_mask"] = f"valid/{tile_id}.png"
        Image.fromarray(valid.astype(np.uint8) * 255).save(
            out / rec["valid_mask"], compress_level=1
        )
    labelled = labels.label(vw, row, col, t)
    if labelled is not None:
        _write_label(rec, *labelled, valid, len(opts.classes), out)
    return rec


def _write_image(image: np.ndarray, out: Path, tile_id: str, opts: TileOptions) -> str:
    """Save the 8-bit RGB tile (3, t, t) as JPEG or PNG; its path relative to ``out``."""
    ext = "jpg" if opts.image_format == "jpg" else "png"
    img_rel = f"images/{tile_id}.{ext}"
    pil = Image.fromarray(np.ascontiguousarray(image.transpose(1, 2, 0)))
    if ext == "jpg":
        pil.save(out / img_rel, quality=opts.jpeg_quality, subsampling=0)
    else:
        pil.save(out / img_rel, compress_level=1)
    return img_rel


def _write_label(
    rec: dict[str, Any],
    label: np.ndarray,
    used: list[TileLabel],
    valid: np.ndarray,
    k: int,
    out: Path,
) -> None:
    """Save the label tile (255 where not valid) and record its round, files and class counts
    (``k`` classes; partial-label codes counted apart) in ``rec``."""
    rec["label_round"] = 0
    if used:  # the latest round that labelled it (None: a file without a round)
        rounds = [tl.round for tl in used if tl.round is not None]
        rec["label_round"] = max(rounds) if len(rounds) == len(used) else None
        rec["label_files"] = [tl.path.name for tl in used]
    label[~valid] = IGNORE_INDEX
    counts = np.bincount(label.ravel(), minlength=256)
    rec["label"] = f"labels/{rec['id']}.png"
    rec["class_counts"] = [int(c) for c in counts[:k]]
    rec["ignore_count"] = int(counts[IGNORE_INDEX])
    partial = {str(c): int(counts[c]) for c in np.flatnonzero(counts) if k <= c < IGNORE_INDEX}
    if partial:
        rec["partial_counts"] = partial
    Image.fromarray(label).save(out / rec["label"], compress_level=1)
