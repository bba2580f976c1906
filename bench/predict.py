"""Prediction throughput and peak memory on generated 4-band scenes, beside ukis-csmask.

    python bench/predict.py [--sizes 2048,5490,10980] [--repeat 3] [--repeat-large 3]
                            [--peer-repeat-large 1] [--model default] [--device cpu|cuda]
                            [--backend auto|onnx|torch] [--work /tmp/cloudcps-bench]

Each measurement is a fresh process of the real command line (its own start-up and peak RSS):
``cloudcps predict SCENE --out MASK --overwrite`` with the shipped default model and default
settings unless told otherwise. The peer, ukis-csmask, reads the same 4-band scene as reflectance
0-1 in the same run (it holds the whole scene in memory by design; ``--peer-repeat-large`` limits
its runs above 6000 px, where it needs about 22 GB).

On a GPU: ``python bench/predict.py --sizes 10980 --device cuda --no-peer`` prints the time and
Mpx/s of a Sentinel-2-sized scene (the first run includes CUDA start-up; the median of
``--repeat-large`` runs is reported).
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
from cloudcps.contract import DataContract, Stretch
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
    ap.add_argument("--repeat-large", type=int, default=3, help="runs for sizes above 6000")
    ap.add_argument("--peer-repeat-large", type=int, default=1, help="peer runs above 6000")
    ap.add_argument("--model", default="default", help="default: the shipped model")
    ap.add_argument("--untrained", action="store_true", help="a 2-network untrained checkpoint")
    ap.add_argument("--device", default=None)
    ap.add_argument("--backend", default=None)
    ap.add_argument("--extra", default="", help="more predict options, e.g. '--nets both'")
    ap.add_argument("--no-peer", action="store_true")
    ap.add_argument("--work", type=Path, default=Path("/tmp/cloudcps-bench"))
    args = ap.parse_args()
    py = sys.executable
    args.work.mkdir(parents=True, exist_ok=True)
    model = args.model
    if args.untrained:
        model = str(args.work / "default-untrained.pt")
        if not Path(model).exists():
            subprocess.run([py, "-c", MAKE_CKPT, model], check=True)
    opts = ["--model", model]
    if args.device:
        opts += ["--device", args.device]
    if args.backend:
        opts += ["--backend", args.backend]
    opts += args.extra.split()
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
        n_peer = args.repeat if size <= 6000 else args.peer_repeat_large
        ours_s, ours_mb, peer_s, peer_mb = [], [], [], []
        for i in range(n):
            s, mb = run_measured(
                [
                    py,
                    "-m",
                    "cloudcps.cli.main",
                    "-q",
                    "predict",
                    str(scene),
                    "--out",
                    str(args.work / f"mask_{size}.tif"),
                    "--overwrite",
                    *opts,
                ]
            )
            ours_s.append(s)
            ours_mb.append(mb)
            if peer and i < n_peer:
                s, mb = run_measured(
                    [py, "-c", UKIS, str(scene), str(Path(__file__).parent)], allow_failure=True
                )
                peer_s.append(s)
                peer_mb.append(mb)
        row = {
            "size": size,
            "mpx": mpx,
            "runs": n,
            "peer_runs": len(peer_s),
            "ours_s": ours_s,
            "ours_mb": ours_mb,
            "peer_s": peer_s,
            "peer_mb": peer_mb,
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(f"machine: {machine()}")
    print(f"cloudcps predict {' '.join(opts)}; peer: ukis-csmask {'yes' if peer else 'no'}")
    print(
        "| scene | runs (ours/peer) | cloudcps s | cloudcps Mpx/s | cloudcps peak RSS MB | "
        "ukis-csmask s | ukis-csmask Mpx/s | ukis-csmask peak RSS MB | speed-up |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        o = median(r["ours_s"])
        mb = max(r["ours_mb"])
        line = (
            f"| {r['size']}² | {r['runs']}/{r['peer_runs']} | {o:.1f} | {r['mpx'] / o:.2f} | "
            f"{mb:.0f} |"
        )
        if r["peer_s"] and all(s == s for s in r["peer_s"]):  # NaN: the peer failed
            p = median(r["peer_s"])
            line += f" {p:.1f} | {r['mpx'] / p:.2f} | {max(r['peer_mb']):.0f} | {p / o:.1f}x |"
        elif r["peer_s"]:
            line += f" failed | - | {max(r['peer_mb']):.0f} at failure | - |"
        else:
            line += " - | - | - | - |"
        print(line)


if __name__ == "__main__":
    main()
