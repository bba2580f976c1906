"""Cut 4-band scenes into 8-bit RGB training tiles with aligned labels, a manifest and split lists.

The tiler reads each scene window by window (memory does not grow with the scene), maps the
selected bands to 8 bits with one stretch shared by the whole dataset, drops NIR, and records in
``manifest.json`` everything a model trained on the tiles needs to read a new scene the same way
(band order, stretch, normalisation, class names), plus each tile's georeferencing.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Literal

import numpy as np
import rasterio
from affine import Affine
from PIL import Image
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.windows import Window

from cloudcps import __version__
from cloudcps.contract import (
    DEFAULT_CLASSES,
    IGNORE_INDEX,
    MANIFEST_FORMAT,
    MANIFEST_VERSION,
    MAX_PARTIAL_CLASSES,
    MAX_TILE,
    RASTER_SUFFIXES,
    DataContract,
    Stretch,
    StretchSpec,
    gdal_env,
    is_partial,
    label_map_to_dict,
    partial_classes,
    scale_values,
)
from cloudcps.errors import InputError
from cloudcps.io import (
    atomic_dir,
    check_out_dir,
    check_owned,
    finite_integer_values,
    open_raster,
    read_valid_mask,
    reading,
    remove_stale_temps,
    write_json,
    writing,
)
from cloudcps.scenes.missing import check_scenes_exist as check_scenes_exist
from cloudcps.tiling.labels import TileLabel, find_tile_labels, paste

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------
# Options and results
# --------------------------------------------------------------------------------------------


@dataclass
class TileOptions:
    """Options of :func:`tile_scenes`; the CLI maps its flags one to one onto these fields."""

    tile_size: int = 1024
    overlap: int = 0
    bands: tuple[int, ...] | None = None  # None: by the scenes' band names, else 1,2,3[,4]
    scale: float = 1.0
    offset: float = 0.0
    band_files: tuple[tuple[Path, ...], ...] = ()  # scenes given as single-band files
    stretch: StretchSpec = field(default_factory=StretchSpec)
    gamma: float = 1.0
    label_dirs: tuple[Path, ...] = ()
    clear: tuple[Path, ...] = ()
    label_map: dict[int, int] | None = None
    unknown_labels: Literal["error", "ignore"] = "error"
    classes: tuple[str, ...] = DEFAULT_CLASSES
    labeled_fraction: float = 1 / 16
    val: tuple[str, ...] = ()
    val_fraction: float = 0.0
    cover_classes: bool = True
    seed: int = 0
    workers: int = 1
    image_format: Literal["jpg", "png"] = "jpg"
    jpeg_quality: int = 95
    min_valid_fraction: float = 0.1
    overwrite: bool = False

    def validate(self) -> None:
        if self.tile_size < 32:
            raise InputError(f"--tile-size {self.tile_size} is too small; use 32 or more")
        if self.tile_size > MAX_TILE:
            raise InputError(f"--tile-size {self.tile_size} is too large; use at most {MAX_TILE}")
        dup = sorted({n for n in self.classes if self.classes.count(n) > 1})
        if dup:
            raise InputError(
                f"--classes {','.join(self.classes)}: class {dup[0]!r} is named twice; class "
                "names must be unique"
            )
        if not 0 <= self.overlap < self.tile_size:
            raise InputError(
                f"--overlap {self.overlap} must be >= 0 and smaller than --tile-size "
                f"{self.tile_size}"
            )
        if not 0.0 <= self.labeled_fraction <= 1.0:
            raise InputError(f"--labeled-fraction {self.labeled_fraction} must be in [0, 1]")
        if not 0.0 <= self.val_fraction < 1.0:
            raise InputError(f"--val-fraction {self.val_fraction} must be in [0, 1)")
        if self.val and self.val_fraction:
            raise InputError("give either --val or --val-fraction, not both")
        if not 0.0 <= self.min_valid_fraction <= 1.0:
            raise InputError(f"--min-valid {self.min_valid_fraction} must be in [0, 1]")
        if not (math.isfinite(self.scale) and self.scale > 0 and math.isfinite(self.offset)):
            raise InputError(f"--scale {self.scale} must be > 0 and --offset {self.offset} finite")
        if not (math.isfinite(self.gamma) and 0.1 <= self.gamma <= 10):
            raise InputError(f"--gamma {self.gamma} must be in [0.1, 10]")
        if not 1 <= self.jpeg_quality <= 100:
            raise InputError(f"--quality {self.jpeg_quality} must be in 1..100")
        if self.workers < 1:
            raise InputError(
                f"--workers {self.workers} must be 1 or more (the number of scenes tiled at once)"
            )
        k = len(self.classes)
        if self.clear and "clear" not in self.classes:
            raise InputError(
                f"--clear labels scenes with the class 'clear', which --classes "
                f"{','.join(self.classes)} lacks; add it or drop --clear"
            )
        if self.label_map:
            if k > MAX_PARTIAL_CLASSES and any(map(is_partial, self.label_map.values())):
                raise InputError(
                    f"--label-map maps to sets of classes, which need at most "
                    f"{MAX_PARTIAL_CLASSES} classes; this class set has {k}"
                )
            bad = sorted({c for v in self.label_map.values() for c in partial_classes(v) if c >= k})
            if bad:
                raise InputError(
                    f"--label-map sends values to class ids {bad}, but there are only {k} "
                    f"classes (0..{k - 1}; 255 = ignore)"
                )


@dataclass
class TileSummary:
    """What :func:`tile_scenes` wrote."""

    out: Path
    scenes: int
    labeled_scenes: int
    tiles: int
    splits: dict[str, int]
    skipped_low_valid: int
    class_shares: dict[str, dict[str, float]]
    stretch: Stretch
    warnings: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------------------------
# Scenes and labels
# --------------------------------------------------------------------------------------------


@dataclass
class SceneInfo:
    path: Path
    label: Path | None
    width: int
    height: int
    count: int
    dtype: str
    crs: str | None
    transform: tuple[float, ...]
    role: str = "train"
    clear: bool = False  # known cloud-free: every valid pixel is labelled clear
    bands: tuple[int, ...] = (1, 2, 3, 4)  # R, G, B[, NIR] in ``source``
    source: str | None = None  # what GDAL opens: a product's stacking VRT; None: ``path``
    product_id: str | None = None  # a product's id (names its tiles); None: the file name
    record: dict[str, Any] | None = None  # what was read, with which scaling (scenes.py)
    band_files: tuple[Path, ...] | None = None
    tile_labels: tuple[TileLabel, ...] = ()  # labels of single tiles (cloudcps.tiling.labels)

    @property
    def id(self) -> str:
        return self.product_id or self.path.stem

    @property
    def name(self) -> str:
        """The scene in messages."""
        if self.band_files:
            return "--band-files " + ",".join(str(f) for f in self.band_files)
        return str(self.path)


def _open_scene_source(scene: SceneInfo) -> rasterio.DatasetReader:
    """The scene's dataset: its file, or a product's stacking VRT (reopened from its XML, also
    in a worker process)."""
    if scene.source is None:
        return open_raster(scene.path, "scene")
    return rasterio.open(scene.source)


def _scaled(data: np.ndarray, opts: TileOptions) -> np.ndarray:
    """``--scale`` / ``--offset`` (the values that predict reads get the same)."""
    return scale_values(data, opts.scale, opts.offset)


def _crs_str(crs: CRS | None) -> str | None:
    if crs is None:
        return None
    epsg = crs.to_epsg()
    return f"EPSG:{epsg}" if epsg else str(crs.to_wkt())


def _find_label(scene: Path, label_dirs: Sequence[Path], name: str | None = None) -> Path | None:
    """The label raster of a scene: its file name, or its stem (or product id ``name``) with a
    raster suffix, in the first ``--label-dir`` that has one."""
    stems = [name, scene.stem] if name and name != scene.stem else [scene.stem]
    for d in label_dirs:
        exact = d / scene.name
        if exact.is_file():
            return exact
        for stem in stems:
            for suffix in RASTER_SUFFIXES:
                cand = d / (stem + suffix)
                if cand.is_file():
                    return cand
    return None


def _transforms_close(a: Affine, b: Affine) -> bool:
    tol = 1e-6 * max(abs(a.a), abs(a.e), 1e-12)
    return all(abs(x - y) <= tol * max(1.0, abs(x)) for x, y in zip(a[:6], b[:6], strict=True))


def inspect_scene(
    path: Path,
    bands: Sequence[int] | None,
    label_dirs: Sequence[Path],
    band_files: Sequence[Path] | None = None,
) -> SceneInfo:
    """Open a scene (a raster, a product or band files: :func:`cloudcps.scenes.open_scene`) and
    its label raster, and check that they can be tiled together. ``bands`` None: R, G, B[, NIR]
    by the file's band names, else 1, 2, 3[, 4]."""
    from cloudcps.bands import DEFAULT_ORDER, check_scene_bands, needs_bands_message, raster_bands
    from cloudcps.scenes import open_scene

    bad = [c for c in path.stem if not c.isprintable()]
    if bad:
        raise InputError(
            f"scene {str(path)!r} has a control character ({bad[0]!r}) in its name, which would "
            "break the one-id-per-line split lists; rename the file"
        )
    given = tuple(bands) if bands is not None else None
    with open_scene(path, bands=given, band_files=band_files) as opened:
        src = opened.dataset
        shown = "--band-files " + ",".join(map(str, band_files)) if band_files else str(path)
        if opened.kind != "raster":
            assert opened.bands is not None
            chosen = opened.bands
        elif given is not None:
            if src.count < max(given):
                raise InputError(
                    f"scene {path} has {src.count} band(s) but --bands "
                    f"{','.join(map(str, given))} asks for band {max(given)}; pass --bands with "
                    "the file's R,G,B[,NIR] band numbers (e.g. --bands 1,2,3 for an RGB file)"
                )
            chosen = given
        else:
            # names decide for files that carry them, or that have more than 4 bands (a 4-band
            # uint8 file flagged RGBA holds NIR in its "alpha" band: 1,2,3,4 as usual)
            named = raster_bands(src) if src.count > 4 or any(src.descriptions) else None
            if named is not None:
                chosen = named
            elif src.count > 4:
                raise InputError(needs_bands_message(path, src.count))
            else:
                chosen = DEFAULT_ORDER[: min(4, src.count)] if src.count >= 3 else DEFAULT_ORDER
                check_scene_bands(src, path, chosen)
            if src.count < max(chosen):
                raise InputError(
                    f"scene {path} has {src.count} band(s); give a 4-band (R,G,B,NIR) or RGB "
                    "scene, or --bands with its R,G,B[,NIR] band numbers"
                )
        if src.crs is None and src.gcps[0]:
            log.warning(
                "scene %s is georeferenced by %d ground control points, which tiles do not "
                "carry: their transforms are in pixels (gdalwarp the scene first to keep it)",
                shown,
                len(src.gcps[0]),
            )
        info = SceneInfo(
            path=path,
            label=_find_label(path, label_dirs, opened.product_id),
            width=src.width,
            height=src.height,
            count=src.count,
            dtype=src.dtypes[0],
            crs=_crs_str(src.crs),
            transform=tuple(src.transform)[:6],
            bands=tuple(chosen),
            source=opened.vrt if opened.kind != "raster" else None,
            product_id=opened.product_id if opened.kind != "raster" else None,
            record=opened.record,
            band_files=tuple(band_files) if band_files else None,
        )
        scene_crs, scene_tf = src.crs, src.transform
    if info.label is not None:
        with open_raster(info.label, "label raster") as lab:
            if (lab.width, lab.height) != (info.width, info.height):
                raise InputError(
                    f"label raster {info.label} is {lab.width}x{lab.height} but its scene "
                    f"{path} is {info.width}x{info.height}; labels must cover the scene "
                    "pixel for pixel"
                )
            if not _transforms_close(lab.transform, scene_tf):
                raise InputError(
                    f"label raster {info.label} has transform {tuple(lab.transform)[:6]} but "
                    f"its scene {path} has {tuple(scene_tf)[:6]}; resample the labels onto "
                    "the scene grid"
                )
            if lab.crs and scene_crs and lab.crs != scene_crs:
                raise InputError(
                    f"label raster {info.label} is in {_crs_str(lab.crs)} but its scene "
                    f"{path} is in {_crs_str(scene_crs)}; reproject the labels"
                )
    return info


