"""The whole pipeline on generated scenes, offline: tile, train, predict, evaluate.

The scenes come from :mod:`cloudcps.synthetic` (4-band uint16, georeferenced, exact labels), so the
demo needs nothing but the installed package.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cloudcps.contract import DEFAULT_CLASSES
from cloudcps.evaluate import Evaluation, evaluate_rasters, write_report
from cloudcps.io import check_writable
from cloudcps.models import load_for_inference
from cloudcps.predict import PredictOptions, predict_scene
from cloudcps.synthetic import make_dataset
from cloudcps.tiling import TileOptions, tile_scenes
from cloudcps.train import Trainer
from cloudcps.train.config import Mode, TrainConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DemoBudget:
    """Data size and training budget of a demo run."""

    scenes: int
    scene_size: int
    tile_size: int
    val_scenes: int
    iters: int
    crop: int
    batch_size: int

    @classmethod
    def preset(cls, quick: bool) -> DemoBudget:
        if quick:  # a smoke test: under 3 minutes on 2 CPU cores
            return cls(
                scenes=8,
                scene_size=512,
                tile_size=128,
                val_scenes=1,
                iters=120,
                crop=128,
                batch_size=4,
            )
        return cls(
            scenes=16,
            scene_size=1024,
            tile_size=256,
            val_scenes=2,
            iters=260,
            crop=256,
            batch_size=4,
        )


def held_out_index(
    pairs: list[tuple[Path, Path]], num_classes: int, min_share: float = 0.005
) -> int:
    """The scene to hold out: the last one whose label has every class (at least ``min_share`` of
    its valid pixels each), so both models are scored on every class; else the last of those
    with the most classes."""
    import rasterio

    best, best_n = len(pairs) - 1, -1
    for i in range(len(pairs) - 1, -1, -1):
        with rasterio.open(pairs[i][1]) as src:
            counts = np.bincount(src.read(1).ravel(), minlength=256)[:num_classes]
        n = int((counts >= min_share * max(1, counts.sum())).sum())
        if n == num_classes:
            return i
        if n > best_n:
            best, best_n = i, n
    return best


@dataclass
class DemoResult:
    out: Path
    masks: dict[str, Path]
    report: Path
    figure: Path
    iou: dict[str, dict[str, float | None]]
    seconds: dict[str, float] = field(default_factory=dict)


def run_demo(
    out: str | Path,
    quick: bool = False,
    device: str = "auto",
    seed: int = 0,
    overwrite: bool = False,
    progress: bool = False,
    say: Callable[[str], None] = log.info,
    train_overrides: dict[str, Any] | None = None,
) -> DemoResult:
    """Generate scenes, tile them with 1/16 labelled, train the supervised baseline and CPS with the
    same budget, predict a held-out scene with both, and evaluate both masks against its labels.

    ``train_overrides`` (TrainConfig fields) change both trainings, for benchmarks of the demo's
    recipe (``bench/demo_cps.py``)."""
    root = Path(out)
    check_writable(root, overwrite)
    b = DemoBudget.preset(quick)
    times: dict[str, float] = {}
    t = time.perf_counter()

    pairs = _generate(root, b, seed, overwrite, say)
    held = held_out_index(pairs, len(DEFAULT_CLASSES))  # never tiled, predicted as a whole scene
    test_scene, test_label = pairs[held]
    train_pairs = pairs[:held] + pairs[held + 1 :]
    times["generate"] = time.perf_counter() - t

    t = time.perf_counter()
    _tile(root, b, train_pairs, seed, progress, say)
    times["tile"] = time.perf_counter() - t

    masks: dict[str, Path] = {}
    evaluations: dict[str, Evaluation] = {}
    for mode in ("supervised", "cps"):
        t = time.perf_counter()
        _train(root, b, mode, device, seed, progress, say, train_overrides)
        times[f"train {mode}"] = time.perf_counter() - t
        t = time.perf_counter()
        masks[mode] = _predict(root, mode, test_scene, progress)
        evaluations[mode] = evaluate_rasters([(masks[mode], test_label)])
        times[f"predict {mode}"] = time.perf_counter() - t

    iou = _report(root, evaluations, f"held-out scene {test_scene.name} ({b.scene_size} px)")
    return DemoResult(
        out=root,
        masks=masks,
        report=root / "report" / "report.json",
        figure=root / "report" / "samples.png",
        iou=iou,
        seconds=times,
    )


def _generate(
    root: Path, b: DemoBudget, seed: int, overwrite: bool, say: Callable[[str], None]
) -> list[tuple[Path, Path]]:
    """Generate the scenes (one more than tiled: the held-out one) into ``root/scenes``; with
    ``overwrite``, first remove what an earlier demo wrote (and only that)."""
    say(f"generating {b.scenes + 1} synthetic {b.scene_size} px scenes in {root / 'scenes'}")
    if overwrite:  # only what a demo writes
        import shutil

        for sub in ("scenes", "tiles", "runs", "masks", "report"):
            shutil.rmtree(root / sub, ignore_errors=True)
    return make_dataset(
        root / "scenes", n_scenes=b.scenes + 1, size=b.scene_size, seed=seed, nodata_border_every=4
    )


def _tile(
    root: Path,
    b: DemoBudget,
    train_pairs: list[tuple[Path, Path]],
    seed: int,
    progress: bool,
    say: Callable[[str], None],
) -> None:
    """Tile the training scenes into ``root/tiles``: 1/16 labelled, the last scenes for val."""
    opts = TileOptions(
        tile_size=b.tile_size,
        label_dirs=(root / "scenes" / "labels",),
        labeled_fraction=1 / 16,
        val=tuple(p.name for p, _ in train_pairs[-b.val_scenes :]),
        seed=seed,
        image_format="png",
    )
    summary = tile_scenes([p for p, _ in train_pairs], root / "tiles", opts, progress=progress)
    say(
        f"tiled {summary.tiles} tiles: {summary.splits['labeled']} labelled, "
        f"{summary.splits['unlabeled']} unlabelled, {summary.splits['val']} val"
    )


def _train(
    root: Path,
    b: DemoBudget,
    mode: Mode,
    device: str,
    seed: int,
    progress: bool,
    say: Callable[[str], None],
    train_overrides: dict[str, Any] | None,
) -> None:
    """Train ``mode`` (supervised or cps) on ``root/tiles`` into ``root/runs/MODE``."""
    cfg = TrainConfig(
        data=str(root / "tiles"),
        out=str(root / "runs" / mode),
        mode=mode,
        iters=b.iters,
        crop=b.crop,
        batch_size=b.batch_size,
        eval_every=max(1, b.iters // 4),
        device=device,
        seed=seed,
        workers=0,
        **(train_overrides or {}),
    )
    say(f"training {mode}: {b.iters} iterations, crop {b.crop}, batch {b.batch_size}")
    Trainer(cfg, progress=progress).fit()


def _predict(root: Path, mode: str, test_scene: Path, progress: bool) -> Path:
    """Predict the held-out scene with the run of ``mode``; the mask written."""
    loaded = load_for_inference(root / "runs" / mode)
    mask = root / "masks" / mode / f"{test_scene.stem}_mask.tif"
    mask.parent.mkdir(parents=True, exist_ok=True)
    predict_scene(test_scene, loaded, mask, PredictOptions(), progress=progress)
    return mask


def _report(
    root: Path, evaluations: dict[str, Evaluation], source: str
) -> dict[str, dict[str, float | None]]:
    """Write both models' scores side by side into ``root/report``; per model the IoU of each
    class and the mIoU."""
    first = evaluations["supervised"]
    combined = Evaluation(
        classes=first.classes,
        confusion={m: e.confusion["prediction"] for m, e in evaluations.items()},
        source=source,
        samples=[
            {
                **first.samples[0],
                "predictions": {
                    m: e.samples[0]["predictions"]["prediction"] for m, e in evaluations.items()
                },
            }
        ],
    )
    report = write_report(combined, root / "report", overwrite=True)
    iou: dict[str, dict[str, float | None]] = {}
    for mode, r in report["results"].items():
        iou[mode] = dict(zip(first.classes, r["iou"], strict=True))
        iou[mode]["mIoU"] = r["miou"]
    return iou


def format_result(res: DemoResult) -> list[str]:
    """Lines that say where the outputs are and how the two models did."""
    lines = [
        f"masks: {', '.join(f'{m} {p}' for m, p in res.masks.items())}",
        f"report: {res.report} (and report.md, confusion.png)",
        f"figure: {res.figure}",
    ]
    classes = [c for c in next(iter(res.iou.values())) if c != "mIoU"]
    lines.append("IoU % on the held-out scene: " + " | ".join(["model", *classes, "mIoU"]))
    for mode, vals in res.iou.items():
        cells = [
            f"{100 * v:.1f}" if v is not None else "-"
            for v in [vals[c] for c in classes] + [vals["mIoU"]]
        ]
        lines.append(f"  {mode:<10} " + " | ".join(cells))
    total = sum(res.seconds.values())
    lines.append(
        f"took {total:.0f} s: " + ", ".join(f"{k} {v:.0f} s" for k, v in res.seconds.items())
    )
    return lines
