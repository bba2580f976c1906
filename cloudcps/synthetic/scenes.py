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
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from numpy.typing import NDArray

from cloudcps.synthetic.ground import ground_reflectance
from cloudcps.synthetic.noise import fractal, grid, smoothstep, threshold_for_count, to_pixels
from cloudcps.synthetic.spec import (
    BAND_NAMES,
    NODATA_LABEL,
    SHADOW,
    THICK,
    THIN,
    SceneSpec,
    SyntheticScene,
    draw_thick_cover,
    draw_thin_cover,
    resolve_spec,
    shadow_offset,
    validate_spec,
)

_F32 = NDArray[np.float32]
_BoolArr = NDArray[np.bool_]
_Window = tuple[slice, slice]

_THIN_LABEL_ALPHA = 0.12  # thin-cloud alpha at the labelled boundary
_THICK_EDGE_ALPHA = 0.88  # thick-cloud alpha at the labelled boundary
_SKIRT_ALPHA = 0.10  # largest alpha of the haze skirt just outside a thick cloud
_SCENE_GAP_M = 10_000.0  # spacing between scene footprints in make_dataset


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
    yy, xx = grid(h, w)
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

    Six generators spawned from ``spec.seed`` feed the parameters and the look, the ground, the
    footprint, the thick cloud, the thin cloud, and the texture and sensor noise; each step
    draws from its own generator in a fixed order, so a seed always gives the same scene.

    Args:
        spec: Scene parameters; ``None`` fields are drawn from ``spec.seed``.

    Returns:
        The scene; its ``spec`` has every drawn parameter filled in.

    Raises:
        ValueError: If a parameter is out of range.
    """
    validate_spec(spec)
    seeds = np.random.SeedSequence(spec.seed).spawn(6)
    rng_par, rng_ground, rng_foot, rng_thick, rng_thin, rng_noise = (
        np.random.default_rng(s) for s in seeds
    )
    spec = resolve_spec(spec, rng_par)
    assert spec.thick_cover is not None and spec.thin_cover is not None
    assert spec.sun_azimuth is not None
    h, w, ps = spec.height, spec.width, spec.pixel_size
    look = _draw_look(rng_par, ps)

    valid = _footprint(rng_foot, h, w, spec.nodata_border)
    n_valid = int(valid.sum())
    refl = ground_reflectance(rng_ground, h, w, ps)

    dom = _cloud_domain(spec)
    thick = _thick_cloud(rng_thick, dom, look, spec.thick_cover, valid, n_valid)
    a_thin_dom, thin = _thin_cloud(
        rng_thin, dom, look, spec.thin_cover, valid & ~thick.mask, n_valid
    )
    _cast_shadows(refl, thick.alpha[dom.source], a_thin_dom[dom.source], look)
    shadow = thick.source & valid & ~thick.mask & ~thin

    a_thin = np.ascontiguousarray(a_thin_dom[dom.scene])
    a_thick = np.ascontiguousarray(thick.alpha[dom.scene])
    del a_thin_dom
    yy, xx = grid(h, w)
    c_tex = fractal(rng_noise, yy, xx, to_pixels(600.0, ps, 2.0), 4, 0.6)
    _add_thin_haze(refl, a_thin, c_tex, look)
    _add_thick_cloud(refl, a_thick, thick.depth, c_tex, look, spec.sun_azimuth)
    del a_thick, a_thin, c_tex
    dn = _digital_numbers(rng_noise, refl, look.path, valid)
    label = _labels(valid, thick.mask, thin, shadow)

    x0, y0 = spec.origin
    transform = Affine(ps, 0.0, float(x0), 0.0, -ps, float(y0))
    return SyntheticScene(image=dn, label=label, transform=transform, crs=spec.crs, spec=spec)


@dataclass(frozen=True)
class _Look:
    """Per-scene appearance of the clouds, their shadows and the atmosphere."""

    thick_scale: float  # feature size of the thick-cloud field in pixels
    thick_persist: float
    thick_core: float  # reflectance of thick cores
    thick_edge: float  # reflectance at thick edges
    thick_tint: _F32  # per-band factor on the thick-cloud reflectance
    thin_scale: float
    thin_persist: float
    thin_aniso: float  # streakiness (cirrus)
    thin_angle: float
    thin_amax: float  # largest thin-cloud alpha
    thin_ramp: float  # how fast thin alpha rises above the labelled boundary
    thin_refl: float
    thin_tint: _F32
    shadow_keep: _F32  # per-band share of light kept under full shadow
    thin_shadow: float  # strength of the (unlabelled) thin-cloud shadow
    path: _F32  # per-band path radiance


def _draw_look(rng: np.random.Generator, ps: float) -> _Look:
    """The scene's look, always drawn whole and in a fixed order (streams stay aligned)."""
    thick_scale = to_pixels(float(rng.uniform(1500.0, 6000.0)), ps, 2.0)
    thick_persist = float(rng.uniform(0.5, 0.65))
    thick_core = float(rng.uniform(0.55, 0.8))
    thick_edge = thick_core * float(rng.uniform(0.55, 0.75))
    thick_tint = rng.uniform([0.97, 0.98, 1.0, 0.9], [1.0, 1.01, 1.05, 1.0]).astype(np.float32)
    thin_scale = to_pixels(float(rng.uniform(3000.0, 10000.0)), ps, 2.0)
    thin_persist = float(rng.uniform(0.4, 0.55))
    thin_aniso = float(rng.uniform(1.0, 4.0))
    thin_angle = float(rng.uniform(0.0, math.pi))
    thin_amax = float(rng.uniform(0.3, 0.5))
    thin_ramp = float(rng.uniform(0.2, 0.5))
    thin_refl = float(rng.uniform(0.35, 0.6))
    thin_tint = rng.uniform([0.97, 0.98, 1.0, 0.9], [1.0, 1.01, 1.04, 0.98]).astype(np.float32)
    shadow_nir = float(rng.uniform(0.3, 0.55))
    shadow_keep = np.array(
        [shadow_nir + 0.04, shadow_nir + 0.06, shadow_nir + 0.12, shadow_nir], dtype=np.float32
    )
    thin_shadow = float(rng.uniform(0.15, 0.3))
    path = rng.uniform([0.005, 0.01, 0.02, 0.0], [0.02, 0.03, 0.05, 0.005])
    return _Look(
        thick_scale=thick_scale,
        thick_persist=thick_persist,
        thick_core=thick_core,
        thick_edge=thick_edge,
        thick_tint=thick_tint,
        thin_scale=thin_scale,
        thin_persist=thin_persist,
        thin_aniso=thin_aniso,
        thin_angle=thin_angle,
        thin_amax=thin_amax,
        thin_ramp=thin_ramp,
        thin_refl=thin_refl,
        thin_tint=thin_tint,
        shadow_keep=shadow_keep,
        thin_shadow=thin_shadow,
        path=path.astype(np.float32),
    )


