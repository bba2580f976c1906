"""Score models on a tile folder, or masks against reference rasters; write reports and plots.

Ignore pixels (255) and nodata are excluded from every score. Several models (or prediction sets)
are reported side by side. Classes can be folded (``merge``), e.g. thick + thin cloud -> cloud and
shadow -> clear, to score a 4-class model against a binary reference.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import torch

from cloudcps import __version__
from cloudcps.contract import IGNORE_INDEX, gdal_env, is_partial, partial_classes
from cloudcps.errors import InputError
from cloudcps.io import (
    atomic_dir,
    check_owned,
    finite_integer_values,
    is_virtual_path,
    open_raster,
    read_valid_mask,
    reading,
    remove_stale_temps,
    writing,
)
from cloudcps.metrics import confusion_matrix, scores
from cloudcps.models import LoadedModel
from cloudcps.predict import NODATA, class_colours
from cloudcps.train.data import SegmentationDataset, TileFolder

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# Class folding
# --------------------------------------------------------------------------------------------


def parse_merge(items: Sequence[str]) -> dict[int, int]:
    """``["1,2:1", "3:0"]`` -> ``{1: 1, 2: 1, 3: 0}`` (sources to target class id)."""
    mapping: dict[int, int] = {}
    for item in items:
        try:
            src, dst = item.split(":")
            target = int(dst)
            for s in src.split(","):
                if int(s) in mapping and mapping[int(s)] != target:
                    raise ValueError(f"class {s} is merged twice")
                mapping[int(s)] = target
        except ValueError as exc:
            raise ValueError(
                f"--merge {item!r}: expected SRC[,SRC...]:DST like 1,2:1 ({exc})"
            ) from None
    return mapping


@dataclass(frozen=True)
class ClassFold:
    """A mapping of K original classes onto K' folded classes with joined names."""

    lut: tuple[int, ...]
    names: tuple[str, ...]

    @classmethod
    def build(cls, names: Sequence[str], merge: dict[int, int] | None) -> ClassFold:
        k = len(names)
        if not merge:
            return cls(tuple(range(k)), tuple(names))
        bad = sorted(c for c in list(merge) + list(merge.values()) if not 0 <= c < k)
        if bad:
            raise InputError(f"--merge names class ids {bad} but the classes are 0..{k - 1}")
        targets = [merge.get(i, i) for i in range(k)]
        new_ids = sorted(set(targets))
        renum = {t: n for n, t in enumerate(new_ids)}
        lut = tuple(renum[t] for t in targets)
        joined = tuple(
            "+".join(names[i] for i in range(k) if lut[i] == n) for n in range(len(new_ids))
        )
        return cls(lut, joined)

    @property
    def num_out(self) -> int:
        return len(self.names)

    def apply(self, labels: np.ndarray) -> np.ndarray:
        table = np.full(256, IGNORE_INDEX, np.uint8)
        table[: len(self.lut)] = self.lut
        return table[labels.astype(np.int64).clip(0, 255)]


# --------------------------------------------------------------------------------------------
# Models on a tile folder
# --------------------------------------------------------------------------------------------


@dataclass
class Evaluation:
    """Confusion matrices of several named entries over one class set, plus sample panels."""

    classes: tuple[str, ...]
    confusion: dict[str, np.ndarray]
    source: str
    samples: list[dict[str, Any]] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)


def model_names(paths: Sequence[str | os.PathLike[str]]) -> list[str]:
    """Short, unique names for models given as run folders or checkpoint files."""
    names = []
    for p in map(Path, paths):
        names.append(p.name if p.is_dir() else f"{p.parent.name}/{p.stem}")
    if len(set(names)) != len(names):
        names = [str(p) for p in paths]
    return names


