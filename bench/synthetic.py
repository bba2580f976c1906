"""Calibrate the synthetic cloud layer on real L8 Biome labels, and draw example composites.

    python bench/synthetic.py calibrate     # opacity thresholds from real thin-cloud pixels
    python bench/synthetic.py examples      # docs/img/synthetic_examples.png

Calibration: in every L8 Biome train patch that has clear, thin and thick pixels, each
pixel's apparent opacity is ``a = (b - ground) / (cloud - ground)`` with ``b`` its mean R, G, B
reflectance, ``ground`` the median of the patch's clear pixels and ``cloud`` the 95th percentile
of its thick pixels. The thin/clear boundary is the opacity that best separates real clear from
real thin pixels, the thick/thin boundary the one that best separates thin from thick (largest
balanced accuracy), so a synthetic veil is labelled thin where real annotators said thin.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


def _best_split(lo: np.ndarray, hi: np.ndarray) -> tuple[float, float]:
    """The threshold t with the best balanced accuracy of (lo < t, hi >= t)."""
    grid = np.linspace(0.0, 1.0, 201)
    acc = [0.5 * ((lo < t).mean() + (hi >= t).mean()) for t in grid]
    i = int(np.argmax(acc))
    return float(grid[i]), float(acc[i])


def calibrate() -> dict[str, float]:
    import rasterio

    per_class: dict[int, list[np.ndarray]] = {128: [], 192: [], 255: []}
    patches = 0
    for split in ("train",):  # never the val patches the model is scored on
        for img in sorted((SHARED / "l8biome" / split / "images").glob("*.tif")):
            with rasterio.open(img) as s:
                b = s.read([1, 2, 3]).astype(np.float64).mean(0)
            with rasterio.open(img.parent.parent / "masks" / img.name) as m:
                lab = m.read(1)
            if not all((lab == c).sum() > 200 for c in (128, 192, 255)):
                continue
            patches += 1
            ground = np.median(b[lab == 128])
            cloud = np.percentile(b[lab == 255], 95)
            if cloud <= ground:
                continue
            a = np.clip((b - ground) / (cloud - ground), 0.0, 1.0)
            for c in per_class:
                per_class[c].append(a[lab == c])
    clear, thin, thick = (np.concatenate(per_class[c]) for c in (128, 192, 255))
    t_thin, acc_thin = _best_split(clear, thin)
    t_thick, acc_thick = _best_split(thin, thick)
    out = {
        "patches": patches,
        "thin_alpha": t_thin,
        "thin_vs_clear_balanced_accuracy": acc_thin,
        "thick_alpha": t_thick,
        "thick_vs_thin_balanced_accuracy": acc_thick,
        "thin_opacity_median": float(np.median(thin)),
        "thin_opacity_p10_p90": [float(np.percentile(thin, 10)), float(np.percentile(thin, 90))],
    }
    return out


def examples(dest: Path, tiles: Path) -> None:
    from PIL import Image

    from cloudcps.contract import Stretch
    from cloudcps.synthetic.clouds import SyntheticClouds

    manifest = json.loads((tiles / "manifest.json").read_text())
    sc = SyntheticClouds(1.0, Stretch.from_dict(manifest["stretch"]))
    colours = np.zeros((256, 3), np.uint8)
    colours[:4] = [[58, 125, 44], [255, 255, 255], [127, 200, 255], [59, 42, 128]]
    colours[134], colours[137] = [255, 200, 0], [200, 100, 100]
    labelled = [t for t in manifest["tiles"] if t.get("label")][::17][:4]
    rows = []
    for k, t in enumerate(labelled):
        img = np.asarray(Image.open(tiles / t["image"]).convert("RGB"))
        lab = np.asarray(Image.open(tiles / t["label"]))
        img2, lab2 = sc.apply(img, lab, np.ones(lab.shape, bool), 1000 + k)
        rows.append(np.concatenate([img, colours[lab], img2, colours[lab2]], 1))
    dest.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.concatenate(rows, 0)).save(dest)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=["calibrate", "examples"])
    ap.add_argument("--tiles", type=Path, default=ROOT / "bench" / "out" / "starter" / "tiles")
    args = ap.parse_args()
    if args.what == "calibrate":
        print(json.dumps(calibrate(), indent=1))
    else:
        examples(ROOT / "docs" / "img" / "synthetic_examples.png", args.tiles)


if __name__ == "__main__":
    sys.exit(main())
