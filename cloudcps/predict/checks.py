"""What is checked about a scene before it is predicted: the bands that feed the model, and
values or shapes that would give a useless mask without any error (warnings, on a cheap sample).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.windows import Window

from cloudcps.bands import DEFAULT_ORDER, needs_bands_message, raster_bands
from cloudcps.contract import DataContract, gdal_env
from cloudcps.errors import InputError
from cloudcps.io import read_valid_mask, reading
from cloudcps.scenes import Scene, SceneRef, as_ref

log = logging.getLogger(__name__)


def resolve_bands(
    contract: DataContract,
    count: int,
    path: Path,
    bands: Sequence[int] | None,
    named: tuple[int, ...] | None = None,
) -> list[int]:
    """The 1-based R,G,B band numbers of ``path`` that feed the model.

    ``bands`` (``--bands``) decides when given (every number must exist in the file). Else the
    file's own band metadata (``named``: :func:`cloudcps.bands.raster_bands`) decides; a file of
    more than 4 bands that names none needs ``--bands``, unless the model was trained on
    such files with other bands than 1,2,3 (its contract's).
    """
    if bands is not None:
        over = [b for b in bands if b > count]
        if over:
            raise InputError(
                f"--bands {','.join(map(str, bands))}: scene {path} has only {count} band(s), "
                f"so there is no band {over[0]}; give numbers from 1 to {count}"
            )
        chosen = list(bands)[:3]
    elif named is not None:
        chosen = list(named[:3])
        if tuple(chosen) != tuple(contract.bands[:3]):
            log.info("%s names its bands: reading R,G,B from bands %s", path, chosen)
    elif count > 4 and tuple(contract.bands[:3]) == DEFAULT_ORDER[:3]:
        raise InputError(needs_bands_message(path, count))
    elif count >= max(contract.bands[:3]):
        chosen = list(contract.bands[:3])
    elif count == 3:
        log.info("%s has 3 bands: reading them as R,G,B", path)
        chosen = [1, 2, 3]
    else:
        names = ",".join(contract.band_names[: len(contract.bands)]).upper()
        raise InputError(
            f"scene {path} has {count} band(s); the model reads R,G,B from bands "
            f"{','.join(map(str, contract.bands[:3]))} ({names} at "
            f"{','.join(map(str, contract.bands))}): give a 4-band or RGB scene, or --bands R,G,B"
        )
    if max(chosen) > count:
        raise InputError(f"--bands {','.join(map(str, chosen))}: {path} has only {count} band(s)")
    return chosen


def scene_bands(
    scene: str | os.PathLike[str] | SceneRef,
    contract: DataContract,
    bands: Sequence[int] | None = None,
) -> list[int]:
    """Open a scene and resolve the bands that feed the model (:func:`resolve_bands`): the
    checks :func:`~cloudcps.predict.scene.predict_scene` makes, to make them for every scene
    before any work."""
    ref = as_ref(scene)
    with rasterio.Env(**gdal_env()), ref.open(bands) as opened:
        return bands_of(opened, ref, contract, bands)


def bands_of(
    opened: Scene, ref: SceneRef, contract: DataContract, bands: Sequence[int] | None
) -> list[int]:
    """The bands of an opened scene that feed the model: a product's own R,G,B, else
    :func:`resolve_bands` of the raster."""
    src = opened.dataset
    if opened.kind != "raster":
        assert opened.bands is not None
        return list(opened.bands[:3])
    named = raster_bands(src) if bands is None else None
    return resolve_bands(contract, src.count, ref.path, bands, named)


def scene_warnings(
    opened: Scene,
    name: str,
    bands: Sequence[int],
    contract: DataContract,
    scale: float,
    offset: float,
) -> list[str]:
    """Every warning about an opened scene that can be known before predicting it (its values
    against the model's stretch, degenerate shapes and values, scaling on top of a product's),
    judged on one sample of it."""
    src = opened.dataset
    with reading(name):
        sample = sample_scene(src, bands)
    range_warning = check_value_range(src, bands, contract, scale, offset, sample, name)
    notes = [range_warning] if range_warning else []
    notes += degenerate_warnings(src, bands, sample, name)
    if opened.scaled and (scale, offset) != (1.0, 0.0):
        notes.append(
            f"{name}: --scale {scale:g} / --offset {offset:g} apply "
            "on top of the product's own scaling (already reflectance x 10000)"
        )
    return notes


def check_value_range(
    src: rasterio.DatasetReader,
    bands: Sequence[int],
    contract: DataContract,
    scale: float = 1.0,
    offset: float = 0.0,
    sample: tuple[np.ndarray, np.ndarray] | None = None,
    name: str | None = None,
) -> str | None:
    """A warning when the scene's values are far outside what the model's stretch expects.

    A model trained on reflectance x 10000 turns reflectance in 0-1 into a black image, and
    8-bit or differently scaled data into nonsense, without any error: a sample of the scene
    (:func:`sample_scene`, or ``sample`` when the caller has read it) is compared with the
    contract's stretch range.
    """
    st = contract.stretch
    shown = name or src.name
    if st.method == "none":
        return None
    data, valid = sample or sample_scene(src, bands)
    with np.errstate(over="ignore"):  # a float64 scene near its largest values
        values = data[:, valid].astype(np.float64) * scale + offset
    values = values[:, np.all(np.isfinite(values), axis=0)]
    if values.size == 0:
        return None
    lo, hi = min(st.low), max(st.high)
    p50, p99 = (float(v) for v in np.percentile(values, [50, 99]))
    expects = f"the model expects values in about {lo:g}..{hi:g}"
    if st.method == "fixed" and hi >= 1000:
        expects += " (reflectance x 10000, as Sentinel-2 L1C/L2A and Landsat TOA products)"
    if p99 < lo + 0.03 * (hi - lo):
        return (
            f"scene {shown} reaches only {p99:.4g} (99th percentile) but {expects}: the mask "
            "will be wrong; scale the values with --scale (e.g. --scale 10000 for reflectance in "
            "0-1)"
        )
    if p50 > hi:
        return (
            f"scene {shown} has a median of {p50:.4g}, above the top of the stretch; {expects}: "
            "the mask will be wrong; scale the values with --scale (e.g. --scale 0.1) or --offset"
        )
    return None


def sample_scene(
    src: rasterio.DatasetReader, bands: Sequence[int], grid: int = 6, size: int = 128
) -> tuple[np.ndarray, np.ndarray]:
    """A cheap sample of a scene's values and valid mask: its overviews when it has some, else
    ``grid`` x ``grid`` small windows spread over it (a decimated read of a scene without
    overviews decodes every block: seconds for a Sentinel-2 scene)."""
    if src.overviews(bands[0]) or max(src.width, src.height) <= grid * size:
        f = max(1.0, max(src.width, src.height) / 512)
        shape = (max(1, round(src.height / f)), max(1, round(src.width / f)))
        data = src.read(list(bands), out_shape=(len(bands), *shape), resampling=Resampling.nearest)
        return data, read_valid_mask(src, tuple(bands), out_shape=shape)
    parts, masks = [], []
    h, w = min(size, src.height), min(size, src.width)
    for i in range(grid):
        for j in range(grid):
            r = round((src.height - h) * (i + 0.5) / grid)
            c = round((src.width - w) * (j + 0.5) / grid)
            win = Window(c, r, w, h)
            parts.append(src.read(list(bands), window=win))
            masks.append(read_valid_mask(src, tuple(bands), window=win))
    return np.concatenate(parts, axis=2), np.concatenate(masks, axis=1)


def degenerate_warnings(
    src: rasterio.DatasetReader,
    bands: Sequence[int],
    sample: tuple[np.ndarray, np.ndarray] | None = None,
    name: str | None = None,
) -> list[str]:
    """Warnings for scenes that predict without error but not usefully: tiny, all nodata, or
    with non-finite values (judged on :func:`sample_scene`, or ``sample``)."""
    out = []
    shown = name or src.name
    if min(src.width, src.height) < 32:
        out.append(
            f"scene {shown} is only {src.width}x{src.height} px; the network sees mostly "
            "padding below 32 px, so the mask is unreliable"
        )
    data, valid = sample or sample_scene(src, bands)
    if data.dtype.kind == "f":
        bad = ~np.all(np.isfinite(data), axis=0)
        if bad.any():
            out.append(
                f"scene {shown}: {100 * bad.mean():.1f} % of the sampled pixels are NaN or "
                "infinite; they are masked as nodata (255)"
            )
            valid = valid & ~bad
    return out


def no_valid_pixel_warning(name: str) -> str:
    """The warning for a scene with no valid pixel at all (known once it has been read)."""
    return (
        f"scene {name} has no valid pixel (all nodata): the mask is nodata (255) wherever the "
        "scene is"
    )
