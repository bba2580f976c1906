"""Score mask rasters against reference rasters, block by block (constant memory).

A prediction carries its classes in its ``CLASSES`` tag; the reference's codes become class ids
through ``--label-map`` (or are class ids), its nodata and 255 are ignored, and a value that is
neither is refused with the values and their pixel counts. Grids that do not line up are refused,
or with ``align`` the prediction is resampled onto the reference grid (nearest neighbour).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio

from cloudcps.contract import IGNORE_INDEX, gdal_env, is_partial, partial_classes
from cloudcps.errors import InputError
from cloudcps.evaluate.scoring import ClassFold, Evaluation
from cloudcps.io import finite_integer_values, open_raster, read_valid_mask, reading
from cloudcps.metrics import confusion_matrix, scores
from cloudcps.predict import NODATA

log = logging.getLogger(__name__)


def evaluate_rasters(
    pairs: Sequence[tuple[Path, Path]],
    label_map: dict[int, int] | None = None,
    merge: dict[int, int] | None = None,
    align: bool = False,
    n_samples: int = 4,
) -> Evaluation:
    """Score mask rasters against reference rasters, block by block (constant memory)."""
    classes: tuple[str, ...] | None = None
    total: np.ndarray | None = None
    per_file: dict[str, Any] = {}
    samples: list[dict[str, Any]] = []
    for pp, rp in pairs:
        scored = _score_pair(pp, rp, classes, label_map, merge, align, len(samples) < n_samples)
        classes = scored.classes
        if scored.sample is not None:
            samples.append(scored.sample)
        cm = scored.confusion
        per_file[str(pp)] = {"reference": str(rp), **scores(cm, scored.fold.names)}
        total = cm if total is None else total + cm
        names_out = scored.fold.names
    assert total is not None
    return Evaluation(
        classes=names_out,
        confusion={"prediction": total},
        source=f"{len(pairs)} mask raster(s)",
        samples=samples,
        details={"files": per_file},
    )


@dataclass
class _PairScore:
    """One prediction scored against its reference."""

    classes: tuple[str, ...]  # the prediction's classes (its CLASSES tag)
    fold: ClassFold
    confusion: np.ndarray  # over the folded classes
    sample: dict[str, Any] | None  # a panel, when one was asked for


def _score_pair(
    pp: Path,
    rp: Path,
    classes: tuple[str, ...] | None,
    label_map: dict[int, int] | None,
    merge: dict[int, int] | None,
    align: bool,
    with_sample: bool,
) -> _PairScore:
    """Score prediction ``pp`` against reference ``rp``; ``classes`` are the earlier masks'."""
    from rasterio.vrt import WarpedVRT

    with (
        rasterio.Env(**gdal_env()),
        open_raster(pp, "prediction") as pred,
        open_raster(rp, "reference") as ref,
        reading(f"{pp} or {rp}", "prediction or reference"),
    ):
        names = _pred_classes(pred, pp)
        if classes is not None and names != classes:
            raise InputError(f"{pp} has classes {list(names)}, earlier masks {list(classes)}")
        fold = ClassFold.build(names, merge)
        ref_lut = _reference_lut(label_map, fold.num_out, ref.nodata)
        src: Any = pred
        if _check_aligned(pred, ref, pp, rp, align):
            src = WarpedVRT(
                pred,
                crs=ref.crs or pred.crs,
                transform=ref.transform,
                width=ref.width,
                height=ref.height,
                resampling=rasterio.enums.Resampling.nearest,
                nodata=NODATA,
            )
        try:
            cm = _pair_confusion(pp, rp, src, ref, ref_lut, fold, names)
            sample = _raster_sample(pp, src, ref, ref_lut, fold) if with_sample else None
        finally:
            if src is not pred:
                src.close()
    return _PairScore(names, fold, cm, sample)


