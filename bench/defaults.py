"""Measurements behind `cloudcps predict`'s defaults: one network or both, and the window overlap.

    python bench/defaults.py [--ckpt CKPT ...] [--out bench/out/defaults.json]

1. Ensemble or single network: every 2-network checkpoint (default: the CPS runs of
   ``bench/starter.py``, see docs/model.md) scored with network 1, network 2 and the mean of both
   on the real validation sets (L8 Biome val: 4-class and 3-class mIoU; On Cloud N val: cloud
   IoU), through the same engine and backend as ``cloudcps predict``, with the time per scene.
2. Overlap: the shipped model on the two real scenes (Sentinel-2 L1C 1933x1947, Landsat 8 TOA
   627x603) with 1024 px windows (512 px for the small Landsat scene) and overlaps 0, 64, 128
   and 256: the share of pixels whose class differs from one window over the whole scene (no
   seams at all), the windows computed and the time. And the same on the On Cloud N val chips
   (512 px) cut into 256 px windows, scored against their labels.
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
sys.path.insert(0, str(ROOT / "bench"))

from common import machine  # noqa: E402
from evalsets import confusions, references, scores, val_sets  # noqa: E402
from starter import SHARED, WORK  # noqa: E402


def _predict(model: Any, path: Path, tile: int | None = None, overlap: int | None = None) -> Any:
    import rasterio

    from cloudcps.predict import ArraySink, Predictor, RasterSource

    with rasterio.open(path) as src:
        pred = Predictor(model, tile_size=tile, overlap=overlap)
        sink = ArraySink(src.height, src.width, pred.k, keep_probs=False)
        pred.run(RasterSource(src, [1, 2, 3]), sink)
    return sink.classes


def ensemble(ckpts: list[Path]) -> dict[str, Any]:
    from cloudcps.predict.backends import load_model

    out: dict[str, Any] = {}
    sets = {k: v for k, v in val_sets().items() if k != "scr"}
    n_files = sum(len(v) for v in sets.values())
    for ckpt in ckpts:
        for nets in ("1", "2", "both"):
            model = load_model(ckpt, nets=nets, backend="onnx")
            t0 = time.perf_counter()
            preds = {k: [_predict(model, img) for img, _ in pairs] for k, pairs in sets.items()}
            secs = (time.perf_counter() - t0) / n_files
            sc = scores(confusions(preds, "4"))
            key = f"{ckpt.parent.name}:{nets}"
            out[key] = {
                "l8_4_miou": sc["l8-4"]["miou"],
                "l8_4_iou": sc["l8-4"]["iou"],
                "l8_3_miou": sc["l8-3"]["miou"],
                "ocn_cloud_iou": sc["ocn-2"]["iou"][1],
                "seconds_per_file": secs,
            }
            print(key, json.dumps(out[key]), flush=True)
    return out


def overlap() -> dict[str, Any]:
    from cloudcps.predict.backends import load_model

    model = load_model("default", backend="onnx")
    scenes = {
        "s2_l1c (1933x1947)": (SHARED / "scenes" / "s2_l1c_nocloud_rgbn.tif", 1024, 1952),
        "l8_toa (627x603)": (WORK / "l8_cloudy_toa.tif", 512, 640),
    }
    out: dict[str, Any] = {}
    for name, (path, tile, whole) in scenes.items():
        if not path.exists():
            print(f"skipping {name}: {path} is absent (run bench/starter.py prepare)")
            continue
        ref = _predict(model, path, tile=whole, overlap=0)
        valid = ref != 255
        for ov in (0, 64, 128, 256):
            t0 = time.perf_counter()
            cls = _predict(model, path, tile=tile, overlap=ov)
            secs = time.perf_counter() - t0
            diff = float(np.mean(cls[valid] != ref[valid]))
            out[f"{name}:{ov}"] = {"tile": tile, "differs": diff, "seconds": secs}
            print(name, ov, f"differs {100 * diff:.3f} %", f"{secs:.2f} s", flush=True)
    # On Cloud N val chips, 256 px windows, against the labels
    from cloudcps.metrics import confusion_matrix

    refs = references()["ocn"]
    fold = np.array([0, 1, 1, 0] + [255] * 252, np.uint8)
    for ov in (0, 32, 64, 128):
        cm = np.zeros((2, 2), np.int64)
        for (img, _), r in zip(val_sets()["ocn"], refs, strict=True):
            cm += confusion_matrix(fold[_predict(model, img, tile=256, overlap=ov)], r, 2)
        iou = cm[1, 1] / max(1, cm[1, 1] + cm[0, 1] + cm[1, 0])
        out[f"ocn-256:{ov}"] = {"tile": 256, "cloud_iou": float(iou)}
        print("ocn 256 px windows", ov, f"cloud IoU {100 * iou:.2f}", flush=True)
    return out


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}"


def table(res: dict[str, Any]) -> str:
    lines = [f"machine: {machine()}", ""]
    ens = res.get("ensemble", {})
    if ens:
        lines += [
            "| checkpoint | networks | L8 4-class mIoU | thick | thin | shadow | L8 3-class mIoU "
            "| OCN cloud IoU | s per file |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for key, r in ens.items():
            ck, nets = key.rsplit(":", 1)
            iou = r["l8_4_iou"]
            lines.append(
                f"| {ck} | {nets} | {_pct(r['l8_4_miou'])} | {_pct(iou[1])} | {_pct(iou[2])} | "
                f"{_pct(iou[3])} | {_pct(r['l8_3_miou'])} | {_pct(r['ocn_cloud_iou'])} | "
                f"{r['seconds_per_file']:.2f} |"
            )
        gains = []
        for key in ens:
            ck, nets = key.rsplit(":", 1)
            if nets == "both":
                best = max(ens[f"{ck}:1"]["l8_4_miou"], ens[f"{ck}:2"]["l8_4_miou"])
                gains.append(ens[key]["l8_4_miou"] - ens[f"{ck}:1"]["l8_4_miou"])
                lines.append(
                    f"\n{ck}: both - net 1 = {100 * gains[-1]:+.2f} mIoU (L8 4-class); "
                    f"both - best single = {100 * (ens[key]['l8_4_miou'] - best):+.2f}"
                )
        if gains:
            lines.append(f"\nmean gain of both over net 1: {100 * statistics.mean(gains):+.2f}")
    ov = res.get("overlap", {})
    if ov:
        lines += ["", "| scene | window | overlap | pixels differing from one window | s |"]
        lines.append("|---|---|---|---|---|")
        for key, r in ov.items():
            if "differs" in r:
                name, o = key.rsplit(":", 1)
                lines.append(
                    f"| {name} | {r['tile']} | {o} | {100 * r['differs']:.3f} % | "
                    f"{r['seconds']:.2f} |"
                )
        lines += ["", "| On Cloud N val, 256 px windows | overlap | cloud IoU |", "|---|---|---|"]
        for key, r in ov.items():
            if "cloud_iou" in r:
                lines.append(
                    f"| 5 chips of 512 px | {key.rsplit(':', 1)[1]} | {_pct(r['cloud_iou'])} |"
                )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ckpt", type=Path, action="append")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "defaults.json")
    ap.add_argument("--only", choices=["ensemble", "overlap"])
    args = ap.parse_args()
    if not SHARED.exists():
        raise SystemExit(f"{SHARED} is absent: these measurements need the real data")
    ckpts = args.ckpt or sorted((WORK / "runs").glob("cps-s*-i*/latest.pt"))
    res: dict[str, Any] = json.loads(args.out.read_text()) if args.out.exists() else {}
    if args.only in (None, "ensemble"):
        res["ensemble"] = ensemble(ckpts)
    if args.only in (None, "overlap"):
        res["overlap"] = overlap()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=1))
    print(table(res))


if __name__ == "__main__":
    main()
