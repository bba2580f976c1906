"""One input scene: what the tiler knows of it (:class:`SceneInfo`), how it is opened and read,
its label raster (found by name, checked against the scene's grid, its values against the label
map)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS

from cloudcps.contract import IGNORE_INDEX, RASTER_SUFFIXES, scale_values
from cloudcps.errors import InputError
from cloudcps.io import finite_integer_values, open_raster, reading
from cloudcps.tiling.labels import TileLabel
from cloudcps.tiling.options import TileOptions

log = logging.getLogger(__name__)


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


def open_scene_source(scene: SceneInfo) -> rasterio.DatasetReader:
    """The scene's dataset: its file, or a product's stacking VRT (reopened from its XML, also
    in a worker process)."""
    if scene.source is None:
        return open_raster(scene.path, "scene")
    return rasterio.open(scene.source)


def scaled(data: np.ndarray, opts: TileOptions) -> np.ndarray:
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


def _check_scene_name(path: Path) -> None:
    bad = [c for c in path.stem if not c.isprintable()]
    if bad:
        raise InputError(
            f"scene {str(path)!r} has a control character ({bad[0]!r}) in its name, which would "
            "break the one-id-per-line split lists; rename the file"
        )


def _raster_bands(
    src: rasterio.DatasetReader, path: Path, given: tuple[int, ...] | None
) -> tuple[int, ...]:
    """R, G, B[, NIR] of a plain raster: ``--bands``, else by its band names, else 1, 2, 3[, 4]."""
    from cloudcps.bands import DEFAULT_ORDER, check_scene_bands, needs_bands_message, raster_bands

    if given is not None:
        if src.count < max(given):
            raise InputError(
                f"scene {path} has {src.count} band(s) but --bands "
                f"{','.join(map(str, given))} asks for band {max(given)}; pass --bands with "
                "the file's R,G,B[,NIR] band numbers (e.g. --bands 1,2,3 for an RGB file)"
            )
        return given
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
    return chosen


def _check_label_grid(info: SceneInfo, scene_crs: CRS | None, scene_tf: Affine) -> None:
    """The label raster must cover the scene pixel for pixel, on its grid and in its CRS."""
    assert info.label is not None
    path = info.path
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


def inspect_scene(
    path: Path,
    bands: Sequence[int] | None,
    label_dirs: Sequence[Path],
    band_files: Sequence[Path] | None = None,
) -> SceneInfo:
    """Open a scene (a raster, a product or band files: :func:`cloudcps.scenes.open_scene`) and
    its label raster, and check that they can be tiled together. ``bands`` None: R, G, B[, NIR]
    by the file's band names, else 1, 2, 3[, 4]."""
    from cloudcps.scenes import open_scene

    _check_scene_name(path)
    given = tuple(bands) if bands is not None else None
    with open_scene(path, bands=given, band_files=band_files) as opened:
        src = opened.dataset
        shown = "--band-files " + ",".join(map(str, band_files)) if band_files else str(path)
        if opened.kind != "raster":
            assert opened.bands is not None
            chosen = opened.bands
        else:
            chosen = _raster_bands(src, path, given)
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
        _check_label_grid(info, scene_crs, scene_tf)
    return info


def label_lut(
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
        _, accepted = label_lut(label_map, num_classes, src.nodata)
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
