"""Seconds per training iteration: CPS against the supervised baseline at the same batch.

    python bench/train.py [--encoders tu-efficientnet_lite0,resnet18] [--crop 256] [--batch 2]
                          [--iters 8] [--repeat 3]

Each iteration is timed whole (data loading included) on a generated tile folder. Arithmetic
predicts the ratio: CPS runs 2 networks forward and backward on labelled + unlabelled images
(2 x 2B image passes), supervised 1 network on the labelled images (B passes): 4x.
With a GPU it also reports images/s of DeepLabV3+ ResNet-50, 512 px crops, 8 + 8 images, bf16.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine

from cloudcps.train import Trainer, batch_stream
from cloudcps.train.config import TrainConfig


def make_tiles(root: Path, tile: int) -> Path:
    from cloudcps.synthetic import make_dataset
    from cloudcps.tiling import TileOptions, tile_scenes

    pairs = make_dataset(root / "scenes", n_scenes=4, size=512, seed=0)
    opts = TileOptions(
        tile_size=tile,
        label_dirs=(root / "scenes" / "labels",),
        labeled_fraction=0.5,
        val=(pairs[-1][0].name,),
    )
    tile_scenes([p for p, _ in pairs], root / "tiles", opts)
    return root / "tiles"


def time_iterations(cfg: TrainConfig, iters: int, warmup: int = 2) -> list[float]:
    tr = Trainer(cfg)
    it_x = batch_stream(tr.data.labeled, cfg, tr.rt, 0, 1)
    it_u = (
        batch_stream(tr.data.unlabeled, cfg, tr.rt, 0, 2) if tr.cps and tr.data.unlabeled else None
    )
    times = []
    for i in range(warmup + iters):
        if tr.rt.device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        tr.step(next(it_x), next(it_u) if it_u is not None else None)
        if tr.rt.device.type == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--encoders", default="tu-efficientnet_lite0,resnet18")
    ap.add_argument("--crop", type=int, default=256)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--iters", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--gpu-only", action="store_true", help="only the GPU throughput figure")
    args = ap.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        tiles = make_tiles(Path(tmp), 512)
        if not args.gpu_only:
            for enc in args.encoders.split(","):
                per_mode: dict[str, list[float]] = {"cps": [], "supervised": []}
                for r in range(args.repeat):
                    for mode in ("supervised", "cps"):
                        cfg = TrainConfig(
                            data=str(tiles),
                            out=f"{tmp}/run-{enc}-{mode}-{r}",
                            mode=mode,
                            encoder=enc,
                            encoder_weights="none",
                            crop=args.crop,
                            batch_size=args.batch,
                            device=args.device,
                            workers=0,
                            iters=100,
                        )
                        per_mode[mode].append(statistics.median(time_iterations(cfg, args.iters)))
                sup = statistics.median(per_mode["supervised"])
                cps = statistics.median(per_mode["cps"])
                results[enc] = {"supervised_s": sup, "cps_s": cps, "ratio": cps / sup}
        if torch.cuda.is_available():
            cfg = TrainConfig(
                data=str(tiles),
                out=f"{tmp}/gpu",
                mode="cps",
                encoder="resnet50",
                encoder_weights="none",
                crop=512,
                batch_size=8,
                device="cuda",
                amp="bf16",
                workers=4,
                iters=100,
            )
            t = statistics.median(time_iterations(cfg, 10, warmup=3))
            results["gpu_resnet50_512_8+8_bf16"] = {"cps_s": t, "images_per_s": 16 / t}
    print(f"machine: {machine()}")
    print(
        f"DeepLabV3+, crop {args.crop}, batch {args.batch} labelled (+{args.batch} unlabelled for "
        f"CPS), median of {args.iters} iterations x {args.repeat} runs (median of medians)"
    )
    print("| encoder | supervised s/iter | CPS s/iter | measured ratio | arithmetic ratio |")
    print("|---|---|---|---|---|")
    for enc, r in results.items():
        if "supervised_s" in r:
            print(
                f"| {enc} | {r['supervised_s']:.2f} | {r['cps_s']:.2f} | {r['ratio']:.2f} | 4.0 |"
            )
    for name, r in results.items():
        if "images_per_s" in r:
            print(f"GPU {name}: {r['cps_s']:.3f} s/iter, {r['images_per_s']:.1f} images/s")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
