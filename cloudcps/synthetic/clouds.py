"""Synthetic clouds and shadows over real ground: labels that cost nothing.

During training a share of the labelled samples gets a cloud layer composited over its real
image, and the 4-class label follows the layer where it covers the ground:

* ``thick`` where the layer's opacity is at least ``thick_alpha`` (the ground is hidden),
* ``thin`` where it is between ``thin_alpha`` and ``thick_alpha`` (the ground shows through),
* ``shadow`` where the displaced thick-cloud opacity darkens ground that no cloud covers
  (strength at least ``shadow_alpha``), and only over ground labelled clear or shadow,
* the real label everywhere else (under faint haze, and where the layer is absent).

The layer lives in reflectance: the 8-bit tile is mapped back through the tile folder's stretch,
``out = (1 - a) * ground * shade + a * cloud`` is composited, and the stretch is applied again,
so a composite looks to the network like a real scene of the same product. Every random draw
comes from one seed (the sample's augmentation seed), so the same seed gives the same sample and
a resumed run sees the composites an uninterrupted run would have seen.

The thresholds default to the values calibrated on the real thin-cloud pixels of L8 Biome
(``bench/synthetic.py calibrate``, docs/benchmarks.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from cloudcps.contract import IGNORE_INDEX, Stretch, partial_classes
from cloudcps.synthetic.noise import fractal, grid, smoothstep
from cloudcps.synthetic.spec import CLEAR, SHADOW, THICK, THIN

_F32 = NDArray[np.float32]

CLOUD_CLASSES = ("clear", "thick cloud", "thin cloud", "cloud shadow")


@dataclass(frozen=True)
class LayerThresholds:
    """Opacity / shadow-strength boundaries between the classes a layer labels."""

    thick_alpha: float = 0.35  # calibrated on L8 Biome train (bench/synthetic.py calibrate)
    thin_alpha: float = 0.04  # idem: real annotators mark faint haze thin
    shadow_alpha: float = 0.3

    def validate(self) -> None:
        if not 0 < self.thin_alpha < self.thick_alpha <= 1 or not 0 < self.shadow_alpha <= 1:
            raise ValueError(
                f"layer thresholds need 0 < thin_alpha < thick_alpha <= 1 and 0 < shadow_alpha "
                f"<= 1, got {self}"
            )


@dataclass
class CloudLayer:
    """One drawn layer on an ``(h, w)`` grid.

    ``alpha`` is the total cloud opacity, ``colour`` the cloud's reflectance (3, h, w) on the
    0-1 scale, ``shade`` the shadow strength (0 none .. 1 full) and ``keep`` the share of light
    each band keeps in full shadow.
    """

    alpha: _F32
    colour: _F32
    shade: _F32
    keep: _F32


def draw_layer(rng: np.random.Generator, h: int, w: int) -> CloudLayer:
    """Draw a layer: cumulus-like thick cloud with soft edges, streaky thin cloud or haze, or
    both, and the thick cloud's shadow displaced in a random direction."""
    yy, xx = grid(h, w)
    side = float(max(h, w))
    kind = rng.choice(3, p=[0.45, 0.25, 0.30])  # 0 thick (+edges), 1 thin only, 2 both
    a_thick = np.zeros((h, w), np.float32)
    a_thin = np.zeros((h, w), np.float32)
    # a thick field on a domain padded by the shadow shift so shadows enter from outside
    dist = float(rng.uniform(0.02, 0.2)) * side
    ang = float(rng.uniform(0, 2 * math.pi))
    dr, dc = round(dist * math.sin(ang)), round(dist * math.cos(ang))
    if kind in (0, 2):
        ph, pw = h + abs(dr), w + abs(dc)
        pyy, pxx = grid(ph, pw)
        f = fractal(
            rng, pyy, pxx, float(rng.uniform(0.15, 0.8)) * side, 7, float(rng.uniform(0.5, 0.65))
        )
        cover = float(rng.uniform(0.05, 0.6))
        thr = float(np.quantile(f, 1.0 - cover))
        ramp = float(rng.uniform(0.15, 1.2))  # soft (wide thin margins) to sharp edges
        a_dom = smoothstep((f - np.float32(thr)) / np.float32(ramp))
        oy, ox = max(dr, 0), max(dc, 0)
        a_thick = np.ascontiguousarray(a_dom[oy : oy + h, ox : ox + w])
        src = a_dom[oy - dr : oy - dr + h, ox - dc : ox - dc + w]
        shade = np.ascontiguousarray(src) * np.float32(rng.uniform(0.6, 1.0))
    else:
        shade = np.zeros((h, w), np.float32)
    if kind in (1, 2):
        aniso = float(rng.uniform(1.0, 4.0))
        g = fractal(
            rng, yy, xx, float(rng.uniform(0.2, 1.0)) * side, 5, float(rng.uniform(0.4, 0.55)),
            aniso=aniso, angle=float(rng.uniform(0, math.pi)),
        )  # fmt: skip
        cover = float(rng.uniform(0.2, 0.9))
        thr = float(np.quantile(g, 1.0 - cover))
        amax = float(rng.uniform(0.2, 0.6))
        ramp = float(rng.uniform(0.3, 1.5))
        a_thin = np.float32(amax) * smoothstep((g - np.float32(thr)) / np.float32(ramp))
    alpha = np.float32(1.0) - (np.float32(1.0) - a_thick) * (np.float32(1.0) - a_thin)
    # cloud colour: near white, a little bluer, brighter in thick cores, with texture
    tex = fractal(rng, yy, xx, side / 8.0, 4, 0.6)
    b_thick = float(rng.uniform(0.35, 0.9))
    b_thin = float(rng.uniform(0.25, 0.55))
    share = np.where(alpha > 0, a_thick / np.maximum(alpha, np.float32(1e-6)), 0).astype(np.float32)
    bright = (b_thin + (b_thick - b_thin) * share) * (1.0 + 0.06 * tex) * (0.85 + 0.15 * a_thick)
    tint = rng.uniform([0.96, 0.98, 1.0], [1.0, 1.01, 1.05]).astype(np.float32)
    colour = (tint[:, None, None] * bright[None]).astype(np.float32)
    # shadows keep more blue (sky light) than red
    base = float(rng.uniform(0.2, 0.5))
    keep = np.array([base, base + 0.03, base + 0.08], np.float32)
    shade = np.clip(ndimage.gaussian_filter(shade, 1.0), 0, 1).astype(np.float32)
    return CloudLayer(alpha=alpha.astype(np.float32), colour=colour, shade=shade, keep=keep)


