"""The real validation sets of ../shared/data and the floors every accuracy table carries.

Sets (whole files, through the same sliding window as ``cloudcps predict``):
- ``l8``: L8 Biome val, 8 Landsat 8 patches, 4 classes (also scored as 3: thick+thin = cloud),
- ``ocn``: On Cloud N val, 5 Sentinel-2 L2A chips, cloud / not cloud,
- ``scr``: CloudSEN12 scribbles, 5 Sentinel-2 L1C images, 4 classes, labelled pixels only
  (CC-BY-NC: evaluation only, never training).

Floors: the brightness rule ("cloud where mean(R, G, B) reflectance > t", ``t`` fitted on the
training labels, never on val; shadow never) and ukis-csmask (4 bands; not on the 3-band scribble
set).
"""

from __future__ import annotations

import contextlib
import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
CLASSES = ("clear", "thick cloud", "thin cloud", "cloud shadow")
L8_MAP = {128: 0, 255: 1, 192: 2, 64: 3}
SCR_MAP = {0: 0, 1: 1, 2: 1, 3: 2, 4: 2, 5: 3, 6: 3}
FOLD3 = np.array([0, 1, 1, 2] + [255] * 252, np.uint8)  # thick+thin -> cloud, shadow kept
FOLD2 = np.array([0, 1, 1, 0] + [255] * 252, np.uint8)  # thick+thin -> cloud, shadow -> clear
SET_NAMES = {
    "l8-4": ("L8 Biome val, 4 classes", CLASSES),
    "l8-3": ("L8 Biome val, 3 classes (thick+thin = cloud)", ("clear", "cloud", "shadow")),
    "ocn-2": ("On Cloud N val (5 chips), binary (shadow = not cloud)", ("not cloud", "cloud")),
    "scr-4": ("CloudSEN12 scribbles (5 images, labelled pixels), 4 classes", CLASSES),
    "scr-3": ("CloudSEN12 scribbles, 3 classes", ("clear", "cloud", "shadow")),
}

# a predictor maps an image path to (H, W) uint8 codes; ``kind`` says which codes
Predict = Callable[[Path], np.ndarray]


def _lut(mapping: dict[int, int]) -> np.ndarray:
    lut = np.full(256, 255, np.uint8)
    for k, v in mapping.items():
        lut[k] = v
    return lut


def val_sets() -> dict[str, list[tuple[Path, Path]]]:
    out = {}
    for name, folder, images, labels in (
        ("l8", SHARED / "l8biome" / "val", "images", "masks"),
        ("ocn", SHARED / "oncloudn", "images", "labels"),
        ("scr", SHARED / "cloudsen12_scribble", "images", "labels"),
    ):
        out[name] = [(p, folder / labels / p.name) for p in sorted((folder / images).glob("*.tif"))]
    return out


@functools.cache
def references() -> dict[str, list[np.ndarray]]:
    import rasterio

    luts = {"l8": _lut(L8_MAP), "scr": _lut(SCR_MAP)}
    refs: dict[str, list[np.ndarray]] = {}
    for name, pairs in val_sets().items():
        refs[name] = []
        for _, ref in pairs:
            with rasterio.open(ref) as r:
                a = r.read(1)
            refs[name].append(luts[name][a] if name in luts else a.astype(np.uint8))
    return refs


def confusions(preds: dict[str, list[np.ndarray]], kind: str) -> dict[str, np.ndarray]:
    """Confusion matrices of predictions in ``kind`` codes: ``4`` (our classes), ``3`` (clear /
    cloud / shadow, ukis-csmask's) or ``2`` (clear / cloud, the rule's)."""
    from cloudcps.metrics import confusion_matrix

    refs = references()
    to3 = {"4": FOLD3, "3": np.arange(256, dtype=np.uint8), "2": np.arange(256, dtype=np.uint8)}
    to2 = {"4": FOLD2, "3": np.array([0, 1, 0] + [255] * 253, np.uint8)}
    to2["2"] = to3["2"]

    def total(p_lut: np.ndarray, r_lut: np.ndarray, set_: str, k: int) -> np.ndarray:
        cm = np.zeros((k, k), np.int64)
        for p, r in zip(preds[set_], refs[set_], strict=True):
            cm += confusion_matrix(p_lut[p], r_lut[r], k)
        return cm

    ident = np.arange(256, dtype=np.uint8)
    cms: dict[str, np.ndarray] = {}
    four = kind in ("4", "2")  # the rule's codes 0/1 are our clear / thick cloud
    if "l8" in preds:
        if four:
            cms["l8-4"] = total(ident, ident, "l8", 4)
        cms["l8-3"] = total(to3[kind], FOLD3, "l8", 3)
    if "ocn" in preds:
        cms["ocn-2"] = total(to2[kind], ident, "ocn", 2)
    if "scr" in preds:
        if four:
            cms["scr-4"] = total(ident, ident, "scr", 4)
        cms["scr-3"] = total(to3[kind], FOLD3, "scr", 3)
    return cms


