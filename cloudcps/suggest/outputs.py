"""What ``cloudcps suggest`` writes for the chosen tiles.

**Outputs** (``out``): ``suggestions.csv``, ``suggestions.geojson`` (footprints in EPSG:4326;
a tile of a scene without a CRS has ``null`` geometry and its pixel window in the properties),
``suggestions.png`` (a contact sheet: RGB, predicted mask, uncertainty of the top tiles),
``labels/TILE.tif`` (a label GeoTIFF on the tile's grid: class ids, 255 where the model is unsure
or there is no data, to be corrected and given back to ``cloudcps tile --label-dir``) and
``suggest.json`` (what was done, and the files written).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cloudcps import __version__
from cloudcps.contract import IGNORE_INDEX
from cloudcps.predict import class_colours
from cloudcps.predict.uncertainty import UNSURE_U8
from cloudcps.suggest.scoring import Candidate, TileScore

SHEET_TILES = 12  # tiles in the contact sheet at most
LABEL_TAG = "cloudcps label template"  # the LABEL tag of the label files suggest writes


def _shares(c: Candidate) -> list[float]:
    n = max(c.valid_pixels, 1)
    return [round(float(v) / n, 5) for v in c.class_counts]


def _row(c: Candidate, classes: Sequence[str]) -> dict[str, Any]:
    w = c.tile["window"]
    row: dict[str, Any] = {
        "rank": c.rank,
        "tile": c.tile["id"],
        "scene": c.tile["scene"],
        "col_off": w["col_off"],
        "row_off": w["row_off"],
        "width": w["width"],
        "height": w["height"],
        "score": round(c.score, 6),
        "unsure_share": round(c.unsure_pixels / max(c.valid_pixels, 1), 5),
        "valid_share": round(c.valid_pixels / max(c.tile_pixels, 1), 5),
    }
    for name, s in zip(classes, _shares(c), strict=True):
        row[f"share_{name.replace(' ', '_')}"] = s
    row["pick"] = c.rule
    return row


def write_csv(path: Path, chosen: Sequence[Candidate], classes: Sequence[str]) -> None:
    """One row per suggested tile: rank, tile id, scene, window, score, predicted shares."""
    rows = [_row(c, classes) for c in chosen]
    buf = io.StringIO()
    if rows:
        w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    path.write_text(buf.getvalue())


def footprint(tile: dict[str, Any]) -> tuple[list[tuple[float, float]], str | None]:
    """The corners (closed ring) of a tile's window in its native CRS, and that CRS."""
    from affine import Affine

    tf = Affine(*tile["transform"][:6])
    w, h = tile["window"]["width"], tile["window"]["height"]
    ring = [tf * (0, 0), tf * (w, 0), tf * (w, h), tf * (0, h), tf * (0, 0)]
    return [(float(x), float(y)) for x, y in ring], tile.get("crs")


def write_geojson(path: Path, chosen: Sequence[Candidate], classes: Sequence[str]) -> None:
    """Tile footprints as polygons in EPSG:4326 (lon, lat); ``null`` geometry without a CRS."""
    from rasterio.crs import CRS
    from rasterio.warp import transform as warp

    features = []
    for c in chosen:
        ring, crs = footprint(c.tile)
        geometry: dict[str, Any] | None = None
        if crs:
            xs, ys = warp(CRS.from_user_input(crs), CRS.from_epsg(4326), *zip(*ring, strict=True))
            coords = [[round(x, 8), round(y, 8)] for x, y in zip(xs, ys, strict=True)]
            geometry = {"type": "Polygon", "coordinates": [coords]}
        props = _row(c, classes)
        props.update(
            crs=crs,
            window=dict(c.tile["window"]),
            transform=list(c.tile["transform"][:6]),
            native_footprint=[list(p) for p in ring],
        )
        features.append({"type": "Feature", "id": c.tile["id"], "geometry": geometry,
                         "properties": props})  # fmt: skip
    collection = {"type": "FeatureCollection", "features": features}
    path.write_text(json.dumps(collection, indent=1) + "\n")


def label_template(s: TileScore) -> np.ndarray:
    """The predicted classes, 255 where the model is unsure (u >= UNSURE) or there is no data."""
    lab = s.classes.copy()
    lab[(s.uncertainty >= UNSURE_U8) | ~s.valid] = IGNORE_INDEX
    return lab


def write_label_template(
    path: Path, tile: dict[str, Any], s: TileScore, folder: Any, label_round: int
) -> None:
    """A label GeoTIFF on the tile's grid (its window, transform and CRS) to correct."""
    import rasterio
    from affine import Affine

    lab = label_template(s)
    classes = folder.contract.classes
    h, w = lab.shape
    profile: dict[str, Any] = {
        "driver": "GTiff",
        "width": w,
        "height": h,
        "count": 1,
        "dtype": "uint8",
        "nodata": IGNORE_INDEX,
        "transform": Affine(*tile["transform"][:6]),
        "compress": "deflate",
    }
    if tile.get("crs"):
        profile["crs"] = tile["crs"]
    cmap = {i: c for i, c in enumerate(class_colours(len(classes)))}
    cmap[IGNORE_INDEX] = (0, 0, 0, 0)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(lab, 1)
        dst.write_colormap(1, cmap)
        dst.set_band_description(
            1, "class: " + ", ".join(f"{i} {n}" for i, n in enumerate(classes)) + ", 255 unlabelled"
        )
        dst.update_tags(
            LABEL=LABEL_TAG,
            TILE_ID=tile["id"],
            SCENE=tile["scene"],
            LABEL_ROUND=str(label_round),
            CLASSES=",".join(classes),
            VALUES="class ids; 255 = unlabelled (the model was unsure, or no data)",
            SOFTWARE=f"cloudcps {__version__}",
        )


def write_sheet(
    path: Path, rows: Sequence[tuple[Candidate, np.ndarray, TileScore]], k: int
) -> None:
    """A contact sheet: per tile a row of RGB, predicted mask and uncertainty, with its rank,
    id and score above."""
    import matplotlib
    from PIL import Image, ImageDraw

    cell, pad, head = 192, 6, 16
    width = 3 * cell + 4 * pad
    height = head + max(1, len(rows)) * (cell + head + pad) + pad
    sheet = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    titles = ("RGB", "predicted mask", "uncertainty (dark certain, bright unsure)")
    for j, title in enumerate(titles):
        draw.text((pad + j * (cell + pad), pad // 2), title, fill=(90, 90, 90))
    colours = np.array([c[:3] for c in class_colours(k)] + [(0, 0, 0)], np.uint8)
    ramp = (matplotlib.colormaps["magma"](np.arange(256))[:, :3] * 255).astype(np.uint8)
    for i, (c, image, s) in enumerate(rows):
        y = head + pad + i * (cell + head + pad)
        draw.text((pad, y), f"#{c.rank} {c.tile['id']}  score {c.score:.4f}", fill=(0, 0, 0))
        mask = colours[np.where(s.valid, np.minimum(s.classes, k), k)]
        unc = ramp[s.uncertainty]
        unc[~s.valid] = 0
        for j, arr in enumerate((image.transpose(1, 2, 0), mask, unc)):
            pic = Image.fromarray(np.ascontiguousarray(arr)).resize(
                (cell, cell), Image.Resampling.NEAREST
            )
            sheet.paste(pic, (pad + j * (cell + pad), y + head))
    sheet.save(path)
