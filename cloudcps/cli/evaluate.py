"""``cloudcps evaluate``: scores, confusion matrices, reports and plots."""

from __future__ import annotations

from pathlib import Path

import click

from cloudcps.contract import parse_label_map

from .options import converter, device_opt, overwrite_opt, quiet, user_errors


@click.command(short_help="Score models on tiles, or masks against reference rasters.")
@click.option(
    "--model",
    "-m",
    "models",
    multiple=True,
    type=click.Path(path_type=Path),
    help="Run folder or checkpoint (repeatable: models side by side).",
)
@click.option("--data", type=click.Path(path_type=Path), help="Tile folder to score --model on.")
@click.option("--split", default="val", show_default=True, help="Split list of --data.")
@click.option(
    "--pred",
    "preds",
    multiple=True,
    type=click.Path(path_type=Path),
    help="Mask raster (repeatable, paired in order with --ref) or a folder.",
)
@click.option(
    "--ref",
    "refs",
    multiple=True,
    type=click.Path(path_type=Path),
    help="Reference raster (repeatable) or a folder matched by file name.",
)
@click.option(
    "--label-map",
    default=None,
    callback=converter(parse_label_map),
    help="Reference codes to class ids, e.g. 128:0,255:1,192:2,64:3.",
)
@click.option(
    "--merge",
    multiple=True,
    help="Fold classes SRC[,SRC...]:DST, e.g. --merge 1,2:1 --merge 3:0 (repeatable).",
)
@click.option(
    "--align",
    is_flag=True,
    help="Resample predictions onto the reference grid (nearest) instead of failing.",
)
@click.option(
    "--allow-missing",
    is_flag=True,
    help="With --pred DIR --ref DIR: score the pairs matched by name and warn about files without "
    "a match (refused without it).",
)
@click.option("--samples", default=4, show_default=True, type=int, help="Panels in samples.png.")
@device_opt
@click.option("--out", "-o", required=True, type=click.Path(path_type=Path), help="Report folder.")
@overwrite_opt
@click.pass_context
@user_errors
def evaluate(
    ctx: click.Context,
    /,
    models: tuple[Path, ...],
    data: Path | None,
    split: str,
    preds: tuple[Path, ...],
    refs: tuple[Path, ...],
    label_map: dict[int, int] | None,
    merge: tuple[str, ...],
    align: bool,
    allow_missing: bool,
    samples: int,
    device: str | None,
    out: Path,
    overwrite: bool,
) -> None:
    """Score one or more models on a tile folder's split (--model ... --data DIR), or mask
    rasters against references (--pred MASK.tif --ref LABEL.tif, or two folders). Writes
    report.json (confusion matrix, per-class IoU, F1, precision, recall, mIoU, pixel accuracy),
    report.md, confusion.png (row-normalised) and samples.png. Ignore (255) and nodata pixels
    are excluded.

    \b
    $ cloudcps evaluate --model runs/sup --model runs/cps --data tiles --out report
    $ cloudcps evaluate --pred masks --ref labels --merge 1,2:1 --merge 3:0 --out report
    """
    from cloudcps.evaluate import EvaluateRequest, parse_merge, run_evaluation

    try:
        folds = parse_merge(merge)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--merge") from None
    request = EvaluateRequest(
        out=out,
        models=models,
        data=data,
        split=split,
        preds=preds,
        refs=refs,
        label_map=label_map,
        merge=folds or None,
        align=align,
        allow_missing=allow_missing,
        samples=samples,
        device=device,
        overwrite=overwrite,
    )
    ev, report = run_evaluation(request, progress=not quiet(ctx))
    if quiet(ctx):
        return
    click.echo(f"{ev.source} -> {out}/report.md")
    for name, r in report["results"].items():
        parts = ", ".join(
            f"{c} {100 * v:.1f}" if v is not None else f"{c} -"
            for c, v in zip(ev.classes, r["iou"], strict=True)
        )
        miou = "n/a (no labelled pixel)" if r["miou"] is None else f"{100 * r['miou']:.1f}%"
        click.echo(f"{name}: mIoU {miou}; IoU % {parts}")
