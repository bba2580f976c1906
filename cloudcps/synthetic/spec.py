"""What a synthetic scene is: label codes, band names, the scene parameters and their draws.

:class:`SceneSpec` holds the parameters of one scene (``None`` fields are drawn from its seed by
:func:`resolve_spec`), :class:`SyntheticScene` the generated image, labels and georeferencing,
and :func:`shadow_offset` where a cloud's shadow falls. The label codes are shared with the
training-time cloud layers (:mod:`cloudcps.synthetic.clouds`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
from affine import Affine
from numpy.typing import NDArray

CLEAR = 0
THICK = 1
THIN = 2
SHADOW = 3
NODATA_LABEL = 255
BAND_NAMES = ("red", "green", "blue", "nir")


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


def draw_thick_cover(rng: np.random.Generator, category: int | None = None) -> float:
    """Thick-cloud cover: clear, low, medium or heavy (category 0-3, drawn when ``None``)."""
    u = float(rng.random())
    if category is None:
        category = 0 if u < 0.15 else 1 if u < 0.5 else 2 if u < 0.8 else 3
    lo, hi = ((0.0, 0.0), (0.01, 0.15), (0.15, 0.45), (0.45, 0.85))[category]
    return float(rng.uniform(lo, hi)) if hi > 0.0 else 0.0


def draw_thin_cover(rng: np.random.Generator) -> float:
    """Thin-cloud cover: none a quarter of the time, else 1-10 %."""
    zero = float(rng.random()) < 0.25
    value = float(rng.uniform(0.01, 0.10))
    return 0.0 if zero else value


def resolve_spec(spec: SceneSpec, rng: np.random.Generator) -> SceneSpec:
    """Fill the ``None`` fields of ``spec`` with draws (always drawn, so streams stay aligned)."""
    thick = draw_thick_cover(rng)
    thin = draw_thin_cover(rng)
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


def validate_spec(spec: SceneSpec) -> None:
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
