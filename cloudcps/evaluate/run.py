"""What ``cloudcps evaluate`` does with its options: check the output folder, score models on
a tile folder or masks against references, and write the report."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cloudcps.errors import InputError
from cloudcps.evaluate.pairs import match_pairs
from cloudcps.evaluate.rasters import evaluate_rasters
from cloudcps.evaluate.report import write_report
from cloudcps.evaluate.scoring import Evaluation
from cloudcps.evaluate.tiles import evaluate_models_on_tiles, model_names
from cloudcps.io import check_out_dir


@dataclass(frozen=True)
class EvaluateRequest:
    """One evaluation: ``models`` on the tiles of ``data``, or ``preds`` against ``refs``.

    Args:
        out: Report folder.
        models: Run folders or checkpoints, scored side by side on ``data``.
        data: Tile folder the models are scored on.
        split: Split list of ``data``.
        preds: Mask rasters (paired in order with ``refs``) or one folder.
        refs: Reference rasters or one folder matched by file name.
        label_map: Reference codes to class ids.
        merge: Class folding, source class id to target class id.
        align: Resample predictions onto the reference grid instead of failing.
        allow_missing: With two folders, score the pairs matched by name alone.
        samples: Panels in samples.png.
        device: Device of the models (``None``: picked automatically).
        overwrite: Replace a report written earlier into ``out``.
    """

    out: Path
    models: tuple[Path, ...] = ()
    data: Path | None = None
    split: str = "val"
    preds: tuple[Path, ...] = ()
    refs: tuple[Path, ...] = ()
    label_map: dict[int, int] | None = None
    merge: dict[int, int] | None = None
    align: bool = False
    allow_missing: bool = False
    samples: int = 4
    device: str | None = None
    overwrite: bool = False


def run_evaluation(
    req: EvaluateRequest, progress: bool = False
) -> tuple[Evaluation, dict[str, Any]]:
    """Score what ``req`` names and write the report into ``req.out``.

    Returns:
        The evaluation and the report written (``report.json``'s content).

    Raises:
        InputError: both or neither of models and masks, models without tiles, an output
            folder that cannot be written; and what scoring refuses.
    """
    inputs = [*req.models, *req.preds, *req.refs] + ([req.data] if req.data is not None else [])
    check_out_dir(req.out, req.overwrite, "report", inputs)
    if req.models and (req.preds or req.refs):
        raise InputError("give either --model with --data, or --pred with --ref, not both")
    if req.models:
        ev = _models_on_tiles(req, progress)
    elif req.preds or req.refs:
        pairs = match_pairs(req.preds, req.refs, req.allow_missing)
        ev = evaluate_rasters(pairs, req.label_map, req.merge, req.align, req.samples)
    else:
        raise InputError("nothing to evaluate: give --model and --data, or --pred and --ref")
    return ev, write_report(ev, req.out, req.overwrite)


def _models_on_tiles(req: EvaluateRequest, progress: bool) -> Evaluation:
    """Load the models on the chosen device and score them on the tiles of ``req.data``."""
    if req.data is None:
        raise InputError("--model needs --data (a tile folder) to score on")
    from cloudcps.devices import pick_device
    from cloudcps.models import load_for_inference

    dev = pick_device(req.device or "auto")
    loaded = [
        (n, load_for_inference(m, device=dev))
        for n, m in zip(model_names(req.models), req.models, strict=True)
    ]
    return evaluate_models_on_tiles(
        loaded, req.data, req.split, req.merge, dev, req.samples, progress
    )