@dataclass(frozen=True)
class _Domain:
    """The padded domain of the cloud fields and the two windows read from it.

    Cloud fields live on a domain padded by the shadow displacement, so clouds outside the
    frame cast shadows into it. Scene window: rows ``[oy, oy + h)``; shadow source window: rows
    ``[oy - dr, oy - dr + h)`` (columns alike). Disjoint windows are clamped to adjacent ones.
    """

    yy: _F32
    xx: _F32
    scene: _Window
    source: _Window


def _cloud_domain(spec: SceneSpec) -> _Domain:
    """The cloud domain of a resolved spec (its sun angles and cloud height are set)."""
    assert spec.cloud_height is not None and spec.sun_azimuth is not None
    assert spec.sun_elevation is not None
    h, w = spec.height, spec.width
    d_row, d_col = shadow_offset(
        spec.sun_azimuth, spec.sun_elevation, spec.cloud_height, spec.pixel_size
    )
    dr = int(np.clip(round(d_row), -h, h))
    dc = int(np.clip(round(d_col), -w, w))
    oy, ox = max(dr, 0), max(dc, 0)
    dyy, dxx = grid(h + abs(dr), w + abs(dc))
    scene_win = (slice(oy, oy + h), slice(ox, ox + w))
    src_win = (slice(oy - dr, oy - dr + h), slice(ox - dc, ox - dc + w))
    return _Domain(dyy, dxx, scene_win, src_win)


@dataclass(frozen=True)
class _Thick:
    """The thick cloud: opacity over the domain, labels and depth over the scene."""

    alpha: _F32  # opacity over the padded domain (skirt included)
    mask: _BoolArr  # labelled thick pixels of the scene
    source: _BoolArr  # thick pixels of the shadow source window
    depth: _F32  # field minus threshold over the scene (brighter cores, shading)


def _thick_cloud(
    rng: np.random.Generator,
    dom: _Domain,
    look: _Look,
    cover: float,
    valid: _BoolArr,
    n_valid: int,
) -> _Thick:
    """Thick cloud: exact cover by thresholding at the matching order statistic."""
    f_thick = fractal(rng, dom.yy, dom.xx, 2.0 * look.thick_scale, 8, look.thick_persist)
    k_thick = round(cover * n_valid)
    if k_thick > 0:
        thr_thick = threshold_for_count(f_thick[dom.scene][valid], k_thick)
    else:  # no cloud anywhere, not even outside the frame
        thr_thick = float(f_thick.max()) + 1.0
    over = f_thick - np.float32(thr_thick)
    del f_thick
    skirt = np.float32(_SKIRT_ALPHA) * smoothstep(over * np.float32(4.0) + np.float32(1.0))
    inside = np.float32(_THICK_EDGE_ALPHA) + np.float32(1.0 - _THICK_EDGE_ALPHA) * smoothstep(
        over * np.float32(2.0)
    )
    alpha = np.where(over > 0.0, inside, skirt)
    del skirt, inside
    return _Thick(
        alpha=alpha,
        mask=np.asarray(over[dom.scene] > 0.0, dtype=np.bool_) & valid,
        source=np.asarray(over[dom.source] > 0.0, dtype=np.bool_),
        depth=np.ascontiguousarray(over[dom.scene]),
    )