def _label_lut(
    label_map: dict[int, int] | None, num_classes: int, nodata: float | None
) -> tuple[Callable[[np.ndarray], np.ndarray], set[int]]:
    """A function mapping raw label values to class ids, and the set of accepted raw values."""
    if label_map is None:
        accepted = set(range(num_classes)) | {IGNORE_INDEX}
        mapping = {v: v for v in accepted}
    else:
        accepted = set(label_map)
        mapping = dict(label_map)
    if nodata is not None and float(nodata).is_integer():
        accepted.add(int(nodata))
        mapping[int(nodata)] = IGNORE_INDEX
    lut = np.full(65536, IGNORE_INDEX, dtype=np.uint8)
    for src, dst in mapping.items():
        if 0 <= src < 65536:
            lut[src] = dst

    def apply(raw: np.ndarray) -> np.ndarray:
        if raw.dtype.kind in "ui" and raw.dtype.itemsize <= 2 and raw.min(initial=0) >= 0:
            return lut[raw.astype(np.int64)]
        out = np.full(raw.shape, IGNORE_INDEX, dtype=np.uint8)
        for src, dst in mapping.items():
            out[raw == src] = dst
        return out

    return apply, accepted


def check_label_values(
    label: Path, label_map: dict[int, int] | None, num_classes: int, unknown: str
) -> None:
    """Scan a label raster block by block; raise if it holds values the map does not know."""
    with open_raster(label, "label raster") as src, reading(label, "label raster"):
        _, accepted = _label_lut(label_map, num_classes, src.nodata)
        seen: set[int] = set()
        for _, window in src.block_windows(1):
            values = np.unique(src.read(1, window=window))
            if values.dtype.kind == "f":  # NaN: no label there (ignored)
                values = values[finite_integer_values(values, label, "label raster")]
            seen.update(int(v) for v in values)
    bad = sorted(seen - accepted)
    if bad and unknown == "error":
        shown = ", ".join(map(str, bad[:12])) + (" ..." if len(bad) > 12 else "")
        if label_map is None:
            fix = (
                f"values must be class ids 0..{num_classes - 1} or 255; pass --label-map "
                "SRC:DST,... to translate them"
            )
        else:
            fix = "add them to --label-map, or pass --unknown-labels ignore to skip them"
        raise InputError(f"label raster {label} holds values not in the label map: {shown}; {fix}")