def scores(cms: dict[str, np.ndarray]) -> dict[str, Any]:
    from cloudcps.metrics import scores as _scores

    return {k: _scores(cm, list(SET_NAMES[k][1])) for k, cm in cms.items()}


def predict_sets(fn: Predict, sets: tuple[str, ...] = ("l8", "ocn", "scr")) -> dict[str, Any]:
    return {
        name: [fn(img) for img, _ in pairs] for name, pairs in val_sets().items() if name in sets
    }


# --------------------------------------------------------------------------------------------
# Our models
# --------------------------------------------------------------------------------------------


def model_predictor(
    model: str | Path, nets: str = "1", tta: bool = False, tile_size: int | None = None
) -> Predict:
    """Whole-file predictions through the same code as ``cloudcps predict`` (at the model's own
    window, or at ``tile_size`` px: 1024 is the window the shipped model predicts at)."""
    import rasterio
    import torch

    from cloudcps.models import load_for_inference
    from cloudcps.predict import ArraySink, Predictor, RasterSource

    loaded = load_for_inference(model, nets=nets)
    pred = Predictor(loaded, torch.device("cpu"), tile_size=tile_size, tta=tta)

    def run(path: Path) -> np.ndarray:
        with rasterio.open(path) as src:
            sink = ArraySink(src.height, src.width, loaded.contract.num_classes, keep_probs=False)
            pred.run(RasterSource(src, [1, 2, 3]), sink)
        return sink.classes

    return run


def score_model(
    model: str | Path, nets: str = "1", tta: bool = False, tile_size: int | None = None
) -> dict[str, Any]:
    return scores(confusions(predict_sets(model_predictor(model, nets, tta, tile_size)), "4"))


# --------------------------------------------------------------------------------------------
# Clear ground and the prediction window (issue 22): what the val averages hide
# --------------------------------------------------------------------------------------------

DESERT = SHARED / "scenes" / "s2_l2a_29RKH_desert_rgbn.tif"
BETSIBOKA = SHARED / "scenes" / "s2_l1c_cloudy_betsiboka_rgbn.tif"
# training may use the desert's west half as known-clear ground (bench/starter.py protocol v4);
# its east half outside the cloudy corner stays held out
DESERT_TRAIN_COLS = 0.5
# the cloud-free Sentinel-2 L1C scene: hazy, bluish sea, marsh, beaches and fields; training may
# use its north half as known-clear ground (protocol v6); its south half stays held out
S2_CLEAR = SHARED / "scenes" / "s2_l1c_nocloud_rgbn.tif"
S2_CLEAR_TRAIN_ROWS = 0.5


def desert_regions(h: int, w: int) -> dict[str, np.ndarray]:
    """The desert tile outside its cloudy corner (top 30 % x right 40 %), and the part of that
    east of the columns training may see."""
    outside = np.ones((h, w), bool)
    outside[: int(0.3 * h), int(0.6 * w) :] = False
    east = outside.copy()
    east[:, : int(DESERT_TRAIN_COLS * w)] = False
    return {"outside": outside, "east": east}


FAR_PX = 10  # 300 m at L8 Biome's 30 m: beyond the cloud edges a label may draw either way


def far_from_cloud(ref: np.ndarray, px: int = FAR_PX) -> np.ndarray:
    """Pixels more than ``px`` pixels from any pixel labelled cloud (thick or thin): the clear
    ground where a false cloud is no matter of where a cloud's edge or halo is drawn."""
    from scipy import ndimage

    cloud = np.isin(ref, (1, 2))
    if not cloud.any():
        return np.ones(ref.shape, bool)
    return np.asarray(ndimage.distance_transform_edt(~cloud) > px)


