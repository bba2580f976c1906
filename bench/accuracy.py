"""Accuracy benchmarks: supervised vs CPS variants on real and generated data, and a peer.

    python bench/accuracy.py l8 [--methods ...] [--seeds 0,1,2] [--iters 200]
    python bench/accuracy.py synthetic [--methods ...] [--seeds 0,1,2] [--iters 300]
    python bench/accuracy.py peer                  # ukis-csmask on the L8 Biome val patches
    python bench/accuracy.py table l8|synthetic [--iters N]  # mean and spread over seeds

Every method trains with the same labelled tiles, budget, encoder (DeepLabV3+ with the offline
ImageNet EfficientNet-Lite0) and seeds; seed s draws the labelled subset (the same for every
method) and seeds the training; results (per-class IoU of the final model on the val
split, single network and, for CPS, the two-network ensemble) are cached as JSON in --work so an
interrupted benchmark resumes where it stopped.

L8 Biome: the 23 train patches tiled at 256 with 1/4 labelled (6 patches, the same for every
method), the other 17 plus the two real scenes of ../shared/data/scenes as unlabelled
(the Landsat 8 scene is L1 DN: it is converted to TOA reflectance x 10000 with the standard
OLI rescaling 2e-5 * DN - 0.1, without the sun-elevation term); val = the 8 val patches.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
L8_MAP = {128: 0, 255: 1, 192: 2, 64: 3}
CLASSES = ("clear", "thick cloud", "thin cloud", "cloud shadow")

METHODS: dict[str, dict[str, Any]] = {
    "supervised": {"mode": "supervised"},
    "cps": {"mode": "cps", "pseudo_labels": "plain", "cutmix": False},
    "cps+cutmix": {"mode": "cps", "pseudo_labels": "plain", "cutmix": True},
    "cps+threshold": {"mode": "cps", "pseudo_labels": "threshold", "cutmix": False},
    "cps+adaptive": {"mode": "cps", "pseudo_labels": "adaptive", "cutmix": False},
    "cps+adaptive+cutmix": {"mode": "cps", "pseudo_labels": "adaptive", "cutmix": True},
    "cps+adaptive λ=0.5": {"mode": "cps", "pseudo_labels": "adaptive", "cps_weight": 0.5},
    "cps+adaptive+rampup": {"mode": "cps", "pseudo_labels": "adaptive", "cps_rampup": 0.5},
    "default": {},  # whatever `cloudcps train` does without options (= cps+adaptive)
}

SETTINGS: dict[str, dict[str, Any]] = {
    "l8": {"iters": 200, "crop": 160, "batch_size": 4, "lr": 0.01},
    "synthetic": {"iters": 300, "crop": 128, "batch_size": 4, "lr": 0.01},
}


def _l8_toa(src: Path, dst: Path) -> Path:
    """Landsat 8 L1 DN -> TOA reflectance x 10000 (2e-5 * DN - 0.1; no sun-elevation term)."""
    import rasterio

    if dst.exists():
        return dst
    with rasterio.open(src) as s:
        dn = s.read().astype(np.float64)
        profile = s.profile
        valid = np.all(s.read_masks() > 0, axis=0)
    refl = np.clip((2e-5 * dn - 0.1) * 10000, 1, 65535)
    refl[:, ~valid] = 0
    profile.update(dtype="uint16", nodata=0)
    with rasterio.open(dst, "w", **profile) as d:
        d.write(refl.astype(np.uint16))
    return dst


def prepare_l8(work: Path, seed: int, stretch: str = "auto", gamma: float = 1.0) -> Path:
    """Tiles of L8 Biome; the labelled quarter of the train patches is drawn with ``seed``
    (the same patches whatever the stretch)."""
    from cloudcps.contract import parse_stretch
    from cloudcps.tiling import TileOptions, tile_scenes

    tag = "" if (stretch, gamma) == ("auto", 1.0) else f"-{stretch.replace(':', '_')}-g{gamma:g}"
    tiles = work / f"l8-tiles-s{seed}{tag}"
    if (tiles / "manifest.json").exists():
        return tiles
    bio = SHARED / "l8biome"
    if not bio.exists():
        raise SystemExit(f"{bio} is absent: the L8 Biome benchmark needs ../shared/data")
    train = sorted((bio / "train" / "images").glob("*.tif"))
    val = sorted((bio / "val" / "images").glob("*.tif"))
    work.mkdir(parents=True, exist_ok=True)
    extra = [
        SHARED / "scenes" / "s2_l1c_nocloud_rgbn.tif",
        _l8_toa(SHARED / "scenes" / "l8_cloudy_rgbn.tif", work / "l8_cloudy_toa.tif"),
    ]
    opts = TileOptions(
        tile_size=256,
        label_dirs=(bio / "train" / "masks", bio / "val" / "masks"),
        label_map=L8_MAP,
        stretch=parse_stretch(stretch),
        gamma=gamma,
        labeled_fraction=0.25,
        val=tuple(str(v) for v in val),
        seed=seed,
        image_format="png",
    )
    tile_scenes(train + val + extra, tiles, opts)
    return tiles


def prepare_synthetic(work: Path, seed: int) -> Path:
    """Generated scenes (thin cloud rare and hard); the labelled 1/16 is drawn with ``seed``."""
    from cloudcps.synthetic import make_dataset
    from cloudcps.tiling import TileOptions, tile_scenes

    tiles = work / f"syn-tiles-s{seed}"
    if (tiles / "manifest.json").exists():
        return tiles
    pairs = make_dataset(
        work / "syn-scenes",
        n_scenes=28,
        size=512,
        seed=100,
        thin_cover_scale=0.5,
        nodata_border_every=5,
    )
    opts = TileOptions(
        tile_size=128,
        label_dirs=(work / "syn-scenes" / "labels",),
        labeled_fraction=1 / 16,
        val=tuple(p.name for p, _ in pairs[-4:]),
        seed=seed,
        image_format="png",
    )
    tile_scenes([p for p, _ in pairs], tiles, opts)
    return tiles


def run_one(
    bench: str, tiles: Path, method: str, seed: int, work: Path, iters: int
) -> dict[str, Any]:
    import torch

    from cloudcps.train import Trainer
    from cloudcps.train.config import TrainConfig, config_from_dict

    key = f"{bench}-{method}-s{seed}-i{iters}"
    cache = work / "results" / f"{key}.json"
    if cache.exists():
        return dict(json.loads(cache.read_text()))
    settings = {**SETTINGS[bench], "iters": iters}
    base = TrainConfig(
        data=str(tiles),
        out=str(work / "runs" / key),
        seed=seed,
        device="cpu",
        workers=1,
        eval_every=iters,
        log_every=20,
        **settings,
    )
    cfg = config_from_dict(METHODS[method], base)
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    trainer = Trainer(cfg, overwrite=True)
    res = trainer.fit()
    assert res.last_val is not None
    out = {
        "bench": bench,
        "method": method,
        "seed": seed,
        "iters": iters,
        "config": cfg.to_dict(),
        "seconds": time.perf_counter() - t0,
        "net1": res.last_val["net1"],
        "selected": res.last_val[str(res.last_val["selected"])],
        "selected_name": res.last_val["selected"],
        "last_train_row": [r for r in res.history if "loss" in r][-1],
    }
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(out, indent=1))
    return out


def _mean_sd(values: list[float | None]) -> str:
    v = [x for x in values if x is not None]
    if not v:
        return "-"
    m = 100 * statistics.mean(v)
    sd = 100 * statistics.stdev(v) if len(v) > 1 else 0.0
    return f"{m:.1f} ± {sd:.1f}"


def table(bench: str, work: Path, iters: int | None = None) -> str:
    rows: dict[str, list[dict[str, Any]]] = {}
    for p in sorted((work / "results").glob(f"{bench}-*.json")):
        r = json.loads(p.read_text())
        if iters is not None and r["iters"] != iters:
            continue
        rows.setdefault(r["method"], []).append(r)
    lines = [
        "| method | model | seeds | " + " | ".join(CLASSES) + " | mIoU | min/s per run |",
        "|---|---|---|" + "---|" * (len(CLASSES) + 2),
    ]
    for method in [m for m in METHODS if m in rows]:
        rs = rows[method]
        for model in ("net1", "selected"):
            if model == "selected" and rs[0]["selected_name"] == "net1":
                continue
            name = "single net" if model == "net1" else "ensemble of 2"
            cells = [_mean_sd([r[model]["iou"][c] for r in rs]) for c in range(len(CLASSES))]
            cells.append(_mean_sd([r[model]["miou"] for r in rs]))
            mins = statistics.mean(r["seconds"] for r in rs) / 60
            lines.append(
                f"| {method} | {name} | {len(rs)} | " + " | ".join(cells) + f" | {mins:.1f} |"
            )
    return "\n".join(lines)


def peer(work: Path) -> str:
    """ukis-csmask vs our models on the L8 Biome val patches, 3 classes (clear, cloud, shadow)."""
    import rasterio

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from peers import run_ukis

    from cloudcps.metrics import confusion_matrix, scores
    from cloudcps.models import load_for_inference
    from cloudcps.train import pad_to_multiple
    from cloudcps.train.data import SegmentationDataset, TileFolder

    bio = SHARED / "l8biome" / "val"
    fold = np.array([0, 1, 1, 2] + [255] * 252, np.uint8)  # ours: thick+thin -> cloud
    lut = np.full(256, 255, np.uint8)
    for k, v in L8_MAP.items():
        lut[k] = fold[v]
    cm_ukis = np.zeros((3, 3), np.int64)
    t0 = time.perf_counter()
    for img in sorted((bio / "images").glob("*.tif")):
        with rasterio.open(img) as s, rasterio.open(bio / "masks" / img.name) as m:
            ref = lut[m.read(1)]
            pred = run_ukis(s.read(), product_level="l1c")
        cm_ukis += confusion_matrix(pred, ref, 3)
    ukis_s = time.perf_counter() - t0
    names = ["clear", "cloud (thick+thin)", "cloud shadow"]
    results = {"ukis-csmask (l1c, 4-band)": [scores(cm_ukis, names)]}
    import torch

    for method in ("supervised", "default"):
        runs = sorted((work / "runs").glob(f"l8-{method}-s*-i{SETTINGS['l8']['iters']}"))
        per_seed = []
        for run in runs:
            seed = run.name.split("-s")[-1].split("-")[0]
            folder = TileFolder(work / f"l8-tiles-s{seed}")
            items = folder.items(folder.split("val"))
            ds = SegmentationDataset(items, None, True, folder.contract.mean, folder.contract.std)
            loaded = load_for_inference(run / "latest.pt")
            cm = np.zeros((3, 3), np.int64)
            with torch.no_grad():
                for i in range(len(ds)):
                    s = ds[i]
                    x, h, w = pad_to_multiple(s["image"][None])
                    pred = loaded.model(x)[..., :h, :w].argmax(1)[0].numpy().astype(np.uint8)
                    ref = np.where(s["valid"].numpy(), s["mask"].numpy(), 255).astype(np.uint8)
                    cm += confusion_matrix(fold[pred], fold[ref], 3)
            per_seed.append(scores(cm, names))
        if per_seed:
            label = "cloudcps supervised" if method == "supervised" else "cloudcps default (CPS)"
            results[f"{label}, {len(per_seed)} seeds"] = per_seed
    lines = [f"| model | {' | '.join(names)} | mIoU |", "|---|---|---|---|---|"]
    for name, per in results.items():
        cells = [_mean_sd([p["iou"][c] for p in per]) for c in range(3)]
        cells.append(_mean_sd([p["miou"] for p in per]))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append(f"\nukis-csmask: {ukis_s:.1f} s for the 8 patches (session start-up included)")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=["l8", "synthetic", "peer", "table"])
    ap.add_argument("bench", nargs="?", default="l8")
    ap.add_argument("--methods", default="supervised,default")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--iters", type=int)
    ap.add_argument("--work", type=Path, default=ROOT / "bench" / "out")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(2)
    if args.what == "table":
        print(table(args.bench, args.work, args.iters or SETTINGS[args.bench]["iters"]))
        return
    if args.what == "peer":
        print(peer(args.work))
        return
    iters = args.iters or SETTINGS[args.what]["iters"]
    for seed in [int(s) for s in args.seeds.split(",")]:
        prepare = prepare_l8 if args.what == "l8" else prepare_synthetic
        tiles = prepare(args.work, seed)
        for method in args.methods.split(","):
            r = run_one(args.what, tiles, method, seed, args.work, iters)
            ious = " ".join(f"{v:.3f}" if v is not None else "-" for v in r["selected"]["iou"])
            print(
                f"{method} seed {seed}: mIoU {r['selected']['miou']:.4f} [{ious}] "
                f"({r['seconds'] / 60:.1f} min)",
                flush=True,
            )
    print(table(args.what, args.work, iters))


if __name__ == "__main__":
    main()
