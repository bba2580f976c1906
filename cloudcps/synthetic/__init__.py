"""Synthetic data: generated scenes with exact labels, and clouds composited over real tiles.

The package owns everything cloudcps draws rather than reads:

* :mod:`~cloudcps.synthetic.spec`: label codes, :class:`SceneSpec`, :class:`SyntheticScene`, the
  scene parameters' random draws and :func:`shadow_offset`;
* :mod:`~cloudcps.synthetic.noise`: smooth and fractal noise fields and small numeric helpers;
* :mod:`~cloudcps.synthetic.ground`: the land-cover mosaic under the clouds;
* :mod:`~cloudcps.synthetic.scenes`: :func:`generate_scene` (ground, clouds, shadows, noise,
  labels), :func:`write_scene` and :func:`make_dataset` (what ``cloudcps demo`` runs on);
* :mod:`~cloudcps.synthetic.clouds`: cloud layers composited over real training tiles;
* :mod:`~cloudcps.synthetic.paste`: real clouds cut from labelled tiles and pasted over others.
"""

from __future__ import annotations

from cloudcps.synthetic.scenes import generate_scene, make_dataset, write_scene
from cloudcps.synthetic.spec import (
    BAND_NAMES,
    CLEAR,
    NODATA_LABEL,
    SHADOW,
    THICK,
    THIN,
    SceneSpec,
    SyntheticScene,
    shadow_offset,
)

__all__ = [
    "BAND_NAMES",
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