def patch_false_cloud(
    pred: np.ndarray, ref: np.ndarray, cloud_codes: tuple[int, ...]
) -> dict[str, Any]:
    """% of a patch's clear pixels (``ref`` 0) that ``pred`` calls cloud, over all of them and
    over those more than ``FAR_PX`` pixels from labelled cloud; None where there are none."""
    clear = ref == 0
    called = np.isin(pred, cloud_codes)
    far = clear & far_from_cloud(ref)
    return {
        "clear_pixels": int(clear.sum()),
        "false_cloud": round(100 * float(called[clear].mean()), 1) if clear.any() else None,
        "far_pixels": int(far.sum()),
        "false_cloud_far": round(100 * float(called[far].mean()), 1) if far.any() else None,
    }


def l8_classes(mask: Path) -> np.ndarray:
    """An L8 Biome mask file as class ids (255: not labelled)."""
    import rasterio

    with rasterio.open(mask) as m:
        return _lut(L8_MAP)[m.read(1)]


def clear_ground(fn: Predict, kind: str = "4") -> dict[str, Any]:
    """False cloud on clear ground: the desert tile's share of valid pixels called cloud
    (outside its corner, and its held-out east part), the same for the cloud-free Sentinel-2
    L1C scene (all of it, and its held-out south half), and per L8 Biome val patch the share of
    pixels labelled clear that are called cloud (thick or thin; shadow is not cloud), over all
    of them and over those more than ``FAR_PX`` pixels from labelled cloud (``false_cloud_far``):
    most false cloud on these partly cloudy patches is next to a labelled cloud."""
    import rasterio

    cloud_codes = {"4": (1, 2), "3": (1,), "2": (1,)}[kind]
    out: dict[str, Any] = {}
    with rasterio.open(DESERT) as src:
        valid = np.all(src.read([1, 2, 3]) > 0, axis=0)
    pred = fn(DESERT)
    cloud = np.isin(pred, cloud_codes)
    for name, region in desert_regions(*pred.shape).items():
        m = region & valid
        out[f"desert {name}"] = round(100 * float(cloud[m].mean()), 2)
    with rasterio.open(S2_CLEAR) as src:
        valid = np.all(src.read([1, 2, 3]) > 0, axis=0)
    cloud = np.isin(fn(S2_CLEAR), cloud_codes)
    south = np.zeros_like(valid)
    south[int(S2_CLEAR_TRAIN_ROWS * valid.shape[0]) :] = True
    out["s2 clear"] = round(100 * float(cloud[valid].mean()), 2)
    out["s2 clear south"] = round(100 * float(cloud[valid & south].mean()), 2)
    patches: dict[str, Any] = {}
    for (img, _), ref in zip(val_sets()["l8"], references()["l8"], strict=True):
        patches[img.stem] = patch_false_cloud(fn(img), ref, cloud_codes)
    out["l8 val clear patches"] = patches
    return out


def window_checks(model: str | Path, nets: str = "1") -> dict[str, Any]:
    """The mask's dependence on the prediction window: On Cloud N val cloud IoU at 256 and 1024
    px windows, and the share of the Betsiboka scene's pixels on which the two masks agree."""
    import rasterio
    import torch

    from cloudcps.models import load_for_inference
    from cloudcps.predict import ArraySink, Predictor, RasterSource

    loaded = load_for_inference(model, nets=nets)
    out: dict[str, Any] = {}
    masks = {}
    for tile in (256, 1024):
        pred = Predictor(loaded, torch.device("cpu"), tile_size=tile)

        def run(path: Path, pred: Predictor = pred) -> np.ndarray:
            with rasterio.open(path) as src:
                sink = ArraySink(src.height, src.width, loaded.contract.num_classes, False)
                pred.run(RasterSource(src, [1, 2, 3]), sink)
            return sink.classes

        s = scores(confusions(predict_sets(run, ("ocn",)), "4"))
        out[f"ocn cloud @{tile}"] = round(100 * s["ocn-2"]["iou"][1], 1)
        masks[tile] = run(BETSIBOKA)
    out["betsiboka agree 256/1024"] = round(100 * float((masks[256] == masks[1024]).mean()), 1)
    return out


# --------------------------------------------------------------------------------------------
# The brightness rule
# --------------------------------------------------------------------------------------------


