"""Which tiles to label next: score every tile of a split by the model's uncertainty and pick a
spread-out few.

**Score.** Each tile is predicted (both CPS networks when the run has two: their disagreement;
else the normalised entropy, see :mod:`cloudcps.predict.uncertainty`) and scored as

    score = sum over the tile's pixels of u(x) * sum_c p_c(x) * w_c  /  tile pixels

with u the uncertainty in [0, 1], p the mean softmax and w_c a class weight: rare classes weigh
more. The shares s_c of the classes are those the model predicts over the whole split (sum of
p_c over every valid pixel), and w_c = 1 / sqrt(max(s_c, 0.001)), scaled so that the average
pixel weighs 1 (sum_c s_c w_c = 1). Why: uncertainty alone ranks the edges of thick clouds first
(many pixels, a class the model already knows); the weak classes of a cloud mask (thin cloud,
shadow) are rare, and a model that is unsure between clear and shadow learns more from that
label than from another cloud edge. The square root keeps a class seen on a handful of pixels
from deciding alone; 0.001 caps its weight at about 32 times the average. Nodata and padding
count as certain, so a tile that is half nodata scores at most half.

**Spread.** Tiles are taken in score order (ties by tile id) with two rules: at most
``per_scene`` tiles of one scene (default: ``ceil(count / scenes in the split)``), and no tile
that touches or overlaps an already chosen tile of its scene (neighbours share context, so their
labels teach the same thing twice). When the rules leave fewer than ``count`` tiles, the scene
cap is dropped first, then the neighbour rule; ``suggestions.csv`` says which pass took each tile.

**Outputs** (``out``): ``suggestions.csv``, ``suggestions.geojson`` (footprints in EPSG:4326;
a tile of a scene without a CRS has ``null`` geometry and its pixel window in the properties),
``suggestions.png`` (a contact sheet: RGB, predicted mask, uncertainty of the top tiles),
``labels/TILE.tif`` (a label GeoTIFF on the tile's grid: class ids, 255 where the model is unsure
or there is no data, to be corrected and given back to ``cloudcps tile --label-dir``) and
``suggest.json`` (what was done, and the files written).

**Rounds.** The labels written are of round ``1 + the latest round of the tile folder's labels``
(labels from scene label rasters are round 0), recorded in each label file's tags
(``LABEL_ROUND``) and, once tiled again, in the manifest (each tile's ``label_round``).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cloudcps import __version__
from cloudcps.contract import IGNORE_INDEX, DataContract
from cloudcps.errors import InputError
from cloudcps.io import atomic_dir, check_out_dir, writing
from cloudcps.predict import ArraySource, InputTransform, Predictor, argmax_classes, class_colours
from cloudcps.predict.backends import InferenceModel, describe
from cloudcps.predict.uncertainty import (
    UNSURE,
    UNSURE_U8,
    describe_measure,
    measure_of,
    members_of,
    split_members,
    to_u8,
)

MIN_SHARE = 1e-3  # a class's share below this weighs as if it were this
SHEET_TILES = 12  # tiles in the contact sheet at most
LABEL_TAG = "cloudcps label template"  # the LABEL tag of the label files suggest writes


@dataclass
class SuggestOptions:
    """Options of :func:`suggest_tiles`."""

    split: str = "unlabeled"
    count: int = 20
    per_scene: int | None = None  # None: ceil(count / scenes in the split)
    overwrite: bool = False

    def validate(self) -> None:
        if self.count < 1:
            raise InputError(f"--count {self.count} must be 1 or more (tiles to suggest)")
        if self.per_scene is not None and self.per_scene < 1:
            raise InputError(
                f"--per-scene {self.per_scene} must be 1 or more (tiles of one scene at most)"
            )
        if not self.split or "/" in self.split or self.split.startswith("."):
            raise InputError(
                f"--split {self.split!r} must be the name of a split list (e.g. unlabeled)"
            )


@dataclass
class Candidate:
    """One tile's numbers (arrays are not kept: the chosen tiles are predicted again)."""

    tile: dict[str, Any]
    tile_pixels: int
    valid_pixels: int
    unsure_pixels: int
    prob_sum: np.ndarray
    weighted_u: np.ndarray
    class_counts: np.ndarray
    score: float = 0.0
    rank: int = 0
    rule: str = ""