@torch.no_grad()
def evaluate_models_on_tiles(
    models: Sequence[tuple[str, LoadedModel]],
    data: str | os.PathLike[str],
    split: str = "val",
    merge: dict[int, int] | None = None,
    device: torch.device | None = None,
    n_samples: int = 4,
    progress: bool = False,
) -> Evaluation:
    """Predict the tiles of ``split`` with each model and score them against the label tiles."""
    from tqdm import tqdm

    from cloudcps.train import pad_to_multiple

    dev = device or torch.device("cpu")
    folder = TileFolder(data)
    ids = folder.split(split)
    if not ids:
        raise InputError(f"the {split} split of --data {data} is empty; choose another --split")
    classes = folder.contract.classes
    for name, m in models:
        if tuple(m.contract.classes) != tuple(classes):
            raise InputError(
                f"--model {m.path} was trained for classes {list(m.contract.classes)} but --data "
                f"{data} has {list(classes)}"
            )
        if m.contract.stretch != folder.contract.stretch:
            log.warning("%s was trained on tiles with another stretch than %s", name, data)
    items = [it for it in folder.items(ids) if it.label is not None]
    if not items:
        raise InputError(f"the {split} tiles of --data {data} have no labels to score against")
    fold = ClassFold.build(classes, merge)
    ds = SegmentationDataset(
        items, None, True, folder.contract.mean, folder.contract.std, folder.contract.num_classes
    )
    cms = {name: np.zeros((fold.num_out, fold.num_out), np.int64) for name, _ in models}
    k = len(classes)
    by_code = {name: np.zeros((256, k), np.int64) for name, _ in models}  # partial labels too
    per_tile: list[tuple[int, str]] = []
    preds: dict[str, dict[str, np.ndarray]] = {name: {} for name, _ in models}
    for i in tqdm(range(len(ds)), desc="evaluate", unit="tile", disable=not progress):
        s = ds[i]
        ref = np.where(s["valid"].numpy(), s["mask"].numpy(), IGNORE_INDEX).astype(np.uint8)
        ref_f = fold.apply(ref)
        x, h, w = pad_to_multiple(s["image"][None].to(dev))
        for name, m in models:
            pred = m.model.to(dev)(x)[..., :h, :w].argmax(1)[0].cpu().numpy().astype(np.uint8)
            cms[name] += confusion_matrix(fold.apply(pred), ref_f, fold.num_out)
            by_code[name] += np.bincount(
                ref.astype(np.int64).ravel() * k + pred.ravel(), minlength=256 * k
            ).reshape(256, k)
            preds[name][s["id"]] = pred
        per_tile.append((len(np.unique(ref[ref != IGNORE_INDEX])), s["id"]))
    chosen = [tid for _, tid in sorted(per_tile, key=lambda t: (-t[0], t[1]))[:n_samples]]
    by_id = {it.id: k for k, it in enumerate(items)}
    samples = []
    for tid in chosen:
        img, mask, valid = ds.load(by_id[tid])
        samples.append(
            {
                "title": tid,
                "image": img,
                "reference": np.where(valid, mask, IGNORE_INDEX).astype(np.uint8),
                "predictions": {name: preds[name][tid] for name, _ in models},
            }
        )
    names, how = tuple(fold.names), ""
    if merge is None and all(cm.sum() == 0 for cm in cms.values()):
        # partial labels only (e.g. 0|3 and 1|2): score per group, as train validates them
        from cloudcps.train import validation_scores

        grouped = {name: validation_scores(c, list(classes)) for name, c in by_code.items()}
        if all(g.get("grouped") for g in grouped.values()):
            names = tuple(next(iter(grouped.values()))["classes"])
            cms = {n: np.asarray(g["confusion"], np.int64) for n, g in grouped.items()}
            how = ", by groups of the partial labels"
    return Evaluation(
        classes=names,
        confusion=cms,
        source=f"tiles {data} split {split} ({len(items)} tiles{how})",
        samples=samples,
        details={"fold": list(fold.lut), "original_classes": list(classes)},
    )


# --------------------------------------------------------------------------------------------
# Rasters
# --------------------------------------------------------------------------------------------