def _thin_cloud(
    rng: np.random.Generator,
    dom: _Domain,
    look: _Look,
    cover: float,
    cand: _BoolArr,
    n_valid: int,
) -> tuple[_F32, _BoolArr]:
    """Thin cloud: exact cover among ``cand`` (the valid pixels that are not thick).

    Returns:
        ``(alpha, mask)``: the opacity over the padded domain (sub-threshold haze included) and
        the labelled thin pixels of the scene.
    """
    f_thin = fractal(
        rng,
        dom.yy,
        dom.xx,
        look.thin_scale,
        5,
        look.thin_persist,
        aniso=look.thin_aniso,
        angle=look.thin_angle,
    )
    k_thin = min(round(cover * n_valid), int(cand.sum()))
    if k_thin > 0:
        thr_thin = threshold_for_count(f_thin[dom.scene][cand], k_thin)
    else:
        thr_thin = float(f_thin.max()) + 1.0
    t_over = f_thin - np.float32(thr_thin)
    del f_thin
    rise = np.float32(1.0) - np.exp(-np.maximum(t_over, 0.0) / np.float32(look.thin_ramp))
    alpha = np.where(
        t_over > 0.0,
        np.float32(_THIN_LABEL_ALPHA) + np.float32(look.thin_amax - _THIN_LABEL_ALPHA) * rise,
        np.float32(_THIN_LABEL_ALPHA) * smoothstep(t_over / np.float32(0.35) + np.float32(1.0)),
    ).astype(np.float32)
    del rise
    thin = np.asarray(t_over[dom.scene] > 0.0, dtype=np.bool_) & cand
    return alpha, thin


def _cast_shadows(refl: _F32, a_thick_src: _F32, a_thin_src: _F32, look: _Look) -> None:
    """Darken the ground under the displaced cloud opacities (thin clouds cast a weak shadow)."""
    a_tsh = a_thin_src * np.float32(look.thin_shadow)
    for b in range(4):
        keep = np.float32(1.0) - np.float32(1.0 - look.shadow_keep[b]) * a_thick_src
        keep *= np.float32(1.0) - a_tsh
        refl[b] *= keep


def _add_thin_haze(refl: _F32, a_thin: _F32, c_tex: _F32, look: _Look) -> None:
    """Thin haze over the (shadowed) ground, with a little texture in its reflectance."""
    thin_c = np.float32(look.thin_refl) * (np.float32(1.0) + np.float32(0.05) * c_tex)
    for b in range(4):
        refl[b] += a_thin * (thin_c * look.thin_tint[b] - refl[b])


def _add_thick_cloud(
    refl: _F32, a_thick: _F32, depth: _F32, c_tex: _F32, look: _Look, sun_azimuth: float
) -> None:
    """Thick cloud on top: brighter cores, texture and sun-side shading."""
    h, w = depth.shape
    core = smoothstep(np.maximum(depth, 0.0) * np.float32(0.7))
    thick_c = np.float32(look.thick_edge) + np.float32(look.thick_core - look.thick_edge) * core
    gy = np.gradient(depth, axis=0) if h > 1 else np.zeros_like(depth)
    gx = np.gradient(depth, axis=1) if w > 1 else np.zeros_like(depth)
    away = gy * np.float32(-math.cos(math.radians(sun_azimuth)))
    away += gx * np.float32(math.sin(math.radians(sun_azimuth)))
    away /= np.float32(max(float(away.std()), 1e-6))
    thick_c *= np.float32(1.0) + np.float32(0.08) * c_tex + np.float32(0.1) * np.tanh(away)
    del core, gy, gx, away
    for b in range(4):
        refl[b] += a_thick * (thick_c * look.thick_tint[b] - refl[b])


def _digital_numbers(
    rng: np.random.Generator, refl: _F32, path: _F32, valid: _BoolArr
) -> NDArray[np.uint16]:
    """Atmospheric path radiance and sensor noise, then digital numbers (0 outside ``valid``)."""
    _, h, w = refl.shape
    for b in range(4):
        band = refl[b]
        band += path[b]
        noise = rng.standard_normal((h, w), dtype=np.float32)
        band += noise * (np.float32(0.002) + np.float32(0.01) * band)
    dn = np.clip(np.rint(refl * np.float32(10000.0)), 1.0, 65535.0).astype(np.uint16)
    dn[:, ~valid] = 0
    return dn


def _labels(
    valid: _BoolArr, thick: _BoolArr, thin: _BoolArr, shadow: _BoolArr
) -> NDArray[np.uint8]:
    """The label raster: thick > thin > shadow > clear, nodata outside the footprint."""
    label = np.zeros(valid.shape, dtype=np.uint8)
    label[shadow] = SHADOW
    label[thin] = THIN
    label[thick] = THICK
    label[~valid] = NODATA_LABEL
    return label


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
        thick = draw_thick_cover(rng, int(categories[i]))
        thin = min(1.0, draw_thin_cover(rng) * thin_cover_scale)
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
