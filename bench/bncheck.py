"""How much of a model's score is its BatchNorm statistics? (issue 22 item 25)

    python bench/bncheck.py MODEL --tiles TILES --crop 256 [--real] [--seed S] [--batches N]
    python bench/bncheck.py MODEL --stats    # the decoder's BatchNorm population statistics
    python bench/bncheck.py MODEL --stats --tiles TILES   # and the image-pooling branch's effect

Validates MODEL (a checkpoint) on the val split of TILES with the statistics it was saved with,
then with them recalibrated as the trainer does before each check (``bn_recalibrate`` batches
of labelled crops at scale 1, the stream fixed by the seed), on ``--crop`` px crops of TILES'
labelled list, with training's synthetic clouds (share 0.5, as recipe v3) or, with ``--real``,
on the real images alone. No weight changes: only the running statistics move. Prints one
line per state (4-class mIoU and per-class IoU, %), as the trainer's checks score.

``--stats`` prints, for each BatchNorm layer of the decoder, the spread of its saved running
variance over the channels and the largest running mean (item 29: a tiny variance in the ASPP's
image-pooling branch, whose BatchNorm sees one vector a crop, amplifies small shifts). With
``--tiles`` as well, the predicted class shares on the top-left corners of the first six val
tiles at 128 and 512 px, as saved and with that one layer normalised by the batch.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from common import bench_threads

from cloudcps.models import load_checkpoint, load_for_inference
from cloudcps.train import Trainer
from cloudcps.train.config import TrainConfig, config_from_dict


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", type=Path)
    ap.add_argument("--tiles", type=Path, help="tile folder: labelled + val")
    ap.add_argument("--stats", action="store_true", help="the decoder's BatchNorm statistics")
    ap.add_argument("--crop", type=int, default=256)
    ap.add_argument("--real", action="store_true", help="recalibrate on the real images only")
    ap.add_argument("--synthetic", type=float, default=0.5, help="synthetic cloud share")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batches", type=int, default=50)
    ap.add_argument("--batch-size", type=int, default=8)
    args = ap.parse_args()
    torch.set_num_threads(bench_threads())
    if args.stats:
        decoder_statistics(args.model, args.tiles)
        return
    if args.tiles is None:
        ap.error("--tiles is required (or --stats)")
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


def decoder_statistics(model: Path, tiles: Path | None) -> None:
    """One line per BatchNorm layer of network 1's decoder: running variance min / median /
    max over its channels and the largest absolute running mean, as saved; with ``tiles``, the
    class shares predicted on val crops at two sizes, with the ASPP image-pooling branch's
    BatchNorm as saved and normalised by the batch."""
    loaded = load_for_inference(model, nets="1")
    net = loaded.model.nets[0]
    for name, m in net.decoder.named_modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            v, mean = m.running_var, m.running_mean
            print(
                f"{model} decoder.{name}: var {v.min():.2g} / {v.median():.2g} / {v.max():.2g}, "
                f"|mean| max {mean.abs().max():.2g}"
            )
    if tiles is None:
        return
    import numpy as np
    from PIL import Image

    from cloudcps.train.data import TileFolder, _normalise

    folder = TileFolder(tiles)
    c = loaded.contract
    crops = []
    for item in folder.items(folder.split("val")[:6]):
        with Image.open(item.image) as im:
            crops.append(_normalise(np.asarray(im.convert("RGB"))[:512, :512], c.mean, c.std))
    x = torch.stack(crops)
    pool_bn = net.decoder.aspp[0].convs[-1][2]  # smp's ASPPPooling: pool, conv, BatchNorm, act
    assert isinstance(pool_bn, torch.nn.BatchNorm2d), "not smp's DeepLabV3+ image pooling"
    for label, batch_mode in (("as saved", False), ("pooling BatchNorm by batch", True)):
        net.eval()
        pool_bn.train(batch_mode)
        for size in (128, 512):
            with torch.no_grad():
                pred = net(x[..., :size, :size]).argmax(1)
            shares = " ".join(
                f"{float((pred == k).float().mean()):.2f}" for k in range(len(c.classes))
            )
            print(f"{model} {size} px val crops, {label}: class shares {shares}")
    net.eval()


if __name__ == "__main__":
    main()
