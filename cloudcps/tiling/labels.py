"""Labels of single tiles (what ``cloudcps suggest`` writes and a person corrects) given back to
``cloudcps tile --label-dir``.

A tile label is a GeoTIFF named ``SCENE_rROW_cCOL.tif`` (a tile id) in a ``--label-dir``, on the
grid of its scene (same CRS and pixel size, its origin on a pixel corner of the scene). It holds
class ids (0..K-1) and 255 for pixels left unlabelled; ``--label-map`` does not apply to it. Where
it holds a class id it decides the label of the tiles it covers (over a scene label raster, if
the scene has one); where it holds 255 the scene label (or nothing) stays. Every tile it gives
a labelled pixel joins the ``labeled`` split (unless its scene is a validation scene), and the
manifest records the tile's ``label_round``: the ``LABEL_ROUND`` tag that suggest wrote into the
file (else the ``label_round`` of the ``suggest.json`` above its folder; else null), and the
files in ``label_files``. Tiles labelled by scene label rasters only have ``label_round`` 0.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.windows import Window

from cloudcps.errors import InputError
from cloudcps.io import open_raster, reading

UNLABELLED = 255
_NAME = re.compile(r"^(?P<scene>.+)_r(?P<row>\d+)_c(?P<col>\d+)\.tiff?$", re.IGNORECASE)


@dataclass(frozen=True)
class TileLabel:
    """A tile label file and where it lies on its scene's pixel grid."""

    path: Path
    col_off: int
    row_off: int
    width: int
    height: int
    round: int | None

    def to_dict(self) -> dict[str, object]:
        return {
            "path": str(self.path.resolve()),
            "window": {
                "col_off": self.col_off,
                "row_off": self.row_off,
                "width": self.width,
                "height": self.height,
            },
            "label_round": self.round,
        }


def _round_of(path: Path, tags: dict[str, str]) -> int | None:
    text = tags.get("LABEL_ROUND")
    if text is None:
        record = path.parent.parent / "suggest.json"
        try:
            text = str(json.loads(record.read_text()).get("label_round"))
        except (OSError, ValueError, AttributeError):
            return None
    try:
        return int(text)
    except (TypeError, ValueError):
        return None


def _offset(value: float, what: str, path: Path) -> int:
    if abs(value - round(value)) > 1e-3:
        raise InputError(
            f"tile label {path} does not start on a pixel corner of its scene ({what} offset "
            f"{value:.3f} px); write it on the tile's grid (cloudcps suggest does)"
        )
    return round(value)


def inspect_tile_label(
    path: Path,
    crs: str | None,
    transform: Sequence[float],
    width: int,
    height: int,
    num_classes: int,
) -> TileLabel:
    """Check a tile label against its scene's grid and classes (see the module docstring)."""
    scene_tf = Affine(*transform[:6])
    with open_raster(path, "tile label") as src, reading(path, "tile label"):
        if crs is not None and src.crs is not None and src.crs != CRS.from_user_input(crs):
            raise InputError(
                f"tile label {path} is in {src.crs.to_string()} but its scene is in {crs}; write "
                "it on the tile's grid (cloudcps suggest does)"
            )
        tf = src.transform
        if abs(tf.a - scene_tf.a) > 1e-6 * abs(scene_tf.a) or abs(tf.e - scene_tf.e) > 1e-6 * abs(
            scene_tf.e
        ):
            raise InputError(
                f"tile label {path} has pixels of {tf.a:g} x {-tf.e:g} but its scene of "
                f"{scene_tf.a:g} x {-scene_tf.e:g}; write it on the tile's grid"
            )
        col, row = ~scene_tf * (tf.c, tf.f)
        label = TileLabel(
            path,
            _offset(col, "column", path),
            _offset(row, "row", path),
            src.width,
            src.height,
            _round_of(path, src.tags()),
        )
        if (
            label.col_off >= width
            or label.row_off >= height
            or label.col_off + label.width <= 0
            or label.row_off + label.height <= 0
        ):
            raise InputError(
                f"tile label {path} lies outside its scene ({width}x{height} px); check its "
                "georeferencing or remove it from --label-dir"
            )
        values = np.unique(src.read(1))
    bad = [int(v) for v in values if not (0 <= v < num_classes or v == UNLABELLED)]
    if bad:
        raise InputError(
            f"tile label {path} holds values {bad[:6]} that are neither class ids 0.."
            f"{num_classes - 1} nor 255 (unlabelled); tile labels hold class ids, not the codes "
            "of --label-map: fix those pixels"
        )
    return label


def find_tile_labels(
    scene_id: str,
    crs: str | None,
    transform: Sequence[float],
    width: int,
    height: int,
    label_dirs: Sequence[Path],
    num_classes: int,
) -> tuple[TileLabel, ...]:
    """The tile labels of a scene in ``label_dirs`` (named ``SCENE_rROW_cCOL.tif``), checked."""
    found = []
    for d in label_dirs:
        for p in sorted(Path(d).iterdir()):
            m = _NAME.match(p.name)
            if m and m["scene"] == scene_id and p.is_file():
                found.append(inspect_tile_label(p, crs, transform, width, height, num_classes))
    return tuple(found)


def paste(
    label: np.ndarray, row: int, col: int, labels: Sequence[TileLabel], valid_h: int, valid_w: int
) -> list[TileLabel]:
    """Write the class ids of ``labels`` over the tile ``label`` (its top-left pixel at ``row``,
    ``col`` of the scene; only its first ``valid_h`` x ``valid_w`` pixels lie in the scene);
    the tile labels that gave at least one pixel."""
    used = []
    for tl in labels:
        r0, c0 = max(row, tl.row_off), max(col, tl.col_off)
        r1 = min(row + valid_h, tl.row_off + tl.height)
        c1 = min(col + valid_w, tl.col_off + tl.width)
        if r1 <= r0 or c1 <= c0:
            continue
        with rasterio.open(tl.path) as src, reading(tl.path, "tile label"):
            part = src.read(1, window=Window(c0 - tl.col_off, r0 - tl.row_off, c1 - c0, r1 - r0))
        known = part != UNLABELLED
        if not known.any():
            continue
        target = label[r0 - row : r1 - row, c0 - col : c1 - col]
        target[known] = part[known]
        used.append(tl)
    return used