def _pair_confusion(
    pp: Path,
    rp: Path,
    src: Any,
    ref: Any,
    ref_lut: np.ndarray,
    fold: ClassFold,
    names: tuple[str, ...],
) -> np.ndarray:
    """The confusion matrix of one pair over the reference's blocks; refuses values that are
    neither classes nor nodata, and a pair without a shared valid pixel."""
    cm = np.zeros((fold.num_out, fold.num_out), np.int64)
    unknown: dict[str, int] = {}  # reference values not understood: pixel counts
    strange: dict[str, int] = {}  # prediction values outside its classes
    k = len(names)
    for _, win in ref.block_windows(1):
        p = src.read(1, window=win)
        p_nodata = _nodata_mask(p, src.nodata)
        p_class = (p >= 0) & (p < k)
        if p.dtype.kind == "f":
            p_class &= p == np.round(p)
        _add_counts(p[~p_nodata & ~p_class], strange)
        r_raw = ref.read(1, window=win)
        ok = read_valid_mask(ref, [1], window=win)
        if r_raw.dtype.kind == "f":
            finite = finite_integer_values(r_raw, rp, "reference")
            ok &= finite  # NaN or inf: no reference there
            r_raw = np.where(finite, r_raw, 0)
        ri = r_raw.astype(np.int64)
        # a code outside 0..65535 (a negative one) is not understood, never clipped
        inside = (ri >= 0) & (ri <= 65535)
        r = np.where(inside, ref_lut[ri.clip(0, 65535)], 254)
        _add_counts(r_raw[(r == 254) & ok], unknown)
        r = np.where(ok, r, IGNORE_INDEX)
        p_f = fold.apply(np.where(p_class, p, NODATA).astype(np.int64))
        r = np.where(p_nodata, IGNORE_INDEX, r)
        cm += confusion_matrix(p_f, r, fold.num_out)
    _refuse_unknown_values(pp, rp, strange, unknown, names, fold)
    if cm.sum() == 0:
        raise InputError(f"prediction {pp} and reference {rp} share no valid pixel")
    return cm


def _refuse_unknown_values(
    pp: Path,
    rp: Path,
    strange: dict[str, int],
    unknown: dict[str, int],
    names: tuple[str, ...],
    fold: ClassFold,
) -> None:
    """Refuse prediction values outside its classes, then reference values not understood."""
    if strange:
        values, pixels = _listing(strange)
        raise InputError(
            f"prediction {pp} holds values {values} ({pixels}) outside its classes "
            f"0..{len(names) - 1} ({', '.join(names)}) and nodata; a mask must hold class ids "
            f"of its CLASSES tag or {NODATA} (nodata): give the mask cloudcps "
            "predict wrote, or declare the raster's nodata"
        )
    if unknown:
        values, pixels = _listing(unknown)
        raise InputError(
            f"reference {rp} holds values {values} ({pixels}) that are not class "
            f"ids 0..{fold.num_out - 1} of the (merged) classes, its nodata or codes "
            "of --label-map; pass --label-map (SRC:255 ignores a code), --merge, or "
            "declare the raster's nodata"
        )


def _pred_classes(src: rasterio.DatasetReader, path: Path) -> tuple[str, ...]:
    tags = src.tags()
    if "CLASSES" in tags:
        return tuple(tags["CLASSES"].split(","))
    log.warning("%s carries no CLASSES tag: assuming cloudcps's 4 classes", path)
    return ("clear", "thick cloud", "thin cloud", "cloud shadow")


def _misalignment(pred: Any, ref: Any) -> list[str]:
    """How the grids of a prediction and its reference differ (nothing when they line up)."""
    problems = []
    if (pred.width, pred.height) != (ref.width, ref.height):
        problems.append(f"size {pred.width}x{pred.height} vs {ref.width}x{ref.height}")
    if not pred.transform.almost_equals(ref.transform, precision=1e-6 * abs(ref.transform.a or 1)):
        problems.append("transform differs")
    if pred.crs and ref.crs and pred.crs != ref.crs:
        problems.append(f"CRS {pred.crs.to_string()} vs {ref.crs.to_string()}")
    return problems


def _check_aligned(pred: Any, ref: Any, pp: Path, rp: Path, align: bool) -> bool:
    """Whether the prediction must be resampled onto the reference grid: refuse grids that do not
    line up without ``align``, and with it a raster that has no CRS to resample by."""
    problems = _misalignment(pred, ref)
    if problems and align:
        no_crs = [f"{w} {p}" for w, p, ds in (("prediction", pp, pred), ("reference", rp, ref))]
        no_crs = [n for n, ds in zip(no_crs, (pred, ref), strict=True) if ds.crs is None]
        if no_crs:
            raise InputError(
                f"{' and '.join(no_crs)} {'have' if len(no_crs) > 1 else 'has'} no CRS, and "
                f"the grids differ ({'; '.join(problems)}); --align needs georeferenced rasters "
                "(a CRS on both) to resample one onto the other: set the CRS (gdal_edit.py "
                "-a_srs EPSG:...) or give a prediction on the reference grid"
            )
        return True
    if problems:
        raise InputError(
            f"prediction {pp} and reference {rp} do not line up ({'; '.join(problems)}); pass "
            "--align to resample the prediction onto the reference grid (nearest neighbour)"
        )
    return False