def _brightness(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Mean of R, G, B (reflectance x 10000) and the valid mask (any band non-zero)."""
    import rasterio

    with rasterio.open(path) as src:
        rgb = src.read([1, 2, 3]).astype(np.float32)
    return rgb.mean(0), np.any(rgb > 0, axis=0)


def training_pairs() -> list[tuple[Path, Path, dict[int, int]]]:
    """Every real training label of the starter (L8 Biome train, On Cloud N train) as cloud (1)
    / not cloud (0)."""
    l8 = SHARED / "l8biome" / "train"
    ocn = SHARED / "oncloudn_train"
    l8_bin = {128: 0, 64: 0, 192: 1, 255: 1}
    pairs = [(p, l8 / "masks" / p.name, l8_bin) for p in sorted((l8 / "images").glob("*.tif"))]
    pairs += [
        (p, ocn / "labels" / p.name, {0: 0, 1: 1}) for p in sorted((ocn / "images").glob("*.tif"))
    ]
    return pairs


def fit_rule_threshold(cache: Path | None = None) -> float:
    """The threshold on mean(R, G, B) with the best pixel accuracy (cloud / not cloud) over all
    training pixels (cloud IoU alone would favour marking everything cloud)."""
    import rasterio

    if cache is not None and cache.exists():
        return float(json.loads(cache.read_text())["threshold"])
    edges = np.arange(0, 12001, 50, dtype=np.float64)
    cloud = np.zeros(len(edges) + 1, np.int64)
    other = np.zeros(len(edges) + 1, np.int64)
    for img, lab, mapping in training_pairs():
        b, valid = _brightness(img)
        with rasterio.open(lab) as r:
            a = r.read(1)
        binary = _lut(mapping)[a]
        keep = valid & (binary != 255)
        idx = np.searchsorted(edges, b[keep], side="right")
        cloud += np.bincount(idx[binary[keep] == 1], minlength=len(edges) + 1)
        other += np.bincount(idx[binary[keep] == 0], minlength=len(edges) + 1)
    # predicted cloud = brightness > edges[i]  <=>  idx > i
    tp = cloud[::-1].cumsum()[::-1]  # tp[i] = cloud pixels with idx >= i
    fp = other[::-1].cumsum()[::-1]
    n = cloud.sum() + other.sum()
    best, best_t = -1.0, 0.0
    for i, t in enumerate(edges):
        correct = tp[i + 1] + other.sum() - fp[i + 1]
        if correct / n > best:
            best, best_t = float(correct / n), float(t)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps({"threshold": best_t, "train_accuracy": best}))
    return best_t


def rule_predictor(threshold: float) -> Predict:
    def run(path: Path) -> np.ndarray:
        b, valid = _brightness(path)
        out = (b > threshold).astype(np.uint8)
        out[~valid] = 255
        return out

    return run


def score_rule(threshold: float) -> dict[str, Any]:
    return scores(confusions(predict_sets(rule_predictor(threshold)), "2"))


def score_ukis() -> dict[str, Any]:
    import rasterio
    from peers import run_ukis

    def run(path: Path) -> np.ndarray:
        with rasterio.open(path) as s:
            level = "l2a" if "oncloudn" in str(path) else "l1c"
            return run_ukis(s.read(), product_level=level)

    return scores(confusions(predict_sets(run, ("l8", "ocn")), "3"))


def floors(work: Path) -> dict[str, Any]:
    """The rule and ukis-csmask, scored once and cached in ``work/floors.json``."""
    path = work / "floors.json"
    if path.exists():
        cached: dict[str, Any] = json.loads(path.read_text())
        return cached
    t = fit_rule_threshold()
    out = {
        "rule": {"threshold": t, "scores": score_rule(t)},
        # the rule: mean R, G, B reflectance above 0.2
        "rule-2000": {"threshold": 2000.0, "scores": score_rule(2000.0)},
    }
    with contextlib.suppress(ImportError):  # pip install "ukis-csmask[cpu]" for the peer's rows
        out["ukis-csmask"] = {"scores": score_ukis()}
    work.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1))
    return out


def headline(s: dict[str, Any]) -> dict[str, float | None]:
    """The numbers the issue's goals are stated in."""

    def g(set_: str, what: str, c: int | None = None) -> float | None:
        if set_ not in s:
            return None
        v = s[set_]["miou"] if c is None else s[set_]["iou"][c]
        return None if v is None else round(100 * v, 1)

    return {
        "l8-4 mIoU": g("l8-4", "miou"),
        "l8-3 mIoU": g("l8-3", "miou"),
        "l8 cloud": g("l8-3", "iou", 1),
        "l8 shadow": g("l8-3", "iou", 2),
        "ocn cloud": g("ocn-2", "iou", 1),
        "scr-4 mIoU": g("scr-4", "miou"),
        "scr thin": g("scr-4", "iou", 2),
        "scr shadow": g("scr-4", "iou", 3),
        "scr-3 mIoU": g("scr-3", "miou"),
    }