@dataclass
class SuggestResult:
    out: Path
    chosen: list[Candidate]
    scored: int
    label_round: int
    measure: str
    class_weights: dict[str, float]
    files: list[str] = field(default_factory=list)


@dataclass
class TileScore:
    """What one tile's prediction leaves for ranking: per-class sums over its valid pixels."""

    classes: np.ndarray  # (h, w) uint8 class ids, 255 outside the valid pixels
    uncertainty: np.ndarray  # (h, w) uint8 0..255
    valid: np.ndarray  # (h, w) bool
    prob_sum: np.ndarray  # (K,) sum of the mean probabilities over valid pixels
    weighted_u: np.ndarray  # (K,) sum of u x p_c over valid pixels


class ArrayUncertaintySink:
    """Collects one tile's classes, uncertainty and per-class sums (see :class:`TileScore`)."""

    def __init__(self, height: int, width: int, k: int) -> None:
        self.k = k
        self.classes = np.full((height, width), 255, np.uint8)
        self.u8 = np.zeros((height, width), np.uint8)
        self.valid = np.zeros((height, width), bool)
        self.prob_sum = np.zeros(k, np.float64)
        self.weighted_u = np.zeros(k, np.float64)

    def write(self, row: int, col: int, probs: np.ndarray, valid: np.ndarray) -> None:
        mean, u = split_members(probs, self.k)
        h, w = valid.shape
        cls = argmax_classes(mean)
        cls[~valid] = 255
        q = to_u8(u)
        q[~valid] = 0
        self.classes[row : row + h, col : col + w] = cls
        self.u8[row : row + h, col : col + w] = q
        self.valid[row : row + h, col : col + w] = valid
        pv = mean[:, valid].astype(np.float64)
        self.prob_sum += pv.sum(axis=1)
        self.weighted_u += pv @ u[valid].astype(np.float64)

    def result(self) -> TileScore:
        return TileScore(self.classes, self.u8, self.valid, self.prob_sum, self.weighted_u)


class TileTransform(InputTransform):
    """The input of the networks from an 8-bit tile (already stretched by ``cloudcps tile``):
    only the training normalisation."""

    def __call__(self, data: np.ndarray, valid: np.ndarray) -> np.ndarray:
        out = np.empty(data.shape, np.float32)
        for b in range(data.shape[0]):
            np.take(self.norm8[b], data[b], out=out[b])
        if not valid.all():
            out[:, ~valid] = self.fill[: data.shape[0], None]
        return out


def read_tile(folder: Any, tile_id: str) -> tuple[np.ndarray, np.ndarray]:
    """The RGB image (3, h, w) uint8 and valid mask (h, w) of a tile of a ``TileFolder``."""
    from PIL import Image

    item = folder.items([tile_id])[0]
    with Image.open(item.image) as im:
        img = np.asarray(im.convert("RGB")).transpose(2, 0, 1)
    if item.valid is not None:
        with Image.open(item.valid) as im:
            valid = np.asarray(im) > 0
    else:
        valid = np.ones(img.shape[1:], bool)
    return np.ascontiguousarray(img), valid


def predict_tile(predictor: Predictor, image: np.ndarray, valid: np.ndarray) -> TileScore:
    """Classes, uncertainty and per-class sums of one 8-bit tile (see :class:`TileScore`)."""
    sink = ArrayUncertaintySink(image.shape[1], image.shape[2], predictor.k)
    predictor.run(ArraySource(image, valid), sink, background=False)
    return sink.result()


def tile_predictor(model: InferenceModel, tile_size: int) -> Predictor:
    """A predictor that reads 8-bit tiles of side ``tile_size`` in one window."""
    size = 32 * math.ceil(tile_size / 32)
    predictor = Predictor(model, tile_size=size, overlap=0, batch_size=1)
    predictor.transform = TileTransform(model.contract)
    return predictor


