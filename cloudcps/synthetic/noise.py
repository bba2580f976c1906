"""Smooth and fractal noise fields, and the small numeric helpers the generators share.

The scene generator (:mod:`cloudcps.synthetic.scenes`), the training-time cloud layers
(:mod:`cloudcps.synthetic.clouds`) and the pasted-cloud blobs (:mod:`cloudcps.synthetic.paste`)
all draw their fields here. Every function draws from the generator it is given, in a fixed
order, so a seed gives the same field on every run.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

_F32 = NDArray[np.float32]


def grid(h: int, w: int) -> tuple[_F32, _F32]:
    """Row and column coordinates of an ``(h, w)`` grid as float32 arrays."""
    yy = np.broadcast_to(np.arange(h, dtype=np.float32)[:, None], (h, w))
    xx = np.broadcast_to(np.arange(w, dtype=np.float32)[None, :], (h, w))
    return yy, xx


def smoothstep(x: _F32) -> _F32:
    """Cubic smoothstep of ``x`` clipped to [0, 1]."""
    t = np.clip(x, 0.0, 1.0)
    return np.asarray(t * t * (3.0 - 2.0 * t), dtype=np.float32)


def threshold_for_count(values: _F32, k: int) -> float:
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


def rotated_extent(h: int, w: int, cos_t: float, sin_t: float) -> tuple[float, float, float, float]:
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
    umin, umax, vmin, vmax = rotated_extent(h, w, cos_t, sin_t)
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


def fractal(
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


def to_pixels(metres: float, pixel_size: float, lo: float = 1.0) -> float:
    """A length in metres as pixels, at least ``lo``."""
    return max(metres / pixel_size, lo)
