"""Prediction throughput and peak memory on generated 4-band scenes, beside ukis-csmask.

    python bench/predict.py [--sizes 2048,5490,10980] [--repeat 3] [--repeat-large 1]
                            [--model RUN_OR_CKPT] [--work /tmp/cloudcps-bench]

Each measurement is a fresh process (its own peak RSS). Without --model, a checkpoint of the
default architecture (DeepLabV3+, EfficientNet-Lite0 with its ImageNet encoder, 2 networks,
1024 px tiles) is written once: speed and memory do not depend on training. The peer reads the
same 4-band scene as reflectance 0-1 (it holds the whole scene in memory by design).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine, median, run_measured, write_big_scene

MAKE_CKPT = r"""
import sys
from pathlib import Path
from cloudcps.models import ModelSpec, build_pair, save_checkpoint
from cloudcps.tiling import DataContract, Stretch
spec = ModelSpec("deeplabv3plus", "tu-efficientnet_lite0", 4)
nets, _ = build_pair(spec, "imagenet", seed=0)
contract = DataContract(("clear", "thick cloud", "thin cloud", "cloud shadow"), (1, 2, 3, 4),
                        Stretch("fixed", (0.0,) * 4, (10000.0,) * 4), 1024)
save_checkpoint(Path(sys.argv[1]), {"model": spec.to_dict(), "nets": [n.state_dict() for n in nets],
                "iteration": 0, "config": {}, "contract": contract.to_dict(), "best": {}})
"""

UKIS = r"""
import sys, rasterio
sys.path.insert(0, sys.argv[2])
from peers import run_ukis
with rasterio.open(sys.argv[1]) as s:
    img = s.read()
run_ukis(img)
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="2048,5490,10980")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--repeat-large", type=int, default=1, help="runs for sizes above 6000")
    ap.add_argument("--model", type=Path)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--no-peer", action="store_true")
    ap.add_argument("--work", type=Path, default=Path("/tmp/cloudcps-bench"))
    args = ap.parse_args()
    py = sys.executable
    args.work.mkdir(parents=True, exist_ok=True)
    model = args.model
    if model is None:
        model = args.work / "default-untrained.pt"
        if not model.exists():
            subprocess.run([py, "-c", MAKE_CKPT, str(model)], check=True)
    try:
        import ukis_csmask  # noqa: F401

        peer = not args.no_peer
    except ImportError:
        peer = False
        print("ukis-csmask is not installed: pip install 'ukis-csmask[cpu]' to compare")
    rows = []
    for size in [int(s) for s in args.sizes.split(",")]:
        scene = write_big_scene(args.work / f"scene_{size}.tif", size, nodata_border=64)
        mpx = size * size / 1e6
        n = args.repeat if size <= 6000 else args.repeat_large
        ours_s, ours_mb, peer_s, peer_mb = [], [], [], []
        for _ in range(n):
            s, mb = run_measured(
                [
                    py,
                    "-m",
                    "cloudcps.cli.main",
                    "-q",
                    "predict",
                    str(scene),
                    "--model",
                    str(model),
                    "--out",
                    str(args.work / f"mask_{size}.tif"),
                    "--overwrite",
                    "--device",
                    args.device,
                ]
            )
            ours_s.append(s)
            ours_mb.append(mb)
            if peer:
                s, mb = run_measured(
                    [py, "-c", UKIS, str(scene), str(Path(__file__).parent)], allow_failure=True
                )
                peer_s.append(s)
                peer_mb.append(mb)
        row = {
            "size": size,
            "mpx": mpx,
            "runs": n,
            "ours_s": ours_s,
            "ours_mb": ours_mb,
            "peer_s": peer_s,
            "peer_mb": peer_mb,
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(f"machine: {machine()}")
    print(f"model: {model} on {args.device}; peer: ukis-csmask {'yes' if peer else 'no'}")
    print(
        "| scene | runs | cloudcps s | cloudcps Mpx/s | cloudcps peak RSS MB | "
        "ukis-csmask s | ukis-csmask Mpx/s | ukis-csmask peak RSS MB |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        o = median(r["ours_s"])
        mb = max(r["ours_mb"])
        line = f"| {r['size']}² | {r['runs']} | {o:.1f} | {r['mpx'] / o:.2f} | {mb:.0f} |"
        if r["peer_s"] and all(s == s for s in r["peer_s"]):  # NaN: the peer failed
            p = median(r["peer_s"])
            line += f" {p:.1f} | {r['mpx'] / p:.2f} | {max(r['peer_mb']):.0f} |"
        elif r["peer_s"]:
            line += f" failed | - | {max(r['peer_mb']):.0f} at failure |"
        else:
            line += " - | - | - |"
        print(line)


if __name__ == "__main__":
    main()
