"""Tiling throughput and peak memory: `cloudcps tile` against read-the-whole-scene-then-slice.

    python bench/tile.py [--size 10980] [--repeat 3] [--work /tmp/cloudcps-bench]

Both methods write the same 1024x1024 JPEG tiles with the same stretch; each run is a fresh
process so its peak RSS is its own.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine, median, run_measured, write_big_scene

NAIVE = r"""
import sys, numpy as np, rasterio
from pathlib import Path
from PIL import Image
from cloudcps.contract import Stretch
from cloudcps.tiling import grid_offsets
scene, out, lo, hi = sys.argv[1], Path(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
out.mkdir(parents=True, exist_ok=True)
st = Stretch("fixed", (lo,) * 3, (hi,) * 3)
with rasterio.open(scene) as src:
    data = src.read([1, 2, 3])  # the whole scene at once
H, W = data.shape[1:]
for r in grid_offsets(H, 1024, 0):
    for c in grid_offsets(W, 1024, 0):
        tile = np.zeros((3, 1024, 1024), np.uint8)
        part = data[:, r:r + 1024, c:c + 1024]
        tile[:, :part.shape[1], :part.shape[2]] = st.apply(part)
        im = Image.fromarray(tile.transpose(1, 2, 0))
        im.save(out / f"{r}_{c}.jpg", quality=95, subsampling=0)
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=10980)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--work", type=Path, default=Path("/tmp/cloudcps-bench"))
    args = ap.parse_args()
    scene = write_big_scene(args.work / f"scene_{args.size}.tif", args.size)
    mpx = args.size * args.size / 1e6
    py = sys.executable
    res: dict[str, dict[str, list[float]]] = {
        "cloudcps tile": {"s": [], "mb": []},
        "naive whole-scene read": {"s": [], "mb": []},
    }
    for _ in range(args.repeat):
        s, mb = run_measured(
            [
                py,
                "-m",
                "cloudcps.cli.main",
                "-q",
                "tile",
                str(scene),
                "--out",
                str(args.work / "tiles"),
                "--overwrite",
                "--stretch",
                "0:8000",
            ]
        )
        res["cloudcps tile"]["s"].append(s)
        res["cloudcps tile"]["mb"].append(mb)
        s, mb = run_measured([py, "-c", NAIVE, str(scene), str(args.work / "naive"), "0", "8000"])
        res["naive whole-scene read"]["s"].append(s)
        res["naive whole-scene read"]["mb"].append(mb)
    print(f"machine: {machine()}")
    print(f"scene: {args.size}x{args.size} 4-band uint16 ({mpx:.1f} Mpx), {args.repeat} runs each")
    print("| method | median s | Mpx/s | peak RSS MB (max) |")
    print("|---|---|---|---|")
    for name, r in res.items():
        print(
            f"| {name} | {median(r['s']):.1f} | {mpx / median(r['s']):.1f} | {max(r['mb']):.0f} |"
        )
    print(json.dumps(res))


if __name__ == "__main__":
    main()