def _label_lut(allowed: tuple[int, ...]) -> NDArray[np.bool_]:
    """For each label value: do all the classes it allows lie in ``allowed``?"""
    lut = np.zeros(256, bool)
    for code in range(IGNORE_INDEX):
        classes = partial_classes(code)
        lut[code] = bool(classes) and all(c in allowed for c in classes)
    return lut


_SHADOWABLE = _label_lut((CLEAR, SHADOW))  # a shadow may fall there
_CLOUD_ONLY = _label_lut((THICK, THIN))  # cloud of some thickness already


def shadowable_codes() -> NDArray[np.bool_]:
    """For each label value: may a cast shadow fall there (clear, shadow, or either)?"""
    return _SHADOWABLE


def cloud_only_codes() -> NDArray[np.bool_]:
    """For each label value: is it cloud of some thickness (thick, thin, or either)?"""
    return _CLOUD_ONLY


def composite(
    image: np.ndarray,
    label: np.ndarray,
    valid: np.ndarray,
    layer: CloudLayer,
    stretch: Stretch,
    thresholds: LayerThresholds,
) -> tuple[np.ndarray, np.ndarray]:
    """Lay ``layer`` over an (H, W, 3) uint8 tile and its (H, W) label; returns both new.

    Pixels outside ``valid`` stay as they are (nodata and padding keep their 0 and 255).
    """
    shadowable = _SHADOWABLE[label]
    shade = np.where(shadowable, layer.shade, np.float32(0.0))
    a = layer.alpha
    new_image = blend(image, valid, a, layer.colour, shade, layer.keep, stretch)
    new = label.copy()
    shadow = (shade >= thresholds.shadow_alpha) & (a < thresholds.thin_alpha)
    new[shadow] = SHADOW
    # thin over ground: real cloud under thin cloud (thick, thin or either) keeps its label;
    # unknown ground too
    thin = (a >= thresholds.thin_alpha) & (a < thresholds.thick_alpha)
    thin &= (label != IGNORE_INDEX) & ~_CLOUD_ONLY[label]
    new[thin] = THIN
    new[a >= thresholds.thick_alpha] = THICK
    new[~valid] = label[~valid]
    return new_image, new


