"""How much of a model's score is its BatchNorm statistics? (issue 22 item 25)

    python bench/bncheck.py MODEL --tiles TILES --crop 256 [--real] [--seed S] [--batches N]

Validates MODEL (a checkpoint) on the val split of TILES with the statistics it was saved with,
then with them recalibrated as the trainer does before each check (``bn_recalibrate`` batches
of labelled crops at scale 1, the stream fixed by the seed), on ``--crop`` px crops of TILES'
labelled list, with training's synthetic clouds (share 0.5, as recipe v3) or, with ``--real``,
on the real images alone. No weight changes: only the running statistics move. Prints one
line per state (4-class mIoU and per-class IoU, %), as the trainer's checks score.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import torch

from cloudcps.models import load_checkpoint
from cloudcps.train import Trainer
from cloudcps.train.config import TrainConfig, config_from_dict


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", type=Path)
    ap.add_argument("--tiles", type=Path, required=True, help="tile folder: labelled + val")
    ap.add_argument("--crop", type=int, default=256)
    ap.add_argument("--real", action="store_true", help="recalibrate on the real images only")
    ap.add_argument("--synthetic", type=float, default=0.5, help="synthetic cloud share")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batches", type=int, default=50)
    ap.add_argument("--batch-size", type=int, default=8)
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("CLOUDCPS_THREADS", "2")))
    saved = load_checkpoint(args.model)["config"]
    with tempfile.TemporaryDirectory() as tmp:
        cfg = config_from_dict(
            {
                "data": str(args.tiles),
                "out": str(Path(tmp) / "run"),
                "mode": "supervised",
                "init": str(args.model),
                "arch": saved["arch"],
                "encoder": saved["encoder"],
                "encoder_weights": "none",
                "seed": args.seed,
                "crop": args.crop,
                "batch_size": args.batch_size,
                "synthetic_clouds": args.synthetic,
                "bn_recalibrate": args.batches,
                "bn_recalibrate_synthetic": not args.real,
                "iters": args.batches,
                "device": "cpu",
                "workers": 0,
            },
            TrainConfig(),
        )
        trainer = Trainer(cfg)
        try:

            def show(label: str) -> None:
                result = trainer.validate()  # in eval mode: the running statistics
                assert result is not None, "the tiles have no val split"
                n = result["net1"]
                per_class = " ".join(f"{100 * x:.1f}" for x in n["iou"])
                print(f"{args.model} {label}: mIoU {100 * n['miou']:.1f} ({per_class})", flush=True)

            show("as saved")
            trainer.recalibrate_norm()
            kind = "real" if args.real else f"synthetic {args.synthetic:g}"
            show(f"recalibrated on {args.crop} px crops, {kind}, seed {args.seed}")
        finally:
            trainer.close()


if __name__ == "__main__":
    main()
