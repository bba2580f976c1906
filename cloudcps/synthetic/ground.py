"""The ground under the clouds: a land-cover mosaic of parcels, forest, water and towns.

:func:`ground_reflectance` zones the scene into land cover with thresholded fractal fields (and
an optional meandering river), gives agricultural parcels (an anisotropic jittered-grid Voronoi
tessellation) per-parcel crop spectra, draws hedges along field boundaries and a street grid in
towns, and adds multi-scale brightness and vegetation-vigour texture. Every draw comes from the
one generator it is given, in a fixed order.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from cloudcps.synthetic.noise import fractal, grid, rotated_extent, threshold_for_count, to_pixels

_F32 = NDArray[np.float32]
_BoolArr = NDArray[np.bool_]

# Land-cover codes of the ground mosaic (internal).
_AGRI, _FOREST, _WATER, _TOWN = 0, 1, 2, 3


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
    umin, umax, vmin, vmax = rotated_extent(h, w, cos_t, sin_t)
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
    umin, umax, vmin, vmax = rotated_extent(h, w, cos_t, sin_t)
    v0 = vmin + float(rng.uniform(0.2, 0.8)) * (vmax - vmin)
    wavelength = to_pixels(float(rng.uniform(2000.0, 6000.0)), pixel_size, 4.0)
    amplitude = to_pixels(float(rng.uniform(300.0, 1500.0)), pixel_size, 1.0)
    width = to_pixels(float(rng.uniform(60.0, 250.0)), pixel_size, 1.5)
    n_knots = math.ceil((umax - umin) / wavelength) + 3
    knots = rng.standard_normal(n_knots) * amplitude
    ugrid = np.arange(math.ceil(umax - umin) + 2, dtype=np.float64)
    profile = np.interp(ugrid / wavelength, np.arange(n_knots, dtype=np.float64) - 1.0, knots)
    profile = ndimage.gaussian_filter1d(profile, max(wavelength / 4.0, 1.0), mode="nearest")
    u = xx * np.float32(cos_t) + yy * np.float32(sin_t) - np.float32(umin)
    v = yy * np.float32(cos_t) - xx * np.float32(sin_t)
    centre = np.interp(u, ugrid, profile).astype(np.float32) + np.float32(v0)
    return np.asarray(np.abs(v - centre) < np.float32(width / 2.0), dtype=np.bool_)


def ground_reflectance(rng: np.random.Generator, h: int, w: int, pixel_size: float) -> _F32:
    """Ground reflectance ``(4, h, w)`` (R, G, B, NIR) of a land-cover mosaic.

    The steps draw from ``rng`` in this order: land cover, parcels and their spectra, hedges,
    towns, texture, overall brightness (the order fixes the scene a seed gives).

    Args:
        rng: Random generator.
        h: Rows.
        w: Columns.
        pixel_size: Pixel size in metres.

    Returns:
        Float32 reflectance before clouds, shadows and noise.
    """
    yy, xx = grid(h, w)
    cls = _land_cover(rng, yy, xx, pixel_size)
    refl, key, tex_amp, vig_amp = _parcel_reflectance(rng, cls, yy, xx, pixel_size)
    _add_hedges(rng, refl, key, cls)
    del key
    _add_towns(rng, refl, cls, yy, xx, pixel_size)
    _add_texture(rng, refl, yy, xx, pixel_size, tex_amp, vig_amp)
    refl *= np.float32(rng.uniform(0.9, 1.1))
    return refl


def _land_cover(rng: np.random.Generator, yy: _F32, xx: _F32, ps: float) -> NDArray[np.int32]:
    """Land-cover codes per pixel: zones from thresholded fractal fields, then a river."""
    h, w = yy.shape
    n_px = h * w
    z_water = fractal(rng, yy, xx, to_pixels(6000.0, ps, 2.0), 4, 0.5)
    z_town = fractal(rng, yy, xx, to_pixels(2500.0, ps, 2.0), 3, 0.55)
    z_forest = fractal(rng, yy, xx, to_pixels(4000.0, ps, 2.0), 4, 0.55)
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
        thr = threshold_for_count(field.ravel(), round(frac * n_px))
        cls[field > thr] = code
    del z_water, z_town, z_forest
    if has_river:
        cls[_river(rng, yy, xx, ps)] = _WATER
    return cls


def _parcel_spectra(
    rng: np.random.Generator, n: int
) -> tuple[_F32, NDArray[np.float64], NDArray[np.float64]]:
    """Per-parcel spectra of every land-cover class, looked up by ``class * n + parcel``.

    Returns:
        ``(table, tex, vig)``: ``(4, 4 * n)`` reflectances, and per entry the amplitude of the
        brightness texture and of the vegetation-vigour texture.
    """
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
    return table, tex, vig


def _parcel_reflectance(
    rng: np.random.Generator, cls: NDArray[np.int32], yy: _F32, xx: _F32, ps: float
) -> tuple[_F32, NDArray[np.int32], _F32, _F32]:
    """Parcels: per-parcel spectra for each land-cover class, looked up per pixel.

    Returns:
        ``(refl, key, tex_amp, vig_amp)``: the ``(4, h, w)`` reflectance, each pixel's
        class-and-parcel key, and its brightness and vigour texture amplitudes.
    """
    h, w = yy.shape
    cell = to_pixels(float(rng.uniform(250.0, 700.0)), ps, 3.0)
    aspect = float(rng.uniform(1.0, 2.5))
    pid, n = _parcels(rng, yy, xx, cell, aspect, float(rng.uniform(0.0, math.pi)))
    table, tex, vig = _parcel_spectra(rng, n)
    key = cls * n + pid
    del pid
    refl = np.empty((4, h, w), dtype=np.float32)
    for b in range(4):
        refl[b] = table[b][key]
    tex_amp = tex.astype(np.float32)[key]
    vig_amp = vig.astype(np.float32)[key]
    return refl, key, tex_amp, vig_amp


def _add_hedges(
    rng: np.random.Generator, refl: _F32, key: NDArray[np.int32], cls: NDArray[np.int32]
) -> None:
    """Field boundaries (hedges, tracks) on agricultural land, blended into ``refl``."""
    hedge = float(rng.uniform(0.0, 0.5))
    h, w = cls.shape
    edge = np.zeros((h, w), dtype=np.bool_)
    edge[:, 1:] |= key[:, 1:] != key[:, :-1]
    edge[1:, :] |= key[1:, :] != key[:-1, :]
    edge &= cls == _AGRI
    hedge_refl = np.array([0.04, 0.07, 0.035, 0.25], dtype=np.float32)
    for b in range(4):
        band = refl[b]
        band[edge] = (1.0 - hedge) * band[edge] + hedge * hedge_refl[b]


def _add_towns(
    rng: np.random.Generator, refl: _F32, cls: NDArray[np.int32], yy: _F32, xx: _F32, ps: float
) -> None:
    """Towns: a street grid and fine speckle (nothing is drawn without a town pixel)."""
    is_town = cls == _TOWN
    if not is_town.any():
        return
    h, w = cls.shape
    block = to_pixels(float(rng.uniform(150.0, 350.0)), ps, 3.0)
    street = (np.mod(yy, block) < 1.0) | (np.mod(xx, block) < 1.0)
    speckle = rng.standard_normal((h, w), dtype=np.float32)
    speckle = np.asarray(ndimage.gaussian_filter(speckle, 0.7), dtype=np.float32)
    speckle *= np.float32(0.25 / max(float(speckle.std()), 1e-6))
    factor = np.where(is_town, 1.0 + speckle - 0.25 * street, 1.0).astype(np.float32)
    refl *= factor[None]


def _add_texture(
    rng: np.random.Generator,
    refl: _F32,
    yy: _F32,
    xx: _F32,
    ps: float,
    tex_amp: _F32,
    vig_amp: _F32,
) -> None:
    """Multi-scale brightness and vegetation-vigour texture (vigour raises NIR, lowers red)."""
    t_bright = fractal(rng, yy, xx, to_pixels(400.0, ps, 2.0), 3, 0.6)
    t_vigour = fractal(rng, yy, xx, to_pixels(250.0, ps, 2.0), 3, 0.6)
    t_bright *= tex_amp
    t_vigour *= vig_amp
    for b, sign in enumerate((-1.0, -0.5, -1.0, 1.0)):
        refl[b] *= np.float32(1.0) + t_bright + np.float32(sign) * t_vigour