def _nodata_mask(values: np.ndarray, nodata: float | None) -> np.ndarray:
    """Pixels of a prediction that are nodata: cloudcps's 255, or the raster's own nodata."""
    mask = values == NODATA
    if nodata is not None:
        mask |= np.isnan(values) if np.isnan(nodata) else values == nodata
    return np.asarray(mask)


def _show(value: float) -> str:
    v = float(value)
    if v != v:
        return "nan"
    return str(int(v)) if v.is_integer() else f"{v:g}"


def _add_counts(values: np.ndarray, into: dict[str, int]) -> None:
    """Add the pixel count of each value of ``values`` to ``into`` (keys as printed)."""
    if values.size == 0:
        return
    uniq, counts = np.unique(values, return_counts=True)
    for v, n in zip(uniq.tolist(), counts.tolist(), strict=True):
        key = _show(v)
        into[key] = into.get(key, 0) + int(n)


def _listing(counts: dict[str, int], limit: int = 10) -> tuple[str, str]:
    """``[v1, v2, ...]`` and ``v1: N px, ...`` of counted values, in numeric order."""
    keys = sorted(counts, key=lambda s: (s == "nan", float(s) if s != "nan" else 0.0))
    more = ", ..." if len(keys) > limit else ""
    values = "[" + ", ".join(keys[:limit]) + more + "]"
    pixels = ", ".join(f"{k}: {counts[k]} px" for k in keys[:limit]) + more
    return values, pixels


def _reference_lut(label_map: dict[int, int] | None, k: int, nodata: float | None) -> np.ndarray:
    """Raw reference value -> class id; 255 ignore; 254 marks values that are not understood."""
    lut = np.full(65536, 254, np.uint8)
    if label_map:
        bad = sorted(d for d in label_map.values() if not (0 <= d < k or d == IGNORE_INDEX))
        sets = sorted(d for d in bad if is_partial(d))
        if sets:
            src = next(s for s, d in label_map.items() if d == sets[0])
            allowed = "|".join(map(str, partial_classes(sets[0])))
            raise InputError(
                f"--label-map {src}:{allowed}: evaluate scores one class per reference value, not "
                "a set of classes (sets are for tile); map each value to one class and score "
                "coarse classes together with --merge (e.g. --label-map 0:0,1:1 --merge 0,3:0 "
                "--merge 1,2:1)"
            )
        if bad:
            raise InputError(f"--label-map sends values to {bad}; the classes are 0..{k - 1}")
        for src, dst in label_map.items():
            lut[src] = dst
    else:
        lut[:k] = np.arange(k)
    if not label_map or IGNORE_INDEX not in label_map:
        lut[IGNORE_INDEX] = IGNORE_INDEX
    if nodata is not None and float(nodata).is_integer() and 0 <= nodata < 65536:
        lut[int(nodata)] = IGNORE_INDEX
    return lut


def _raster_sample(
    pp: Path, src: Any, ref: Any, ref_lut: np.ndarray, fold: ClassFold
) -> dict[str, Any]:
    """A decimated panel (image if known, reference, prediction) of one pair."""
    f = max(1, int(np.ceil(max(ref.width, ref.height) / 512)))
    shape = (max(1, ref.height // f), max(1, ref.width // f))
    nearest = rasterio.enums.Resampling.nearest
    p = fold.apply(src.read(1, out_shape=shape, resampling=nearest))
    p[src.read(1, out_shape=shape, resampling=nearest) == NODATA] = IGNORE_INDEX
    raw = ref.read(1, out_shape=shape, resampling=nearest)
    finite = np.isfinite(raw) if raw.dtype.kind == "f" else np.ones(raw.shape, bool)
    r = ref_lut[np.where(finite, raw, 0).astype(np.int64).clip(0, 65535)]
    r[(r == 254) | ~finite] = IGNORE_INDEX
    image = None
    title = pp.name
    side = pp.with_name((pp.stem) + ".json")
    if side.is_file():
        try:
            scene = Path(json.loads(side.read_text())["scene"])
            with open_raster(scene) as s:
                rgb = s.read([1, 2, 3], out_shape=(3, *shape), resampling=nearest).astype(
                    np.float32
                )
            lo, hi = np.percentile(rgb, 1), np.percentile(rgb, 99)
            image = np.clip((rgb - lo) / max(hi - lo, 1e-6) * 255, 0, 255).astype(np.uint8)
            image = image.transpose(1, 2, 0)
            title = scene.name
        except (KeyError, OSError, InputError, json.JSONDecodeError):
            image = None
    return {"title": title, "image": image, "reference": r, "predictions": {"prediction": p}}
