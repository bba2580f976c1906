"""Real clouds, cut from labelled tiles and pasted over other real ground.

Synthetic layers (:mod:`cloudcps.synthetic.clouds`) teach shapes and opacities that no annotator
drew; pasted clouds teach what real clouds look like: their texture, their colour in each product,
cumulus cores and cirrus veils as the labelled tiles show them. ``train --paste-clouds P`` gives a
share ``P`` of the labelled samples a cloud cut from another labelled tile (the *bank*: the
labelled tiles with some, but not only, cloud pixels, exact or partial thick|thin labels):

* the source tile is flipped / rotated at random and laid at a random offset over the target;
* its cloud pixels, feathered at their edges (Gaussian, ``feather`` px) and tapered at the
  source tile's border (no straight cut edges), are blended over the target in reflectance
  (the tile folder's stretch undone and redone, as for synthetic layers);
* the label follows the pasted pixels: where the pasted opacity is at least one half, the
  source's own label (thick, thin, or the partial "thick or thin" code of a coarse label);
* a shadow is cast from the pasted cloud's shape as the synthetic layers cast theirs: the
  cloud mask displaced in a random direction darkens uncovered ground labelled clear or shadow,
  labelled shadow where its strength is at least ``shadow_alpha``.

Every draw comes from the sample's seed, so the same seed gives the same sample and a resumed
run sees the composites an uninterrupted run would have seen.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from cloudcps.contract import IGNORE_INDEX, Stretch
from cloudcps.synthetic.clouds import (
    LayerThresholds,
    blend,
    cloud_only_codes,
    shadowable_codes,
    to_reflectance,
)
from cloudcps.synthetic.noise import fractal, grid, smoothstep
from cloudcps.synthetic.spec import SHADOW

Loader = Callable[[int], tuple[np.ndarray, np.ndarray, np.ndarray]]
"""Item index -> (H, W, 3) uint8 image, (H, W) uint8 label, (H, W) bool valid."""

_F32 = NDArray[np.float32]


@dataclass(frozen=True)
class PastedClouds:
    """What ``train --paste-clouds P`` does to a labelled sample drawn with ``seed``.

    Args:
        share: share of the samples that get a pasted cloud.
        stretch: the tile folder's stretch (pasting is done in reflectance).
        bank: indices of the items clouds are cut from (:func:`cloud_bank`).
        feather: Gaussian sigma in pixels of the soft cloud edge.
        shadow_alpha: shadow strength from which the ground is labelled shadow.
    """

    share: float
    stretch: Stretch
    bank: tuple[int, ...]
    feather: float = 2.0
    shadow_alpha: float = LayerThresholds.shadow_alpha

    def __post_init__(self) -> None:
        if not (math.isfinite(self.share) and 0 <= self.share <= 1):
            raise ValueError(f"--paste-clouds {self.share} must be in [0, 1]")

    def chosen(self, seed: int) -> bool:
        return bool(np.random.default_rng([seed, 0x9A5]).random() < self.share)

    def apply(
        self, image: np.ndarray, label: np.ndarray, valid: np.ndarray, seed: int, load: Loader
    ) -> tuple[np.ndarray, np.ndarray]:
        """The sample with a pasted cloud if ``seed`` draws one, else as it is; ``load`` reads
        a bank item."""
        if self.share <= 0 or not self.bank or not self.chosen(seed):
            return image, label
        rng = np.random.default_rng([seed, 0x9A6])
        src_image, src_label, src_valid = load(self.bank[int(rng.integers(len(self.bank)))])
        k = int(rng.integers(4))
        flip = bool(rng.random() < 0.5)
        src_image, src_label, src_valid = (
            _orient(a, k, flip) for a in (src_image, src_label, src_valid)
        )
        h, w = label.shape
        sh, sw = src_label.shape
        # the source may hang over any edge, but at least half of it lies on the target
        dy = int(rng.integers(-(sh // 2), max(h - sh // 2, -(sh // 2)) + 1))
        dx = int(rng.integers(-(sw // 2), max(w - sw // 2, -(sw // 2)) + 1))
        cloud = cloud_only_codes()[src_label] & src_valid
        alpha_src = _soft_mask(cloud, self.feather) * _blob(rng, sh, sw)
        alpha = _place(alpha_src, (h, w), dy, dx, 0.0)
        colour = _place(to_reflectance(src_image, self.stretch), (h, w), dy, dx, 0.0)
        pasted_label = _place(src_label, (h, w), dy, dx, IGNORE_INDEX)
        # the shadow: the cloud mask displaced along a random direction
        dist = float(rng.uniform(0.02, 0.2)) * max(h, w)
        ang = float(rng.uniform(0, 2 * math.pi))
        sy, sx = round(dist * math.sin(ang)), round(dist * math.cos(ang))
        strength = np.float32(rng.uniform(0.6, 1.0))
        shade = _place(alpha_src, (h, w), dy + sy, dx + sx, 0.0) * strength
        base = float(rng.uniform(0.2, 0.5))
        keep = np.array([base, base + 0.03, base + 0.08], np.float32)
        return paste(image, label, valid, alpha, colour, pasted_label, shade, keep, self)


def paste(
    image: np.ndarray,
    label: np.ndarray,
    valid: np.ndarray,
    alpha: _F32,
    colour: _F32,
    pasted_label: np.ndarray,
    shade: _F32,
    keep: _F32,
    cfg: PastedClouds,
) -> tuple[np.ndarray, np.ndarray]:
    """Blend ``colour`` (3, H, W reflectance) with opacity ``alpha`` over an (H, W, 3) uint8
    tile, darken uncovered shadowable ground by ``shade``; the label follows the pixels."""
    uncovered = alpha < LayerThresholds.thin_alpha
    shade = np.where(shadowable_codes()[label] & uncovered, shade, np.float32(0.0))
    new_image = blend(image, valid, alpha, colour, shade, keep, cfg.stretch)
    new = label.copy()
    new[shade >= cfg.shadow_alpha] = SHADOW
    covered = (alpha >= 0.5) & (pasted_label != IGNORE_INDEX)
    new[covered] = pasted_label[covered]
    new[~valid] = label[~valid]
    return new_image, new


def cloud_bank(
    labels: Sequence[np.ndarray | None], min_share: float = 0.02, max_share: float = 0.9
) -> tuple[int, ...]:
    """Indices of the labels with cloud (thick, thin or "thick or thin") on a share of their
    pixels in ``[min_share, max_share]``: enough to cut, and edges to cut along."""
    lut = cloud_only_codes()
    out = []
    for i, lab in enumerate(labels):
        if lab is None or lab.size == 0:
            continue
        share = float(lut[lab].mean())
        if min_share <= share <= max_share:
            out.append(i)
    return tuple(out)


def _blob(rng: np.random.Generator, h: int, w: int) -> _F32:
    """A soft, ragged region inside an ``(h, w)`` tile (1 inside, 0 outside): the part of the
    source's clouds that is cut, so a cloud-filled source gives a cloud-shaped cut, not a
    rectangle."""
    yy, xx = grid(h, w)
    side = float(max(h, w))
    cy, cx = rng.uniform(0.3, 0.7) * h, rng.uniform(0.3, 0.7) * w
    radius = float(rng.uniform(0.15, 0.35)) * side
    noise = fractal(rng, yy, xx, side / 3.0, 4, 0.5)
    r = np.hypot(yy - np.float32(cy), xx - np.float32(cx)) / np.float32(radius)
    return smoothstep((np.float32(1.0) + np.float32(0.3) * noise - r) / np.float32(0.25))


def _orient(a: np.ndarray, k: int, flip: bool) -> np.ndarray:
    a = np.rot90(a, k, axes=(0, 1))
    return np.ascontiguousarray(a[:, ::-1] if flip else a)


def _soft_mask(cloud: NDArray[np.bool_], feather: float) -> _F32:
    """The cloud mask with soft edges, tapered to 0 at the tile's border (no straight cuts)."""
    soft = ndimage.gaussian_filter(cloud.astype(np.float32), feather) if feather > 0 else cloud
    soft = np.asarray(soft, np.float32)
    h, w = cloud.shape
    ramp = max(1.0, 4.0 * feather)
    ty = np.clip(np.minimum(np.arange(h), np.arange(h)[::-1]) / ramp, 0, 1)
    tx = np.clip(np.minimum(np.arange(w), np.arange(w)[::-1]) / ramp, 0, 1)
    return (soft * ty[:, None] * tx[None, :]).astype(np.float32)


def _place(src: np.ndarray, shape: tuple[int, int], dy: int, dx: int, fill: float) -> np.ndarray:
    """``src`` (H', W'[, C] or C, H', W' for 3-D float) laid on an ``shape`` grid at offset
    ``(dy, dx)``; the rest ``fill``."""
    channels_first = src.ndim == 3 and src.dtype == np.float32
    sh, sw = src.shape[-2:] if channels_first else src.shape[:2]
    h, w = shape
    lead = src.shape[:1] if channels_first else ()
    out = np.full((*lead, h, w), fill, dtype=src.dtype)
    y0, x0 = max(dy, 0), max(dx, 0)
    y1, x1 = min(dy + sh, h), min(dx + sw, w)
    if y1 <= y0 or x1 <= x0:
        return out
    out[..., y0:y1, x0:x1] = src[..., y0 - dy : y1 - dy, x0 - dx : x1 - dx]
    return out
