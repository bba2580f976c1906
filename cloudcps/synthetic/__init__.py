"""Seeded synthetic 4-band scenes with exact per-pixel cloud labels.

The generator builds a georeferenced R, G, B, NIR scene (uint16 digital numbers, reflectance
x 10000, 0 = nodata) together with a label raster whose classes follow from the construction:

* ``0`` clear, ``1`` thick cloud, ``2`` thin cloud, ``3`` cloud shadow, ``255`` nodata.

Ground
    A land-cover mosaic of agricultural parcels (an anisotropic jittered-grid Voronoi tessellation
    with per-parcel crop spectra: green crops, bare soil, stubble, grassland), forest stands,
    lakes and an optional meandering river, and towns with a street grid and fine texture.
    Multi-scale smooth noise adds brightness and vegetation-vigour texture, and each pixel gets
    a little sensor noise.
Thick cloud
    A fractal field (summed smooth noise over several octaves) thresholded at the quantile that
    gives the requested cover, so edges are fractal. Thick pixels are nearly opaque (alpha 0.88
    at the edge, 1 in the core) with brighter cores, internal texture and sun-side shading. A
    faint skirt (alpha < 0.1) outside the mask softens the edge without changing the label.
Thin cloud
    A smoother, optionally streaky (cirrus-like) field blended over the ground with
    ``out = (1 - a) * ground + a * cloud``. The label is thin where the field exceeds the
    threshold that gives the requested cover (alpha there is 0.12 and rises to 0.3-0.5); just
    outside, a sub-threshold haze (alpha < 0.12) fades to zero, which makes thin cloud the
    hardest class to delineate.
Cloud shadow
    The thick-cloud opacity displaced away from the sun by ``height / tan(elevation)`` metres
    (see :func:`shadow_offset`) darkens the ground multiplicatively (blue least, NIR most). Thin
    clouds cast a weak, unlabelled shadow. Clouds outside the frame cast shadows into it, since
    the cloud fields are generated on a domain padded by the displacement.

Labels follow the priority thick > thin > shadow > clear, and an optional rotated-footprint
nodata border (like a Landsat scene) sets every band to 0 and the label to 255 outside it.
Everything is drawn from ``numpy.random.SeedSequence(spec.seed)``, so equal specs give
byte-identical scenes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from numpy.typing import NDArray
from scipy import ndimage

__all__ = [
    "CLEAR",
    "NODATA_LABEL",
    "SHADOW",
    "THICK",
    "THIN",
    "SceneSpec",
    "SyntheticScene",
    "generate_scene",
    "make_dataset",
    "shadow_offset",
    "write_scene",
]

CLEAR = 0
THICK = 1
THIN = 2
SHADOW = 3
NODATA_LABEL = 255
BAND_NAMES = ("red", "green", "blue", "nir")

_F32 = NDArray[np.float32]
_BoolArr = NDArray[np.bool_]

# Land-cover codes of the ground mosaic (internal).
_AGRI, _FOREST, _WATER, _TOWN = 0, 1, 2, 3

_THIN_LABEL_ALPHA = 0.12  # thin-cloud alpha at the labelled boundary
_THICK_EDGE_ALPHA = 0.88  # thick-cloud alpha at the labelled boundary
_SKIRT_ALPHA = 0.10  # largest alpha of the haze skirt just outside a thick cloud
_SCENE_GAP_M = 10_000.0  # spacing between scene footprints in make_dataset


@dataclass(frozen=True)
class SceneSpec:
    """Parameters of one synthetic scene; ``None`` fields are drawn from ``seed``.

    Attributes:
        height: Rows in pixels.
        width: Columns in pixels.
        seed: Seed of every random draw of the scene.
        pixel_size: Ground sampling distance in metres (square pixels).
        crs: Coordinate reference system, e.g. ``"EPSG:32633"``.
        origin: Map coordinates ``(x, y)`` of the upper-left corner of the scene.
        thick_cover: Fraction (0-1) of valid pixels labelled thick cloud.
        thin_cover: Fraction (0-1) of valid pixels labelled thin cloud (capped by the pixels
            that are not thick cloud).
        cloud_height: Cloud height above ground in metres (drawn in 1000-4000).
        sun_azimuth: Sun azimuth in degrees clockwise from north (drawn in 0-360).
        sun_elevation: Sun elevation in degrees above the horizon (drawn in 25-65).
        nodata_border: Whether to cut a rotated-footprint nodata border.
    """

    height: int = 1024
    width: int = 1024
    seed: int = 0
    pixel_size: float = 30.0
    crs: str = "EPSG:32633"
    origin: tuple[float, float] = (500000.0, 5000000.0)
    thick_cover: float | None = None
    thin_cover: float | None = None
    cloud_height: float | None = None
    sun_azimuth: float | None = None
    sun_elevation: float | None = None
    nodata_border: bool = False


@dataclass(frozen=True, eq=False)
class SyntheticScene:
    """A generated scene with its exact labels and georeferencing.

    Attributes:
        image: ``(4, H, W)`` uint16 R, G, B, NIR reflectance x 10000; 0 in every band = nodata.
        label: ``(H, W)`` uint8, 0 clear, 1 thick, 2 thin, 3 shadow, 255 nodata.
        transform: Affine pixel-to-map transform (north up).
        crs: Coordinate reference system string.
        spec: The spec with every drawn parameter filled in (covers, cloud height, sun angles).
    """

    image: NDArray[np.uint16]
    label: NDArray[np.uint8]
    transform: Affine
    crs: str
    spec: SceneSpec


# --------------------------------------------------------------------------------------------
# Small numeric helpers
# --------------------------------------------------------------------------------------------


def _grid(h: int, w: int) -> tuple[_F32, _F32]:
    """Row and column coordinates of an ``(h, w)`` grid as float32 arrays."""
    yy = np.broadcast_to(np.arange(h, dtype=np.float32)[:, None], (h, w))
    xx = np.broadcast_to(np.arange(w, dtype=np.float32)[None, :], (h, w))
    return yy, xx


def _smoothstep(x: _F32) -> _F32:
    """Cubic smoothstep of ``x`` clipped to [0, 1]."""
    t = np.clip(x, 0.0, 1.0)
    return np.asarray(t * t * (3.0 - 2.0 * t), dtype=np.float32)


def _threshold_for_count(values: _F32, k: int) -> float:
    """A threshold with exactly ``k`` of ``values`` strictly above it (barring ties).

    Args:
        values: 1-D array of candidate values.
        k: How many values should exceed the threshold.

    Returns:
        The threshold (finite even for ``k`` of 0 or ``values.size``).
    """
    n = int(values.size)
    if n == 0 or k <= 0:
        return float(values.max()) + 1.0 if n else 0.0
    if k >= n:
        return float(values.min()) - 1.0
    return float(np.partition(values, n - k - 1)[n - k - 1])


def _rotated_extent(
    h: int, w: int, cos_t: float, sin_t: float
) -> tuple[float, float, float, float]:
    """Bounds ``(umin, umax, vmin, vmax)`` of the rotated coordinates of an ``(h, w)`` grid."""
    ys = np.array([0.0, 0.0, h - 1.0, h - 1.0])
    xs = np.array([0.0, w - 1.0, 0.0, w - 1.0])
    u = xs * cos_t + ys * sin_t
    v = ys * cos_t - xs * sin_t
    return float(u.min()), float(u.max()), float(v.min()), float(v.max())


def _octave(
    rng: np.random.Generator,
    yy: _F32,
    xx: _F32,
    scale: float,
    aniso: float,
    cos_t: float,
    sin_t: float,
) -> _F32:
    """One octave of smooth noise: a smoothed random lattice interpolated bilinearly.

    Args:
        rng: Random generator.
        yy: Row coordinates of the output grid.
        xx: Column coordinates of the output grid.
        scale: Lattice spacing in pixels across the streak direction.
        aniso: Stretch factor along the streak direction (1 = isotropic).
        cos_t: Cosine of the streak direction (from the column axis).
        sin_t: Sine of the streak direction.

    Returns:
        Noise of roughly unit variance with the shape of ``yy``.
    """
    h, w = yy.shape
    su = scale * aniso
    umin, umax, vmin, vmax = _rotated_extent(h, w, cos_t, sin_t)
    off_u, off_v = rng.uniform(0.0, 1.0, size=2)
    shape = (math.ceil((vmax - vmin) / scale) + 4, math.ceil((umax - umin) / su) + 4)
    lattice = rng.standard_normal(shape, dtype=np.float32)
    lattice = np.asarray(ndimage.gaussian_filter(lattice, 0.6, mode="wrap"), dtype=np.float32)
    lattice /= max(float(lattice.std()), 1e-6)
    if sin_t == 0.0 and cos_t == 1.0:
        # Axis-aligned: separable bilinear interpolation, first along columns then rows.
        u1 = xx[0, :].astype(np.float64) / su + (1.0 + off_u - umin / su)
        v1 = yy[:, 0].astype(np.float64) / scale + (1.0 + off_v - vmin / scale)
        c0 = u1.astype(np.intp)
        fu = (u1 - c0).astype(np.float32)
        cols = lattice[:, c0] * (np.float32(1.0) - fu) + lattice[:, c0 + 1] * fu
        r0 = v1.astype(np.intp)
        fv = (v1 - r0).astype(np.float32)[:, None]
        blend: _F32 = cols[r0] * (np.float32(1.0) - fv)
        blend += cols[r0 + 1] * fv
        return blend
    u = (xx * np.float32(cos_t) + yy * np.float32(sin_t)) * np.float32(1.0 / su)
    u += np.float32(1.0 + off_u - umin / su)
    v = (yy * np.float32(cos_t) - xx * np.float32(sin_t)) * np.float32(1.0 / scale)
    v += np.float32(1.0 + off_v - vmin / scale)
    out = np.empty((h, w), dtype=np.float32)
    ndimage.map_coordinates(lattice, [v, u], output=out, order=1, mode="nearest")
    return out


def _fractal(
    rng: np.random.Generator,
    yy: _F32,
    xx: _F32,
    base_scale: float,
    octaves: int,
    persistence: float,
    *,
    aniso: float = 1.0,
    angle: float = 0.0,
    min_scale: float = 1.0,
) -> _F32:
    """Fractal noise: octaves of smooth noise at halving scales, normalised to mean 0, std 1.

    Args:
        rng: Random generator.
        yy: Row coordinates of the output grid.
        xx: Column coordinates of the output grid.
        base_scale: Feature size of the coarsest octave in pixels.
        octaves: Largest number of octaves.
        persistence: Amplitude ratio between successive octaves.
        aniso: Stretch of the features along ``angle`` (1 = isotropic).
        angle: Streak direction in radians from the column axis.
        min_scale: Finest octave scale in pixels; finer octaves are skipped.

    Returns:
        A float32 field with the shape of ``yy``.
    """
    cos_t, sin_t = (1.0, 0.0) if aniso == 1.0 else (math.cos(angle), math.sin(angle))
    scale = max(float(base_scale), min_scale)
    total = np.zeros(yy.shape, dtype=np.float32)
    amp = 1.0
    for _ in range(max(1, octaves)):
        total += np.float32(amp) * _octave(rng, yy, xx, scale, aniso, cos_t, sin_t)
        amp *= persistence
        scale /= 2.0
        if scale < min_scale:
            break
    total -= np.float32(total.mean())
    total /= np.float32(max(float(total.std()), 1e-6))
    return total


def shadow_offset(
    sun_azimuth: float, sun_elevation: float, cloud_height: float, pixel_size: float
) -> tuple[float, float]:
    """Displacement of a cloud's shadow from the cloud, in pixels.

    The shadow lies ``cloud_height / tan(sun_elevation)`` metres from the cloud, away from the
    sun. Rows grow southwards and columns eastwards, so a sun in the east (azimuth 90) gives a
    negative column offset (shadow to the west) and a sun in the south (azimuth 180) a negative
    row offset (shadow to the north).

    Args:
        sun_azimuth: Sun azimuth in degrees clockwise from north.
        sun_elevation: Sun elevation in degrees above the horizon (0 < e <= 90).
        cloud_height: Cloud height above ground in metres.
        pixel_size: Pixel size in metres.

    Returns:
        ``(d_row, d_col)``: a cloud at pixel ``(r, c)`` shades pixel ``(r + d_row, c + d_col)``.

    Raises:
        ValueError: If the elevation is outside (0, 90] or the pixel size is not positive.
    """
    if not 0.0 < sun_elevation <= 90.0:
        raise ValueError(f"sun_elevation must be in (0, 90] degrees, got {sun_elevation}")
    if pixel_size <= 0.0:
        raise ValueError(f"pixel_size must be positive, got {pixel_size}")
    dist = cloud_height / math.tan(math.radians(sun_elevation)) / pixel_size
    az = math.radians(sun_azimuth)
    return dist * math.cos(az), -dist * math.sin(az)


# --------------------------------------------------------------------------------------------
# Parameters
# --------------------------------------------------------------------------------------------


def _draw_thick_cover(rng: np.random.Generator, category: int | None = None) -> float:
    """Thick-cloud cover: clear, low, medium or heavy (category 0-3, drawn when ``None``)."""
    u = float(rng.random())
    if category is None:
        category = 0 if u < 0.15 else 1 if u < 0.5 else 2 if u < 0.8 else 3
    lo, hi = ((0.0, 0.0), (0.01, 0.15), (0.15, 0.45), (0.45, 0.85))[category]
    return float(rng.uniform(lo, hi)) if hi > 0.0 else 0.0


def _draw_thin_cover(rng: np.random.Generator) -> float:
    """Thin-cloud cover: none a quarter of the time, else 1-10 %."""
    zero = float(rng.random()) < 0.25
    value = float(rng.uniform(0.01, 0.10))
    return 0.0 if zero else value


def _resolve_spec(spec: SceneSpec, rng: np.random.Generator) -> SceneSpec:
    """Fill the ``None`` fields of ``spec`` with draws (always drawn, so streams stay aligned)."""
    thick = _draw_thick_cover(rng)
    thin = _draw_thin_cover(rng)
    height = float(rng.uniform(1000.0, 4000.0))
    azimuth = float(rng.uniform(0.0, 360.0))
    elevation = float(rng.uniform(25.0, 65.0))
    return replace(
        spec,
        thick_cover=thick if spec.thick_cover is None else float(spec.thick_cover),
        thin_cover=thin if spec.thin_cover is None else float(spec.thin_cover),
        cloud_height=height if spec.cloud_height is None else float(spec.cloud_height),
        sun_azimuth=azimuth if spec.sun_azimuth is None else float(spec.sun_azimuth),
        sun_elevation=elevation if spec.sun_elevation is None else float(spec.sun_elevation),
    )


def _validate(spec: SceneSpec) -> None:
    """Raise ``ValueError`` for a spec that cannot be generated."""
    if spec.height < 1 or spec.width < 1:
        raise ValueError(f"height and width must be >= 1, got {spec.height}x{spec.width}")
    if spec.seed < 0:
        raise ValueError(f"seed must be >= 0, got {spec.seed}")
    if not spec.pixel_size > 0.0:
        raise ValueError(f"pixel_size must be positive, got {spec.pixel_size}")
    for name in ("thick_cover", "thin_cover"):
        value = getattr(spec, name)
        if value is not None and not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {value}")
    if spec.cloud_height is not None and not spec.cloud_height >= 0.0:
        raise ValueError(f"cloud_height must be >= 0, got {spec.cloud_height}")
    if spec.sun_elevation is not None and not 0.0 < spec.sun_elevation <= 90.0:
        raise ValueError(f"sun_elevation must be in (0, 90] degrees, got {spec.sun_elevation}")


# --------------------------------------------------------------------------------------------
# Ground
# --------------------------------------------------------------------------------------------


def _px(metres: float, pixel_size: float, lo: float = 1.0) -> float:
    """A length in metres as pixels, at least ``lo``."""
    return max(metres / pixel_size, lo)


def _parcels(
    rng: np.random.Generator, yy: _F32, xx: _F32, cell: float, aspect: float, angle: float
) -> tuple[NDArray[np.int32], int]:
    """Parcel ids from an anisotropic Voronoi tessellation of jittered grid points.

    Args:
        rng: Random generator.
        yy: Row coordinates.
        xx: Column coordinates.
        cell: Parcel width in pixels.
        aspect: Parcel elongation along ``angle``.
        angle: Orientation of the parcels in radians.

    Returns:
        ``(ids, n)``: per-pixel parcel id in ``[0, n)`` and the number of ids.
    """
    h, w = yy.shape
    cos_t, sin_t = math.cos(angle), math.sin(angle)
    umin, umax, vmin, vmax = _rotated_extent(h, w, cos_t, sin_t)
    su = cell * aspect
    u = (xx * np.float32(cos_t) + yy * np.float32(sin_t) - np.float32(umin)) / np.float32(su)
    v = (yy * np.float32(cos_t) - xx * np.float32(sin_t) - np.float32(vmin)) / np.float32(cell)
    u += np.float32(1.0)
    v += np.float32(1.0)
    nu = math.floor((umax - umin) / su) + 3
    nv = math.floor((vmax - vmin) / cell) + 3
    jit_u = rng.uniform(0.1, 0.9, size=nv * nu).astype(np.float32)
    jit_v = rng.uniform(0.1, 0.9, size=nv * nu).astype(np.float32)
    iu = u.astype(np.int32)
    iv = v.astype(np.int32)
    best = np.full((h, w), np.inf, dtype=np.float32)
    ids = np.zeros((h, w), dtype=np.int32)
    for dv in (-1, 0, 1):
        for du in (-1, 0, 1):
            cid = (iv + dv) * nu + (iu + du)
            du_ = u - (iu + du) - jit_u[cid]
            dv_ = v - (iv + dv) - jit_v[cid]
            dist = du_ * du_ + dv_ * dv_
            closer = dist < best
            np.copyto(best, dist, where=closer)
            np.copyto(ids, cid, where=closer)
    return ids, nv * nu


def _spectra(
    rng: np.random.Generator,
    n: int,
    red: tuple[float, float],
    green: tuple[float, float],
    blue: tuple[float, float],
    nir: tuple[float, float],
    nir_is_ratio: bool,
) -> _F32:
    """``(4, n)`` reflectances: red drawn in a range, green/blue (and NIR) as ratios to red."""
    r = rng.uniform(*red, size=n)
    g = r * rng.uniform(*green, size=n)
    b = r * rng.uniform(*blue, size=n)
    ni = rng.uniform(*nir, size=n)
    if nir_is_ratio:
        ni = ni * r
    return np.stack([r, g, b, ni]).astype(np.float32)


def _river(rng: np.random.Generator, yy: _F32, xx: _F32, pixel_size: float) -> _BoolArr:
    """A meandering river across the scene (width >= 1.5 pixels)."""
    h, w = yy.shape
    phi = float(rng.uniform(0.0, math.pi))
    cos_t, sin_t = math.cos(phi), math.sin(phi)
    umin, umax, vmin, vmax = _rotated_extent(h, w, cos_t, sin_t)
    v0 = vmin + float(rng.uniform(0.2, 0.8)) * (vmax - vmin)
    wavelength = _px(float(rng.uniform(2000.0, 6000.0)), pixel_size, 4.0)
    amplitude = _px(float(rng.uniform(300.0, 1500.0)), pixel_size, 1.0)
    width = _px(float(rng.uniform(60.0, 250.0)), pixel_size, 1.5)
    n_knots = math.ceil((umax - umin) / wavelength) + 3
    knots = rng.standard_normal(n_knots) * amplitude
    ugrid = np.arange(math.ceil(umax - umin) + 2, dtype=np.float64)
    profile = np.interp(ugrid / wavelength, np.arange(n_knots, dtype=np.float64) - 1.0, knots)
    profile = ndimage.gaussian_filter1d(profile, max(wavelength / 4.0, 1.0), mode="nearest")
    u = xx * np.float32(cos_t) + yy * np.float32(sin_t) - np.float32(umin)
    v = yy * np.float32(cos_t) - xx * np.float32(sin_t)
    centre = np.interp(u, ugrid, profile).astype(np.float32) + np.float32(v0)
    return np.asarray(np.abs(v - centre) < np.float32(width / 2.0), dtype=np.bool_)


def _ground(rng: np.random.Generator, h: int, w: int, pixel_size: float) -> _F32:
    """Ground reflectance ``(4, h, w)`` (R, G, B, NIR) of a land-cover mosaic.

    Args:
        rng: Random generator.
        h: Rows.
        w: Columns.
        pixel_size: Pixel size in metres.

    Returns:
        Float32 reflectance before clouds, shadows and noise.
    """
    yy, xx = _grid(h, w)
    ps = pixel_size
    n_px = h * w

    # Land-cover zoning from thresholded fractal fields.
    z_water = _fractal(rng, yy, xx, _px(6000.0, ps, 2.0), 4, 0.5)
    z_town = _fractal(rng, yy, xx, _px(2500.0, ps, 2.0), 3, 0.55)
    z_forest = _fractal(rng, yy, xx, _px(4000.0, ps, 2.0), 4, 0.55)
    water_frac = 0.0 if rng.random() < 0.4 else float(rng.uniform(0.01, 0.12))
    town_frac = 0.0 if rng.random() < 0.3 else float(rng.uniform(0.01, 0.08))
    forest_frac = float(rng.uniform(0.05, 0.4))
    has_river = bool(rng.random() < 0.4)
    cls = np.full((h, w), _AGRI, dtype=np.int32)
    for field, frac, code in (
        (z_forest, forest_frac, _FOREST),
        (z_town, town_frac, _TOWN),
        (z_water, water_frac, _WATER),
    ):
        thr = _threshold_for_count(field.ravel(), round(frac * n_px))
        cls[field > thr] = code
    del z_water, z_town, z_forest
    if has_river:
        cls[_river(rng, yy, xx, ps)] = _WATER

    # Parcels: per-parcel spectra for each land-cover class, looked up per pixel.
    cell = _px(float(rng.uniform(250.0, 700.0)), ps, 3.0)
    aspect = float(rng.uniform(1.0, 2.5))
    pid, n = _parcels(rng, yy, xx, cell, aspect, float(rng.uniform(0.0, math.pi)))
    green = _spectra(rng, n, (0.025, 0.06), (1.5, 2.2), (0.7, 1.0), (0.28, 0.5), False)
    soil = _spectra(rng, n, (0.12, 0.30), (0.75, 0.9), (0.5, 0.7), (1.05, 1.35), True)
    stubble = _spectra(rng, n, (0.10, 0.20), (0.85, 0.95), (0.6, 0.75), (1.4, 1.9), True)
    grass = _spectra(rng, n, (0.04, 0.08), (1.4, 1.8), (0.7, 0.9), (0.22, 0.38), False)
    crop = rng.choice(4, size=n, p=[0.4, 0.25, 0.2, 0.15])
    agri = np.choose(crop[None, :], [green, soil, stubble, grass]).astype(np.float32)
    agri_tex = np.choose(crop, [0.06, 0.10, 0.08, 0.07]) * rng.uniform(0.5, 1.5, size=n)
    agri_vig = np.choose(crop, [0.10, 0.02, 0.04, 0.08]).astype(np.float64)
    forest = _spectra(rng, n, (0.02, 0.04), (1.5, 2.0), (0.8, 1.1), (0.15, 0.30), False)
    town = _spectra(rng, n, (0.10, 0.18), (0.95, 1.02), (0.88, 1.0), (1.0, 1.3), True)
    water_one = _spectra(rng, 1, (0.015, 0.04), (1.2, 1.6), (1.4, 2.0), (0.005, 0.025), False)
    water = np.repeat(water_one, n, axis=1)
    table = np.concatenate([agri, forest, water, town], axis=1)  # (4, 4 * n)
    tex = np.concatenate([agri_tex, np.full(n, 0.12), np.full(n, 0.04), np.full(n, 0.12)])
    vig = np.concatenate([agri_vig, np.full(n, 0.08), np.zeros(n), np.full(n, 0.02)])
    key = cls * n + pid
    del pid
    refl = np.empty((4, h, w), dtype=np.float32)
    for b in range(4):
        refl[b] = table[b][key]
    tex_amp = tex.astype(np.float32)[key]
    vig_amp = vig.astype(np.float32)[key]

    # Field boundaries (hedges, tracks) on agricultural land.
    hedge = float(rng.uniform(0.0, 0.5))
    edge = np.zeros((h, w), dtype=np.bool_)
    edge[:, 1:] |= key[:, 1:] != key[:, :-1]
    edge[1:, :] |= key[1:, :] != key[:-1, :]
    edge &= cls == _AGRI
    hedge_refl = np.array([0.04, 0.07, 0.035, 0.25], dtype=np.float32)
    for b in range(4):
        band = refl[b]
        band[edge] = (1.0 - hedge) * band[edge] + hedge * hedge_refl[b]
    del key, edge

    # Towns: street grid and fine speckle.
    is_town = cls == _TOWN
    if is_town.any():
        block = _px(float(rng.uniform(150.0, 350.0)), ps, 3.0)
        street = (np.mod(yy, block) < 1.0) | (np.mod(xx, block) < 1.0)
        speckle = rng.standard_normal((h, w), dtype=np.float32)
        speckle = np.asarray(ndimage.gaussian_filter(speckle, 0.7), dtype=np.float32)
        speckle *= np.float32(0.25 / max(float(speckle.std()), 1e-6))
        factor = np.where(is_town, 1.0 + speckle - 0.25 * street, 1.0).astype(np.float32)
        refl *= factor[None]
        del street, speckle, factor

    # Multi-scale brightness and vegetation-vigour texture.
    t_bright = _fractal(rng, yy, xx, _px(400.0, ps, 2.0), 3, 0.6)
    t_vigour = _fractal(rng, yy, xx, _px(250.0, ps, 2.0), 3, 0.6)
    t_bright *= tex_amp
    t_vigour *= vig_amp
    for b, sign in enumerate((-1.0, -0.5, -1.0, 1.0)):
        refl[b] *= np.float32(1.0) + t_bright + np.float32(sign) * t_vigour
    refl *= np.float32(rng.uniform(0.9, 1.1))
    return refl


# --------------------------------------------------------------------------------------------
# Footprint
# --------------------------------------------------------------------------------------------


def _footprint(rng: np.random.Generator, h: int, w: int, enabled: bool) -> _BoolArr:
    """Valid pixels: everything, or a rotated rectangle like a Landsat scene footprint.

    The footprint is the frame shrunk by a factor of 0.88-1.0 and rotated by 8-15 degrees
    either way about the centre, so the corners (and slivers along the edges) are nodata.
    """
    angle = math.radians(float(rng.uniform(8.0, 15.0)) * (1.0 if rng.random() < 0.5 else -1.0))
    shrink = float(rng.uniform(0.88, 1.0))
    if not enabled:
        return np.ones((h, w), dtype=np.bool_)
    yy, xx = _grid(h, w)
    dx = xx - np.float32((w - 1) / 2.0)
    dy = yy - np.float32((h - 1) / 2.0)
    cos_a, sin_a = np.float32(math.cos(angle)), np.float32(math.sin(angle))
    u = dx * cos_a + dy * sin_a
    v = dy * cos_a - dx * sin_a
    a, b = shrink * w / 2.0, shrink * h / 2.0
    return np.asarray((np.abs(u) <= a) & (np.abs(v) <= b), dtype=np.bool_)


# --------------------------------------------------------------------------------------------
# Scene
# --------------------------------------------------------------------------------------------


def generate_scene(spec: SceneSpec) -> SyntheticScene:
    """Generate one synthetic scene with exact labels.

    Args:
        spec: Scene parameters; ``None`` fields are drawn from ``spec.seed``.

    Returns:
        The scene; its ``spec`` has every drawn parameter filled in.

    Raises:
        ValueError: If a parameter is out of range.
    """
    _validate(spec)
    seeds = np.random.SeedSequence(spec.seed).spawn(6)
    rng_par, rng_ground, rng_foot, rng_thick, rng_thin, rng_noise = (
        np.random.default_rng(s) for s in seeds
    )
    spec = _resolve_spec(spec, rng_par)
    assert spec.thick_cover is not None and spec.thin_cover is not None
    assert spec.cloud_height is not None and spec.sun_azimuth is not None
    assert spec.sun_elevation is not None
    h, w, ps = spec.height, spec.width, spec.pixel_size

    # Per-scene appearance parameters (always drawn, in a fixed order).
    thick_scale = _px(float(rng_par.uniform(1500.0, 6000.0)), ps, 2.0)
    thick_persist = float(rng_par.uniform(0.5, 0.65))
    thick_core = float(rng_par.uniform(0.55, 0.8))
    thick_edge = thick_core * float(rng_par.uniform(0.55, 0.75))
    thick_tint = rng_par.uniform([0.97, 0.98, 1.0, 0.9], [1.0, 1.01, 1.05, 1.0]).astype(np.float32)
    thin_scale = _px(float(rng_par.uniform(3000.0, 10000.0)), ps, 2.0)
    thin_persist = float(rng_par.uniform(0.4, 0.55))
    thin_aniso = float(rng_par.uniform(1.0, 4.0))
    thin_angle = float(rng_par.uniform(0.0, math.pi))
    thin_amax = float(rng_par.uniform(0.3, 0.5))
    thin_ramp = float(rng_par.uniform(0.2, 0.5))
    thin_refl = float(rng_par.uniform(0.35, 0.6))
    thin_tint = rng_par.uniform([0.97, 0.98, 1.0, 0.9], [1.0, 1.01, 1.04, 0.98]).astype(np.float32)
    shadow_nir = float(rng_par.uniform(0.3, 0.55))
    shadow_keep = np.array(
        [shadow_nir + 0.04, shadow_nir + 0.06, shadow_nir + 0.12, shadow_nir], dtype=np.float32
    )
    thin_shadow = float(rng_par.uniform(0.15, 0.3))
    path = rng_par.uniform([0.005, 0.01, 0.02, 0.0], [0.02, 0.03, 0.05, 0.005])
    path = path.astype(np.float32)

    valid = _footprint(rng_foot, h, w, spec.nodata_border)
    n_valid = int(valid.sum())
    refl = _ground(rng_ground, h, w, ps)

    # Cloud fields live on a domain padded by the shadow displacement, so clouds outside the
    # frame cast shadows into it. Scene window: rows [oy, oy + h); shadow source window: rows
    # [oy - dr, oy - dr + h) (columns alike). Disjoint windows are clamped to adjacent ones.
    d_row, d_col = shadow_offset(spec.sun_azimuth, spec.sun_elevation, spec.cloud_height, ps)
    dr = int(np.clip(round(d_row), -h, h))
    dc = int(np.clip(round(d_col), -w, w))
    oy, ox = max(dr, 0), max(dc, 0)
    dyy, dxx = _grid(h + abs(dr), w + abs(dc))
    scene_win = (slice(oy, oy + h), slice(ox, ox + w))
    src_win = (slice(oy - dr, oy - dr + h), slice(ox - dc, ox - dc + w))

    # Thick cloud: exact cover by thresholding at the matching order statistic.
    f_thick = _fractal(rng_thick, dyy, dxx, 2.0 * thick_scale, 8, thick_persist)
    k_thick = round(spec.thick_cover * n_valid)
    if k_thick > 0:
        thr_thick = _threshold_for_count(f_thick[scene_win][valid], k_thick)
    else:  # no cloud anywhere, not even outside the frame
        thr_thick = float(f_thick.max()) + 1.0
    over = f_thick - np.float32(thr_thick)
    del f_thick
    skirt = np.float32(_SKIRT_ALPHA) * _smoothstep(over * np.float32(4.0) + np.float32(1.0))
    inside = np.float32(_THICK_EDGE_ALPHA) + np.float32(1.0 - _THICK_EDGE_ALPHA) * _smoothstep(
        over * np.float32(2.0)
    )
    a_thick_dom = np.where(over > 0.0, inside, skirt)
    del skirt, inside
    thick = np.asarray(over[scene_win] > 0.0, dtype=np.bool_) & valid
    thick_src = np.asarray(over[src_win] > 0.0, dtype=np.bool_)
    depth = np.ascontiguousarray(over[scene_win])
    del over

    # Thin cloud: exact cover among the valid pixels that are not thick.
    f_thin = _fractal(
        rng_thin, dyy, dxx, thin_scale, 5, thin_persist, aniso=thin_aniso, angle=thin_angle
    )
    del dyy, dxx
    cand = valid & ~thick
    k_thin = min(round(spec.thin_cover * n_valid), int(cand.sum()))
    if k_thin > 0:
        thr_thin = _threshold_for_count(f_thin[scene_win][cand], k_thin)
    else:
        thr_thin = float(f_thin.max()) + 1.0
    t_over = f_thin - np.float32(thr_thin)
    del f_thin
    rise = np.float32(1.0) - np.exp(-np.maximum(t_over, 0.0) / np.float32(thin_ramp))
    a_thin_dom = np.where(
        t_over > 0.0,
        np.float32(_THIN_LABEL_ALPHA) + np.float32(thin_amax - _THIN_LABEL_ALPHA) * rise,
        np.float32(_THIN_LABEL_ALPHA) * _smoothstep(t_over / np.float32(0.35) + np.float32(1.0)),
    ).astype(np.float32)
    del rise
    thin = np.asarray(t_over[scene_win] > 0.0, dtype=np.bool_) & cand
    del t_over

    # Shadows: darken the ground under the displaced cloud opacities.
    a_sh = a_thick_dom[src_win]
    a_tsh = a_thin_dom[src_win] * np.float32(thin_shadow)
    for b in range(4):
        keep = np.float32(1.0) - np.float32(1.0 - shadow_keep[b]) * a_sh
        keep *= np.float32(1.0) - a_tsh
        refl[b] *= keep
    del a_sh, a_tsh
    shadow = thick_src & valid & ~thick & ~thin

    # Thin haze over the (shadowed) ground, with a little texture in its reflectance.
    a_thin = np.ascontiguousarray(a_thin_dom[scene_win])
    a_thick = np.ascontiguousarray(a_thick_dom[scene_win])
    del a_thin_dom, a_thick_dom
    yy, xx = _grid(h, w)
    c_tex = _fractal(rng_noise, yy, xx, _px(600.0, ps, 2.0), 4, 0.6)
    thin_c = np.float32(thin_refl) * (np.float32(1.0) + np.float32(0.05) * c_tex)
    for b in range(4):
        refl[b] += a_thin * (thin_c * thin_tint[b] - refl[b])
    del thin_c

    # Thick cloud on top: brighter cores, texture and sun-side shading.
    core = _smoothstep(np.maximum(depth, 0.0) * np.float32(0.7))
    thick_c = np.float32(thick_edge) + np.float32(thick_core - thick_edge) * core
    gy = np.gradient(depth, axis=0) if h > 1 else np.zeros_like(depth)
    gx = np.gradient(depth, axis=1) if w > 1 else np.zeros_like(depth)
    away = gy * np.float32(-math.cos(math.radians(spec.sun_azimuth)))
    away += gx * np.float32(math.sin(math.radians(spec.sun_azimuth)))
    away /= np.float32(max(float(away.std()), 1e-6))
    thick_c *= np.float32(1.0) + np.float32(0.08) * c_tex + np.float32(0.1) * np.tanh(away)
    del core, gy, gx, away, depth, c_tex
    for b in range(4):
        refl[b] += a_thick * (thick_c * thick_tint[b] - refl[b])
    del thick_c, a_thick, a_thin

    # Atmospheric path radiance and sensor noise, then digital numbers.
    for b in range(4):
        band = refl[b]
        band += path[b]
        noise = rng_noise.standard_normal((h, w), dtype=np.float32)
        band += noise * (np.float32(0.002) + np.float32(0.01) * band)
    dn = np.clip(np.rint(refl * np.float32(10000.0)), 1.0, 65535.0).astype(np.uint16)
    del refl
    dn[:, ~valid] = 0

    label = np.zeros((h, w), dtype=np.uint8)
    label[shadow] = SHADOW
    label[thin] = THIN
    label[thick] = THICK
    label[~valid] = NODATA_LABEL

    x0, y0 = spec.origin
    transform = Affine(ps, 0.0, float(x0), 0.0, -ps, float(y0))
    return SyntheticScene(image=dn, label=label, transform=transform, crs=spec.crs, spec=spec)


# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------


def write_scene(scene: SyntheticScene, image_path: Path, label_path: Path | None = None) -> None:
    """Write the scene (and optionally its label) as tiled, deflate-compressed GeoTIFFs.

    The image has 4 uint16 bands described ``red``, ``green``, ``blue``, ``nir`` with nodata 0;
    the label one uint8 band with nodata 255, on the same grid. Parent folders are created.

    Args:
        scene: The scene to write.
        image_path: Output path of the image.
        label_path: Output path of the label, or ``None`` to skip it.
    """
    _, h, w = scene.image.shape
    common = {
        "driver": "GTiff",
        "height": h,
        "width": w,
        "crs": scene.crs,
        "transform": scene.transform,
        "tiled": True,
        "blockxsize": 256,
        "blockysize": 256,
        "compress": "deflate",
        "predictor": 2,
    }
    image_path = Path(image_path)
    image_path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(image_path, "w", count=4, dtype="uint16", nodata=0, **common) as dst:
        dst.write(scene.image)
        for i, name in enumerate(BAND_NAMES, start=1):
            dst.set_band_description(i, name)
    if label_path is not None:
        label_path = Path(label_path)
        label_path.parent.mkdir(parents=True, exist_ok=True)
        with rasterio.open(
            label_path, "w", count=1, dtype="uint8", nodata=NODATA_LABEL, **common
        ) as dst:
            dst.write(scene.label[None])
            dst.set_band_description(1, "label")


def make_dataset(
    out_dir: Path,
    n_scenes: int,
    size: int = 1024,
    seed: int = 0,
    *,
    nodata_border_every: int = 0,
    thin_cover_scale: float = 1.0,
    pixel_size: float = 30.0,
) -> list[tuple[Path, Path]]:
    """Write a set of synthetic scenes spanning clear to very cloudy skies.

    Thick-cloud cover cycles through clear, low, medium and heavy categories in a seeded order
    (the value within a category is drawn), thin cover is drawn per scene and multiplied by
    ``thin_cover_scale``. Scenes sit on a grid of non-overlapping footprints in the same CRS.

    Args:
        out_dir: Output folder; images go to ``images/`` and labels to ``labels/`` with the
            same file name ``scene_XXX.tif``.
        n_scenes: Number of scenes.
        size: Height and width of each scene in pixels.
        seed: Seed of the whole set.
        nodata_border_every: If ``k > 0``, every k-th scene (the k-th, 2k-th, ...) gets a
            rotated nodata border.
        thin_cover_scale: Factor on the drawn thin-cloud cover (capped at 1).
        pixel_size: Pixel size in metres.

    Returns:
        The ``(image_path, label_path)`` pairs in scene order.

    Raises:
        ValueError: If ``n_scenes``, ``size`` or ``thin_cover_scale`` is out of range.
    """
    if n_scenes < 0:
        raise ValueError(f"n_scenes must be >= 0, got {n_scenes}")
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    if thin_cover_scale < 0.0:
        raise ValueError(f"thin_cover_scale must be >= 0, got {thin_cover_scale}")
    if n_scenes == 0:
        return []
    out_dir = Path(out_dir)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x5EED]))
    categories = np.concatenate([rng.permutation(4) for _ in range((n_scenes + 3) // 4)])[:n_scenes]
    cols = max(1, math.ceil(math.sqrt(n_scenes)))
    step = size * pixel_size + _SCENE_GAP_M
    pairs: list[tuple[Path, Path]] = []
    for i in range(n_scenes):
        thick = _draw_thick_cover(rng, int(categories[i]))
        thin = min(1.0, _draw_thin_cover(rng) * thin_cover_scale)
        scene_seed = int(np.random.SeedSequence([seed, i]).generate_state(1)[0])
        row, col = divmod(i, cols)
        spec = SceneSpec(
            height=size,
            width=size,
            seed=scene_seed,
            pixel_size=pixel_size,
            origin=(300000.0 + col * step, 5500000.0 - row * step),
            thick_cover=thick,
            thin_cover=thin,
            nodata_border=nodata_border_every > 0 and (i + 1) % nodata_border_every == 0,
        )
        name = f"scene_{i:03d}.tif"
        pair = (out_dir / "images" / name, out_dir / "labels" / name)
        write_scene(generate_scene(spec), *pair)
        pairs.append(pair)
    return pairs