def match_pairs(
    preds: Sequence[Path], refs: Sequence[Path], allow_missing: bool = False
) -> list[tuple[Path, Path]]:
    """Pair predictions with references: in order, or two folders matched by file name.

    In folders, ``NAME_mask.tif`` (what ``cloudcps predict`` writes) matches ``NAME.tif``; a
    file of either folder without its match is an error naming it, unless ``allow_missing``
    (then a warning names them and the matched pairs are scored).
    """
    if len(preds) == 1 and len(refs) == 1 and preds[0].is_dir() and refs[0].is_dir():
        ref_by_stem = {
            p.stem: p for p in sorted(refs[0].iterdir()) if p.suffix.lower() in (".tif", ".tiff")
        }
        pairs = []
        no_ref: list[Path] = []
        for p in sorted(preds[0].iterdir()):
            if p.suffix.lower() not in (".tif", ".tiff") or p.stem.endswith("_proba"):
                continue
            stem = p.stem[: -len("_mask")] if p.stem.endswith("_mask") else p.stem
            if stem in ref_by_stem:
                pairs.append((p, ref_by_stem.pop(stem)))
            else:
                no_ref.append(p)
        if not pairs:
            raise InputError(
                f"no file of --pred {preds[0]} matches a file of --ref {refs[0]} by name"
            )
        no_pred = list(ref_by_stem.values())
        if no_ref or no_pred:
            parts = [f"{p} (no reference)" for p in no_ref[:5]]
            parts += [f"{r} (no prediction)" for r in no_pred[:5]]
            n = len(no_ref) + len(no_pred)
            if n > len(parts):
                parts.append(f"and {n - len(parts)} more")
            listed = f"{n} file(s) of --pred {preds[0]} and --ref {refs[0]} have no match by name: "
            listed += ", ".join(parts)
            if not allow_missing:
                raise InputError(
                    f"{listed}; NAME_mask.tif pairs with NAME.tif: add the missing files, or "
                    f"pass --allow-missing to score the {len(pairs)} matched pair(s) alone"
                )
            log.warning(
                "%s; scoring the %d matched pair(s) alone (--allow-missing)", listed, len(pairs)
            )
        return pairs
    if len(preds) != len(refs):
        raise InputError(
            f"give as many --ref as --pred (got {len(preds)} --pred, {len(refs)} --ref)"
        )
    missing = [
        f"{opt} {p}"
        for opt, group in (("--pred", preds), ("--ref", refs))
        for p in group
        if not is_virtual_path(p) and not Path(p).exists()
    ]
    if missing:
        shown = ", ".join(missing[:5]) + (
            f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        )
        raise InputError(
            f"{shown} {'does' if len(missing) == 1 else 'do'} not exist; check the paths "
            "(nothing was scored)"
        )
    for p in list(preds) + list(refs):
        if p.is_dir():
            raise InputError(f"{p} is a folder; give two folders (--pred DIR --ref DIR) or files")
    return list(zip(preds, refs, strict=True))


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