def check_classes(model: InferenceModel, contract: DataContract, data: Path) -> None:
    if tuple(model.contract.classes) != tuple(contract.classes):
        raise InputError(
            f"--model {model.path} was trained for the classes {list(model.contract.classes)} "
            f"but the tiles of --data {data} have {list(contract.classes)}; give a run trained "
            "on tiles with these classes"
        )


def class_weights(shares: np.ndarray) -> np.ndarray:
    """w_c = 1 / sqrt(max(s_c, MIN_SHARE)), scaled so that sum_c s_c w_c = 1."""
    w = 1.0 / np.sqrt(np.maximum(shares, MIN_SHARE))
    norm = float((shares * w).sum())
    return w / norm if norm > 0 else np.ones_like(shares)


def touches(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two tiles of one scene touch or overlap (corners included)."""
    if a["scene"] != b["scene"]:
        return False
    wa, wb = a["window"], b["window"]
    return (
        wa["col_off"] <= wb["col_off"] + wb["width"]
        and wb["col_off"] <= wa["col_off"] + wa["width"]
        and wa["row_off"] <= wb["row_off"] + wb["height"]
        and wb["row_off"] <= wa["row_off"] + wa["height"]
    )


def pick(ranked: Sequence[Candidate], count: int, per_scene: int) -> list[Candidate]:
    """Greedy spread-out choice (see the module docstring); sets ``rule`` on the chosen."""
    chosen: list[Candidate] = []
    taken: set[str] = set()
    passes = (("spread", True, True), ("scene cap dropped", False, True), ("score", False, False))
    for rule, cap, apart in passes:
        for c in ranked:
            if len(chosen) >= count:
                return chosen
            if c.tile["id"] in taken:
                continue
            same = [o for o in chosen if o.tile["scene"] == c.tile["scene"]]
            if cap and len(same) >= per_scene:
                continue
            if apart and any(touches(o.tile, c.tile) for o in same):
                continue
            c.rule = rule
            chosen.append(c)
            taken.add(c.tile["id"])
    return chosen


def next_round(tiles: Sequence[dict[str, Any]]) -> int:
    """1 + the latest ``label_round`` of a manifest's tiles (scene label rasters: round 0)."""
    rounds = [int(t.get("label_round") or 0) for t in tiles if t.get("label")]
    return 1 + max(rounds, default=0)


def suggest_tiles(
    model: InferenceModel,
    data: str | os.PathLike[str],
    out: str | os.PathLike[str],
    options: SuggestOptions | None = None,
    progress: bool = False,
) -> SuggestResult:
    """Score the tiles of a split and write the suggestions (see the module docstring).

    Raises:
        InputError: a bad option, a tile folder that cannot be read, a model of other classes,
            an output that exists; nothing is written then.
    """
    from tqdm import tqdm

    from cloudcps.train.data import TileFolder

    opts = options or SuggestOptions()
    opts.validate()
    data_p, out_p = Path(data), Path(out)
    folder = TileFolder(data_p)
    check_classes(model, folder.contract, data_p)
    split_file = data_p / "splits" / f"{opts.split}.txt"
    if not split_file.is_file():
        have = sorted(p.stem for p in (data_p / "splits").glob("*.txt"))
        raise InputError(
            f"--split {opts.split}: {data_p} has no split list {split_file.name} (it has "
            f"{', '.join(have) or 'none'}); choose one of those"
        )
    ids = folder.split(opts.split)
    if not ids:
        raise InputError(
            f"the {opts.split} split of --data {data_p} is empty: no tile to suggest; choose "
            "another --split"
        )
    folder.items(ids)  # every tile's files exist and stay inside the folder, before any work
    inputs = [data_p, model.path]
    check_out_dir(out_p, opts.overwrite, "suggest", inputs)
    if model.contract.stretch != folder.contract.stretch:
        import logging

        logging.getLogger(__name__).warning(
            "--model %s was trained on tiles with another stretch than --data %s",
            model.path,
            data_p,
        )
    k = folder.contract.num_classes
    tile_size = int(folder.manifest["tile_size"])
    predictor = tile_predictor(model, tile_size)

    cands: list[Candidate] = []
    for tid in tqdm(ids, desc="suggest", unit="tile", disable=not progress):
        image, valid = read_tile(folder, tid)
        s = predict_tile(predictor, image, valid)
        cands.append(
            Candidate(
                tile=folder.tiles[tid],
                tile_pixels=int(valid.size),
                valid_pixels=int(s.valid.sum()),
                unsure_pixels=int(np.count_nonzero(s.uncertainty[s.valid] >= UNSURE_U8)),
                prob_sum=s.prob_sum,
                weighted_u=s.weighted_u,
                class_counts=np.bincount(s.classes[s.valid], minlength=k)[:k],
            )
        )
    total = np.sum([c.prob_sum for c in cands], axis=0)
    shares = total / max(float(total.sum()), 1e-12)
    weights = class_weights(shares)
    for c in cands:
        c.score = float(weights @ c.weighted_u) / max(c.tile_pixels, 1)
    ranked = sorted(cands, key=lambda c: (-round(c.score, 9), c.tile["id"]))
    scenes = {c.tile["scene"] for c in cands}
    per_scene = opts.per_scene or math.ceil(opts.count / len(scenes))
    chosen = pick(ranked, opts.count, per_scene)
    for i, c in enumerate(chosen):
        c.rank = i + 1
    label_round = next_round(list(folder.tiles.values()))
    members = members_of(model)
    result = SuggestResult(
        out=out_p,
        chosen=chosen,
        scored=len(cands),
        label_round=label_round,
        measure=measure_of(members),
        class_weights={
            n: round(float(w), 6) for n, w in zip(folder.contract.classes, weights, strict=True)
        },
    )
    with writing(out_p), atomic_dir(out_p, opts.overwrite) as tmp:
        (tmp / "labels").mkdir()
        sheet: list[tuple[Candidate, np.ndarray, TileScore]] = []
        for c in chosen:
            image, valid = read_tile(folder, c.tile["id"])
            s = predict_tile(predictor, image, valid)
            write_label_template(tmp / "labels" / f"{c.tile['id']}.tif", c.tile, s, folder,
                                 label_round)  # fmt: skip
            if len(sheet) < SHEET_TILES:
                sheet.append((c, image, s))
        files = ["suggestions.csv", "suggestions.geojson", "suggestions.png"]
        files += [f"labels/{c.tile['id']}.tif" for c in chosen]
        write_csv(tmp / "suggestions.csv", chosen, folder.contract.classes)
        write_geojson(tmp / "suggestions.geojson", chosen, folder.contract.classes)
        write_sheet(tmp / "suggestions.png", sheet, k)
        result.files = ["suggest.json", *files]
        record = {
            "created_by": f"cloudcps {__version__}",
            "cloudcps_version": __version__,
            "model": str(model.path),
            "iteration": model.iteration,
            **describe(model),
            "data": str(data_p.resolve()),
            "split": opts.split,
            "scored_tiles": len(cands),
            "count": opts.count,
            "per_scene": per_scene,
            "label_round": label_round,
            "uncertainty": {
                "measure": result.measure,
                "definition": describe_measure(members),
                "unsure_threshold": UNSURE,
            },
            "score": "sum of u * sum_c p_c w_c over the tile / tile pixels (cloudcps.suggest)",
            "predicted_shares": {
                n: round(float(s), 6) for n, s in zip(folder.contract.classes, shares, strict=True)
            },
            "class_weights": result.class_weights,
            "suggested": [c.tile["id"] for c in chosen],
            "written_files": result.files,
        }
        (tmp / "suggest.json").write_text(json.dumps(record, indent=2) + "\n")
    return result


# --------------------------------------------------------------------------------------------
# Writers
# --------------------------------------------------------------------------------------------


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