# --------------------------------------------------------------------------------------------
# Stretch estimation
# --------------------------------------------------------------------------------------------


def _sample_scene(
    scene: SceneInfo, bands: Sequence[int], opts: TileOptions, max_side: int = 768
) -> np.ndarray:
    """Valid pixel values (n, bands) of a decimated read of the scene (after --scale/--offset)."""
    with rasterio.Env(**gdal_env()), _open_scene_source(scene) as src, reading(scene.name):
        f = max(1.0, max(src.width, src.height) / max_side)
        shape = (max(1, round(src.height / f)), max(1, round(src.width / f)))
        data = src.read(list(bands), out_shape=(len(bands), *shape), resampling=Resampling.nearest)
        valid = read_valid_mask(src, tuple(bands), out_shape=shape)
        data = _scaled(data, opts)
    if np.issubdtype(data.dtype, np.floating):
        valid &= np.all(np.isfinite(data), axis=0)
    return data[:, valid].T.astype(np.float64)


def resolve_stretch(
    spec: StretchSpec, scenes: Sequence[SceneInfo], n: int, opts: TileOptions | None = None
) -> Stretch:
    """Turn a :class:`StretchSpec` into one :class:`Stretch` for every scene of the dataset
    (``n`` bands of each: R, G, B[, NIR])."""
    opts = opts or TileOptions()
    if spec.method == "fixed":
        ranges = spec.ranges
        if len(ranges) == 1:
            ranges = ranges * n
        if len(ranges) < min(n, 3):
            raise InputError(
                f"--stretch gives {len(ranges)} ranges but {n} bands are read; give one "
                "MIN:MAX for all bands or one per band"
            )
        ranges = (ranges + ranges[-1:] * n)[:n]
        return Stretch("fixed", tuple(r[0] for r in ranges), tuple(r[1] for r in ranges))
    scaled = (opts.scale, opts.offset) != (1.0, 0.0)
    dtypes = {"float32" if scaled else s.dtype for s in scenes}
    if spec.method == "none" or dtypes == {"uint8"}:
        if spec.method == "none" and dtypes != {"uint8"}:
            log.warning("--stretch none on %s input: values are clipped to 0..255", sorted(dtypes))
        return Stretch("none", (0.0,) * n, (255.0,) * n)
    if "uint8" in dtypes:
        raise InputError(
            f"the scenes mix uint8 with {sorted(dtypes - {'uint8'})}; one automatic stretch "
            "cannot fit both: give --stretch MIN:MAX or tile them separately"
        )
    samples = [_sample_scene(s, s.bands[:n], opts) for s in scenes]
    allv = (
        np.concatenate([s for s in samples if len(s)], axis=0)
        if any(len(s) for s in samples)
        else None
    )
    if allv is None:
        raise InputError("the scenes hold no valid pixels to estimate --stretch auto; give MIN:MAX")
    lo_p, hi_p = spec.percentiles
    lo = np.percentile(allv, lo_p, axis=0)
    hi = np.percentile(allv, hi_p, axis=0)
    hi = np.where(hi > lo, hi, lo + 1.0)
    return Stretch(
        "auto",
        tuple(round(float(v), 4) for v in lo),
        tuple(round(float(v), 4) for v in hi),
        percentiles=(lo_p, hi_p),
    )