def evaluate_rasters(
    pairs: Sequence[tuple[Path, Path]],
    label_map: dict[int, int] | None = None,
    merge: dict[int, int] | None = None,
    align: bool = False,
    n_samples: int = 4,
) -> Evaluation:
    """Score mask rasters against reference rasters, block by block (constant memory)."""
    from rasterio.vrt import WarpedVRT

    classes: tuple[str, ...] | None = None
    total: np.ndarray | None = None
    per_file: dict[str, Any] = {}
    samples: list[dict[str, Any]] = []
    for pp, rp in pairs:
        with (
            rasterio.Env(**gdal_env()),
            open_raster(pp, "prediction") as pred,
            open_raster(rp, "reference") as ref,
            reading(f"{pp} or {rp}", "prediction or reference"),
        ):
            names = _pred_classes(pred, pp)
            if classes is None:
                classes = names
            elif names != classes:
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
                if strange:
                    values, pixels = _listing(strange)
                    raise InputError(
                        f"prediction {pp} holds values {values} ({pixels}) outside its classes "
                        f"0..{k - 1} ({', '.join(names)}) and nodata; a mask must hold class ids "
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
                if cm.sum() == 0:
                    raise InputError(f"prediction {pp} and reference {rp} share no valid pixel")
                if len(samples) < n_samples:
                    samples.append(_raster_sample(pp, src, ref, ref_lut, fold))
            finally:
                if src is not pred:
                    src.close()
        per_file[str(pp)] = {"reference": str(rp), **scores(cm, fold.names)}
        total = cm if total is None else total + cm
        names_out = fold.names
    assert total is not None
    return Evaluation(
        classes=names_out,
        confusion={"prediction": total},
        source=f"{len(pairs)} mask raster(s)",
        samples=samples,
        details={"files": per_file},
    )


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


# --------------------------------------------------------------------------------------------
# Reports
# --------------------------------------------------------------------------------------------


def _fmt(v: float | None, pct: bool = True) -> str:
    if v is None:
        return "-"
    return f"{100 * v:.1f}" if pct else f"{v:.4f}"


def write_report(
    ev: Evaluation, out: str | os.PathLike[str], overwrite: bool = False
) -> dict[str, Any]:
    """Write ``report.json``, ``report.md``, ``confusion.png`` and ``samples.png`` into ``out``.

    ``report.json`` lists the files written (``written_files``): ``--overwrite`` later replaces
    those and refuses a folder holding anything else."""
    results = {name: scores(cm, ev.classes) for name, cm in ev.confusion.items()}
    files = ["report.json", "report.md", "confusion.png"] + (["samples.png"] if ev.samples else [])
    report = {
        "cloudcps_version": __version__,
        "source": ev.source,
        "classes": list(ev.classes),
        "results": results,
        **ev.details,
        "written_files": files,
    }
    out_path = Path(out)
    remove_stale_temps([out_path])  # what a SIGKILL of an earlier run into --out left
    with writing(out_path), atomic_dir(out_path, overwrite) as tmp:
        (tmp / "report.json").write_text(json.dumps(report, indent=2) + "\n")
        (tmp / "report.md").write_text(_markdown(ev, results))
        _plot_confusion(ev, tmp / "confusion.png")
        if ev.samples:
            _plot_samples(ev, tmp / "samples.png")
        if overwrite and out_path.is_dir() and any(out_path.iterdir()):
            check_owned(out_path, "report")  # again: a file may have been added meanwhile
    return report


def _markdown(ev: Evaluation, results: dict[str, dict[str, Any]]) -> str:
    names = list(results)
    lines = [f"# Evaluation: {ev.source}", "", "## Summary (%)", ""]
    lines.append("| | " + " | ".join(names) + " |")
    lines.append("|---" * (len(names) + 1) + "|")
    for key, label in (
        ("miou", "mIoU"),
        ("mean_f1", "mean F1"),
        ("pixel_accuracy", "pixel accuracy"),
    ):
        lines.append(f"| {label} | " + " | ".join(_fmt(results[n][key]) for n in names) + " |")
    for metric, title in (
        ("iou", "IoU"),
        ("f1", "F1"),
        ("precision", "Precision"),
        ("recall", "Recall"),
    ):
        lines += ["", f"## Per-class {title} (%)", ""]
        lines.append("| class | " + " | ".join(names) + " | reference pixels |")
        lines.append("|---" * (len(names) + 2) + "|")
        for c, cname in enumerate(ev.classes):
            ref_px = results[names[0]]["reference_pixels"][c]
            cells = " | ".join(_fmt(results[n][metric][c]) for n in names)
            lines.append(f"| {cname} | {cells} | {ref_px} |")
    for n in names:
        lines += ["", f"## Confusion matrix: {n} (rows reference, columns prediction; pixels)", ""]
        lines.append("| | " + " | ".join(ev.classes) + " |")
        lines.append("|---" * (len(ev.classes) + 1) + "|")
        for c, row in enumerate(results[n]["confusion"]):
            lines.append(f"| {ev.classes[c]} | " + " | ".join(str(v) for v in row) + " |")
    return "\n".join(lines) + "\n"


def _plot_confusion(ev: Evaluation, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(ev.confusion)
    k = len(ev.classes)
    fig, axes = plt.subplots(1, n, figsize=(2.2 + 1.1 * k * n, 1.6 + 1.0 * k), squeeze=False)
    for ax, (name, cm) in zip(axes[0], ev.confusion.items(), strict=True):
        rows = cm.sum(1, keepdims=True)
        norm = np.divide(cm, rows, out=np.zeros(cm.shape, float), where=rows > 0)
        ax.imshow(norm, vmin=0, vmax=1, cmap="Blues")
        for i in range(k):
            for j in range(k):
                ax.text(
                    j,
                    i,
                    f"{norm[i, j]:.2f}",
                    ha="center",
                    va="center",
                    color="white" if norm[i, j] > 0.6 else "black",
                    fontsize=8,
                )
        ax.set_xticks(range(k), ev.classes, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(k), ev.classes, fontsize=8)
        ax.set_xlabel("prediction")
        ax.set_ylabel("reference")
        ax.set_title(f"{name} (row-normalised)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def colourise(labels: np.ndarray, k: int) -> np.ndarray:
    """RGB picture of class ids; ignore/nodata in black."""
    pal = np.zeros((256, 3), np.uint8)
    for i, c in enumerate(class_colours(k)):
        pal[i] = c[:3]
    return pal[labels]


def _plot_samples(ev: Evaluation, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    k = len(ev.classes)
    models = list(ev.samples[0]["predictions"])
    cols = 2 + len(models)
    fig, axes = plt.subplots(
        len(ev.samples), cols, figsize=(2.6 * cols, 2.6 * len(ev.samples) + 0.6), squeeze=False
    )
    for row, s in zip(axes, ev.samples, strict=True):
        panels = [("image", s["image"]), ("reference", colourise(s["reference"], k))]
        panels += [(m, colourise(s["predictions"][m], k)) for m in models]
        for ax, (title, img) in zip(row, panels, strict=True):
            if img is None:
                ax.text(0.5, 0.5, "image n/a", ha="center", va="center")
            else:
                ax.imshow(img, interpolation="nearest")
            ax.set_title(f"{title}" if title != "image" else s["title"], fontsize=8)
            ax.axis("off")
    handles = [
        Patch(facecolor=(c[0] / 255, c[1] / 255, c[2] / 255), edgecolor="0.3", label=n)
        for n, c in zip(ev.classes, class_colours(k), strict=True)
    ]
    handles.append(Patch(facecolor="black", edgecolor="0.3", label="ignore / nodata"))
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 6), fontsize=8)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(path, dpi=100)
    plt.close(fig)
