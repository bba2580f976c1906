"""The dataset's stretch: one :class:`Stretch` for every scene, fixed by ``--stretch`` or
estimated from percentiles of a decimated read of all scenes."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import rasterio
from rasterio.enums import Resampling

from cloudcps.contract import Stretch, StretchSpec, gdal_env
from cloudcps.errors import InputError
from cloudcps.io import read_valid_mask, reading
from cloudcps.tiling.options import TileOptions
from cloudcps.tiling.scene import SceneInfo, open_scene_source, scaled

log = logging.getLogger(__name__)


def _sample_scene(
    scene: SceneInfo, bands: Sequence[int], opts: TileOptions, max_side: int = 768
) -> np.ndarray:
    """Valid pixel values (n, bands) of a decimated read of the scene (after --scale/--offset)."""
    with rasterio.Env(**gdal_env()), open_scene_source(scene) as src, reading(scene.name):
        f = max(1.0, max(src.width, src.height) / max_side)
        shape = (max(1, round(src.height / f)), max(1, round(src.width / f)))
        data = src.read(list(bands), out_shape=(len(bands), *shape), resampling=Resampling.nearest)
        valid = read_valid_mask(src, tuple(bands), out_shape=shape)
        data = scaled(data, opts)
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