def blend(
    image: np.ndarray,
    valid: np.ndarray,
    alpha: _F32,
    colour: _F32,
    shade: _F32,
    keep: _F32,
    stretch: Stretch,
) -> np.ndarray:
    """An (H, W, 3) uint8 tile with ground darkened by ``shade`` (to ``keep`` of its light per
    band in full shadow) and a cloud of reflectance ``colour`` (3, H, W) laid over it with
    opacity ``alpha``, composited in reflectance; pixels outside ``valid`` stay as they are."""
    refl = to_reflectance(image, stretch)  # (3, H, W), 0-1 scale
    darkened = refl * (1.0 - shade[None] * (1.0 - keep[:, None, None]))
    out = (1.0 - alpha[None]) * darkened + alpha[None] * colour
    new_image = from_reflectance(out, stretch)
    new_image[~valid] = image[~valid]
    return new_image


def to_reflectance(image: np.ndarray, stretch: Stretch) -> _F32:
    """(H, W, 3) uint8 through the inverse stretch -> (3, H, W) reflectance on the 0-1 scale."""
    lo = np.asarray(stretch.low[:3], np.float32)
    hi = np.asarray(stretch.high[:3], np.float32)
    levels = np.arange(256, dtype=np.float32) / np.float32(255.0)
    t = levels ** np.float32(stretch.gamma) if stretch.method != "none" else levels
    out = np.empty((3, *image.shape[:2]), np.float32)
    for b in range(3):
        lut = (lo[b] + t * (hi[b] - lo[b])) / np.float32(10000.0)
        out[b] = lut[image[..., b]]
    return out


def from_reflectance(refl: _F32, stretch: Stretch) -> np.ndarray:
    """(3, H, W) reflectance on the 0-1 scale -> (H, W, 3) uint8 through the stretch."""
    data = np.asarray(refl, np.float32) * np.float32(10000.0)
    return np.ascontiguousarray(stretch.apply(data).transpose(1, 2, 0))


@dataclass(frozen=True)
class SyntheticClouds:
    """What ``train --synthetic-clouds P`` does to a labelled sample drawn with ``seed``."""

    share: float
    stretch: Stretch
    thresholds: LayerThresholds = LayerThresholds()

    def __post_init__(self) -> None:
        if not (math.isfinite(self.share) and 0 <= self.share <= 1):
            raise ValueError(f"--synthetic-clouds {self.share} must be in [0, 1]")
        self.thresholds.validate()

    def chosen(self, seed: int) -> bool:
        return bool(np.random.default_rng([seed, 0x5C1]).random() < self.share)

    def apply(
        self, image: np.ndarray, label: np.ndarray, valid: np.ndarray, seed: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """The sample with a layer if ``seed`` draws one (a share ``share`` of seeds), else as
        it is."""
        if self.share <= 0 or not self.chosen(seed):
            return image, label
        rng = np.random.default_rng([seed, 0x5C2])
        layer = draw_layer(rng, *label.shape)
        return composite(image, label, valid, layer, self.stretch, self.thresholds)