# --------------------------------------------------------------------------------------------
# The tile grid
# --------------------------------------------------------------------------------------------


def grid_offsets(length: int, tile: int, overlap: int) -> list[int]:
    """Tile start offsets along one axis; the last tile reaches (and may pass) the far edge."""
    stride = tile - overlap
    n = 1 + max(0, math.ceil((length - tile) / stride))
    return [i * stride for i in range(n)]


def tile_windows(width: int, height: int, tile: int, overlap: int) -> list[Window]:
    """Full ``tile x tile`` windows covering the scene, in row-major order."""
    return [
        Window(col, row, tile, tile)
        for row in grid_offsets(height, tile, overlap)
        for col in grid_offsets(width, tile, overlap)
    ]


def _clip(window: Window, width: int, height: int) -> Window:
    return Window(
        window.col_off,
        window.row_off,
        min(window.width, width - window.col_off),
        min(window.height, height - window.row_off),
    )


# --------------------------------------------------------------------------------------------
# Per-scene work (runs in worker processes)
# --------------------------------------------------------------------------------------------


@dataclass
class _SceneJob:
    scene: SceneInfo
    out: Path
    options: TileOptions
    stretch: Stretch


def _tile_scene(job: _SceneJob) -> tuple[list[dict[str, Any]], int]:
    with reading(job.scene.name, "scene (or its label raster)"):
        return _tile_scene_unchecked(job)


def _tile_scene_unchecked(job: _SceneJob) -> tuple[list[dict[str, Any]], int]:
    scene, opts, out = job.scene, job.options, job.out
    k = len(opts.classes)
    t = opts.tile_size
    records: list[dict[str, Any]] = []
    skipped = 0
    with rasterio.Env(**gdal_env()), _open_scene_source(scene) as src:
        lab = open_raster(scene.label, "label raster") if scene.label else None
        try:
            to_class = _label_lut(opts.label_map, k, lab.nodata)[0] if lab else None
            clear_id = opts.classes.index("clear") if scene.clear else None

            rgb = list(scene.bands[:3])
            for window in tile_windows(src.width, src.height, t, opts.overlap):
                vw = _clip(window, src.width, src.height)
                h, w = int(vw.height), int(vw.width)
                valid = np.zeros((t, t), dtype=bool)
                valid[:h, :w] = read_valid_mask(src, scene.bands, window=vw)
                data = _scaled(src.read(rgb, window=vw), opts)
                if np.issubdtype(data.dtype, np.floating):
                    valid[:h, :w] &= np.all(np.isfinite(data), axis=0)
                    data = np.nan_to_num(data)
                fraction = float(valid.mean())
                if fraction < opts.min_valid_fraction or not valid.any():
                    skipped += 1
                    continue
                image = np.zeros((3, t, t), dtype=np.uint8)
                image[:, :h, :w] = job.stretch.apply(data)
                image[:, ~valid] = 0
                row, col = int(window.row_off), int(window.col_off)
                tile_id = f"{scene.id}_r{row:05d}_c{col:05d}"
                ext = "jpg" if opts.image_format == "jpg" else "png"
                img_rel = f"images/{tile_id}.{ext}"
                pil = Image.fromarray(np.ascontiguousarray(image.transpose(1, 2, 0)))
                if ext == "jpg":
                    pil.save(out / img_rel, quality=opts.jpeg_quality, subsampling=0)
                else:
                    pil.save(out / img_rel, compress_level=1)
                rec: dict[str, Any] = {
                    "id": tile_id,
                    "scene": scene.id,
                    "window": {"col_off": col, "row_off": row, "width": t, "height": t},
                    "valid_window": {"col_off": col, "row_off": row, "width": w, "height": h},
                    "transform": list(src.window_transform(window))[:6],
                    "crs": scene.crs,
                    "valid_fraction": round(fraction, 6),
                    "image": img_rel,
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
                scene_labelled = clear_id is not None or (lab is not None and to_class is not None)
                if scene_labelled or scene.tile_labels:
                    label = np.full((t, t), IGNORE_INDEX, dtype=np.uint8)
                    if clear_id is not None:  # known cloud-free: every valid pixel is clear
                        label[:h, :w] = clear_id
                    elif lab is not None and to_class is not None:
                        label[:h, :w] = to_class(lab.read(1, window=vw))
                    used = paste(label, row, col, scene.tile_labels, h, w)
                    if not scene_labelled and not used:
                        records.append(rec)
                        continue
                    rec["label_round"] = 0
                    if used:  # the latest round that labelled it (None: a file without a round)
                        rounds = [tl.round for tl in used if tl.round is not None]
                        rec["label_round"] = max(rounds) if len(rounds) == len(used) else None
                        rec["label_files"] = [tl.path.name for tl in used]
                    label[~valid] = IGNORE_INDEX
                    counts = np.bincount(label.ravel(), minlength=256)
                    rec["label"] = f"labels/{tile_id}.png"
                    rec["class_counts"] = [int(c) for c in counts[:k]]
                    rec["ignore_count"] = int(counts[IGNORE_INDEX])
                    partial = {
                        str(c): int(counts[c])
                        for c in np.flatnonzero(counts)
                        if k <= c < IGNORE_INDEX
                    }
                    if partial:
                        rec["partial_counts"] = partial
                    Image.fromarray(label).save(out / rec["label"], compress_level=1)
                records.append(rec)
        finally:
            if lab is not None:
                lab.close()
    return records, skipped


# --------------------------------------------------------------------------------------------
# Splits
# --------------------------------------------------------------------------------------------


def _match_scene(name: str, scenes: Sequence[SceneInfo]) -> SceneInfo:
    p = Path(name)
    for s in scenes:
        if p.exists() and s.path.resolve() == p.resolve():
            return s
    hits = [s for s in scenes if name in (s.path.name, s.path.stem, str(s.path), s.id)]
    if len(hits) == 1:
        return hits[0]
    raise InputError(
        f"--val {name} matches {'none' if not hits else 'several'} of the scenes given; "
        "name one of the input scenes by path or file name"
    )


def assign_val_scenes(scenes: Sequence[SceneInfo], opts: TileOptions) -> None:
    """Mark whole scenes as validation scenes (``role = "val"``)."""
    rng = random.Random(opts.seed)
    if opts.val:
        for name in opts.val:
            s = _match_scene(name, scenes)
            if s.label is None:
                raise InputError(
                    f"--val {name}: scene {s.path} has no label raster in --label-dir; a "
                    "validation scene needs labels"
                )
            s.role = "val"
    elif opts.val_fraction > 0:
        labeled = [s for s in scenes if s.label is not None]
        if len(labeled) < 2:
            raise InputError(
                f"--val-fraction needs at least 2 labelled scenes, found {len(labeled)}; "
                "add labelled scenes or name one with --val"
            )
        n = min(len(labeled) - 1, max(1, round(opts.val_fraction * len(labeled))))
        for s in rng.sample(labeled, n):
            s.role = "val"


def choose_labeled(
    pool: Sequence[dict[str, Any]], fraction: float, num_classes: int, seed: int, cover: bool
) -> set[str]:
    """Pick ``fraction`` of the labelled training tiles; optionally cover every class present."""
    if not pool or fraction <= 0:
        return set()
    n = min(len(pool), max(1, round(fraction * len(pool))))
    rng = random.Random(seed + 1)
    order = list(pool)
    rng.shuffle(order)
    chosen: list[dict[str, Any]] = []
    if cover:
        totals = np.sum([t["class_counts"] for t in pool], axis=0)
        for c in sorted(range(num_classes), key=lambda c: totals[c]):
            if totals[c] == 0 or len(chosen) >= n:
                continue
            if any(t["class_counts"][c] > 0 for t in chosen):
                continue
            with_c = [t for t in order if t["class_counts"][c] > 0 and t not in chosen]
            if with_c:
                chosen.append(with_c[0])
    ids = {t["id"] for t in chosen}
    for t in order:
        if len(ids) >= n:
            break
        ids.add(t["id"])
    return ids


# --------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------


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


def tile_scenes(
    scenes: Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    options: TileOptions | None = None,
    progress: bool = False,
) -> TileSummary:
    """Tile ``scenes`` into ``out`` (images, labels, manifest, splits); see the module docstring.

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
    from tqdm import tqdm

    opts = options or TileOptions()
    opts.validate()
    out_path = Path(out)
    check_scenes_exist(scenes, "tile", [("--clear", opts.clear)], " (nothing was tiled)")
    inputs = [Path(p) for p in scenes] + list(opts.clear) + list(opts.label_dirs)
    inputs += [f for files in opts.band_files for f in files]
    check_out_dir(out_path, opts.overwrite, "tiles", inputs)
    if not scenes and not opts.clear and not opts.band_files:
        raise InputError(
            "no scenes given; pass 4-band rasters, product folders or archives (SAFE, "
            "Landsat), STAC items, or --band-files R,G,B[,NIR]"
        )
    for d in opts.label_dirs:
        if not Path(d).is_dir():
            raise InputError(f"--label-dir {d} is not a folder")
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
    notes: list[str] = []
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
    assign_val_scenes(infos, opts)
    # one band count for the dataset: the given --bands, else 4 when every scene has NIR
    n = len(opts.bands) if opts.bands else (4 if all(len(s.bands) >= 4 for s in infos) else 3)
    stretch = resolve_stretch(opts.stretch, infos, n, opts)
    if opts.gamma != 1.0 and stretch.method != "none":
        stretch = replace(stretch, gamma=opts.gamma)
    contract = DataContract(
        classes=tuple(opts.classes),
        # without --bands each scene's R, G, B[, NIR] were picked by its band names (or are a
        # product's stack): predict does the same, and reads unnamed files as 1, 2, 3[, 4]
        bands=tuple(opts.bands) if opts.bands else (1, 2, 3, 4)[:n],
        stretch=stretch,
        tile_size=opts.tile_size,
        scale=opts.scale,
        offset=opts.offset,
    )

    total = sum(len(tile_windows(s.width, s.height, opts.tile_size, opts.overlap)) for s in infos)
    remove_stale_temps([out_path])  # what a SIGKILL of an earlier run into --out left
    with writing(out_path), atomic_dir(out_path, opts.overwrite) as tmp:
        for sub in ("images", "labels", "valid", "splits"):
            (tmp / sub).mkdir()
        jobs = [_SceneJob(s, tmp, opts, stretch) for s in infos]
        results: list[tuple[list[dict[str, Any]], int]] = []
        bar = tqdm(total=total, unit="tile", desc="tile", disable=not progress)
        try:
            if opts.workers > 1 and len(jobs) > 1:
                ctx = get_context("spawn")
                with ProcessPoolExecutor(min(opts.workers, len(jobs)), mp_context=ctx) as ex:
                    for res in ex.map(_tile_scene, jobs):
                        results.append(res)
                        bar.update(len(res[0]) + res[1])
            else:
                for job in jobs:
                    res = _tile_scene(job)
                    results.append(res)
                    bar.update(len(res[0]) + res[1])
        finally:
            bar.close()
        tiles = [rec for recs, _ in results for rec in recs]
        skipped = sum(n for _, n in results)
        if not tiles:
            raise InputError(
                f"no tile has at least {opts.min_valid_fraction:.0%} valid pixels; check the "
                "scenes' nodata or lower --min-valid"
            )

        role = {s.id: s.role for s in infos}
        val_ids = [t["id"] for t in tiles if role[t["scene"]] == "val"]
        # the pool of --labeled-fraction: tiles of scenes with a label raster (or --clear), the
        # same whether or not tile labels were added since (so earlier rounds keep their tiles)
        whole = {s.id for s in infos if s.label is not None or s.clear}
        pool = [t for t in tiles if role[t["scene"]] != "val" and t["scene"] in whole]
        pool = [
            t
            for t in pool
            if sum(t["class_counts"]) + sum(t.get("partial_counts", {}).values()) > 0
        ]
        # --clear tiles all go to the labelled split (README, --help); the others are drawn
        clear_ids = {t["id"] for t in pool if t["scene"] in {s.id for s in infos if s.clear}}
        drawn = [t for t in pool if t["id"] not in clear_ids]
        labeled = clear_ids | choose_labeled(
            drawn, opts.labeled_fraction, len(opts.classes), opts.seed, opts.cover_classes
        )
        labeled |= {  # tiles labelled by tile labels (suggest's rounds) are always labelled
            t["id"]
            for t in tiles
            if role[t["scene"]] != "val" and t.get("label_files") and sum(t["class_counts"]) > 0
        }
        unlabeled = [t["id"] for t in tiles if role[t["scene"]] != "val" and t["id"] not in labeled]
        splits = {
            "labeled": [t["id"] for t in tiles if t["id"] in labeled],
            "unlabeled": unlabeled,
            "val": val_ids,
        }
        for name, ids in splits.items():
            (tmp / "splits" / f"{name}.txt").write_text("".join(f"{i}\n" for i in ids))
        if not splits["labeled"]:
            msg = (
                "no labelled training tiles: training needs --label-dir and --labeled-fraction > 0"
            )
            log.warning(msg)
            notes.append(msg)

        shares = _class_shares(tiles, splits, opts.classes)
        manifest = {
            "format": MANIFEST_FORMAT,
            "format_version": MANIFEST_VERSION,
            "created_by": f"cloudcps {__version__}",
            **contract.to_dict(),
            "overlap": opts.overlap,
            "image_format": opts.image_format,
            "jpeg_quality": opts.jpeg_quality if opts.image_format == "jpg" else None,
            "label_map": label_map_to_dict(opts.label_map) if opts.label_map else None,
            "partial_labels": {
                str(v): list(partial_classes(v))
                for v in sorted(set((opts.label_map or {}).values()))
                if is_partial(v)
            },
            "min_valid_fraction": opts.min_valid_fraction,
            "options": {
                "labeled_fraction": opts.labeled_fraction,
                "val": list(opts.val),
                "val_fraction": opts.val_fraction,
                "cover_classes": opts.cover_classes,
                "seed": opts.seed,
            },
            "scenes": [
                {
                    "id": s.id,
                    "path": str(s.path.resolve()),
                    "label": str(s.label.resolve()) if s.label else None,
                    "width": s.width,
                    "height": s.height,
                    "dtype": s.dtype,
                    "crs": s.crs,
                    "transform": list(s.transform),
                    "role": s.role,
                    "clear": s.clear,
                    "bands": list(s.bands[:n]),
                    "source": s.record,
                    "tile_labels": [tl.to_dict() for tl in s.tile_labels],
                }
                for s in infos
            ],
            "splits": {k: len(v) for k, v in splits.items()},
            "split_files": [f"splits/{name}.txt" for name in splits],
            "skipped": {"low_valid": skipped},
            "class_shares": shares,
            "label_rounds": _label_rounds(tiles, splits["labeled"]),
            "tiles": tiles,
        }
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
        class_shares=shares,
        stretch=stretch,
        warnings=notes,
    )


def _class_shares(
    tiles: Sequence[dict[str, Any]], splits: dict[str, list[str]], classes: Sequence[str]
) -> dict[str, dict[str, float]]:
    by_id = {t["id"]: t for t in tiles}
    shares: dict[str, dict[str, float]] = {}
    for name, ids in splits.items():
        counts = [by_id[i]["class_counts"] for i in ids if by_id[i]["class_counts"] is not None]
        if not counts:
            continue
        tot = np.sum(counts, axis=0).astype(float)
        s = tot.sum()
        shares[name] = {
            c: round(float(v / s), 5) if s else 0.0 for c, v in zip(classes, tot, strict=True)
        }
    return shares


def _label_rounds(tiles: Sequence[dict[str, Any]], labeled: Sequence[str]) -> dict[str, int]:
    """Labelled-split tiles per label round (``"0"``: scene label rasters; ``"null"``: tile
    labels without a round)."""
    ids = set(labeled)
    counts: dict[str, int] = {}
    for t in tiles:
        if t["id"] in ids:
            key = json.dumps(t.get("label_round"))
            counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items()))


def summary_dict(summary: TileSummary) -> dict[str, Any]:
    d = asdict(summary)
    d["out"] = str(summary.out)
    return d
