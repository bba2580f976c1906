"""Score models on the labelled tiles of a tile folder's split, side by side.

Each model predicts every tile; its predictions are scored against the label tiles (ignore
pixels and nodata excluded). A tile folder whose labels are partial only (e.g. ``0|3`` and
``1|2``) is scored per group of the partial labels, as training validates it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cloudcps.contract import IGNORE_INDEX
from cloudcps.errors import InputError
from cloudcps.evaluate.scoring import ClassFold, Evaluation
from cloudcps.metrics import confusion_matrix
from cloudcps.models import LoadedModel
from cloudcps.train.data import SegmentationDataset, TileFolder

log = logging.getLogger(__name__)

_Models = Sequence[tuple[str, LoadedModel]]


def model_names(paths: Sequence[str | os.PathLike[str]]) -> list[str]:
    """Short, unique names for models given as run folders or checkpoint files."""
    names = []
    for p in map(Path, paths):
        names.append(p.name if p.is_dir() else f"{p.parent.name}/{p.stem}")
    if len(set(names)) != len(names):
        names = [str(p) for p in paths]
    return names


@torch.no_grad()
def evaluate_models_on_tiles(
    models: _Models,
    data: str | os.PathLike[str],
    split: str = "val",
    merge: dict[int, int] | None = None,
    device: torch.device | None = None,
    n_samples: int = 4,
    progress: bool = False,
) -> Evaluation:
    """Predict the tiles of ``split`` with each model and score them against the label tiles."""
    dev = device or torch.device("cpu")
    folder = TileFolder(data)
    ids = folder.split(split)
    if not ids:
        raise InputError(f"the {split} split of --data {data} is empty; choose another --split")
    classes = folder.contract.classes
    _check_models(models, folder, data)
    items = [it for it in folder.items(ids) if it.label is not None]
    if not items:
        raise InputError(f"the {split} tiles of --data {data} have no labels to score against")
    fold = ClassFold.build(classes, merge)
    ds = SegmentationDataset(
        items, None, True, folder.contract.mean, folder.contract.std, folder.contract.num_classes
    )
    counts = _predict_and_count(models, ds, fold, len(classes), dev, progress)
    by_id = {it.id: k for k, it in enumerate(items)}
    samples = _sample_panels(models, ds, counts, by_id, n_samples)
    names, cms, how = tuple(fold.names), counts.confusion, ""
    if merge is None and all(cm.sum() == 0 for cm in cms.values()):
        names, cms, how = _by_partial_groups(counts.by_code, classes, names, cms)
    return Evaluation(
        classes=names,
        confusion=cms,
        source=f"tiles {data} split {split} ({len(items)} tiles{how})",
        samples=samples,
        details={"fold": list(fold.lut), "original_classes": list(classes)},
    )


def _check_models(models: _Models, folder: TileFolder, data: str | os.PathLike[str]) -> None:
    """Refuse a model trained for other classes; warn about one trained on another stretch."""
    classes = folder.contract.classes
    for name, m in models:
        if tuple(m.contract.classes) != tuple(classes):
            raise InputError(
                f"--model {m.path} was trained for classes {list(m.contract.classes)} but --data "
                f"{data} has {list(classes)}"
            )
        if m.contract.stretch != folder.contract.stretch:
            log.warning("%s was trained on tiles with another stretch than %s", name, data)


@dataclass
class _TileCounts:
    """What predicting every tile with every model leaves for scoring and for the panels."""

    confusion: dict[str, np.ndarray]  # per model, over the folded classes
    by_code: dict[str, np.ndarray]  # per model, (256, K): label code x predicted class
    per_tile: list[tuple[int, str]]  # (classes in the tile's reference, tile id)
    preds: dict[str, dict[str, np.ndarray]]  # per model, per tile id: predicted classes


def _predict_and_count(
    models: _Models,
    ds: SegmentationDataset,
    fold: ClassFold,
    k: int,
    dev: torch.device,
    progress: bool,
) -> _TileCounts:
    """Predict each tile with each model and count it (partial label codes too)."""
    from tqdm import tqdm

    from cloudcps.train import pad_to_multiple

    counts = _TileCounts(
        confusion={name: np.zeros((fold.num_out, fold.num_out), np.int64) for name, _ in models},
        by_code={name: np.zeros((256, k), np.int64) for name, _ in models},
        per_tile=[],
        preds={name: {} for name, _ in models},
    )
    for i in tqdm(range(len(ds)), desc="evaluate", unit="tile", disable=not progress):
        s = ds[i]
        ref = np.where(s["valid"].numpy(), s["mask"].numpy(), IGNORE_INDEX).astype(np.uint8)
        ref_f = fold.apply(ref)
        x, h, w = pad_to_multiple(s["image"][None].to(dev))
        for name, m in models:
            pred = m.model.to(dev)(x)[..., :h, :w].argmax(1)[0].cpu().numpy().astype(np.uint8)
            counts.confusion[name] += confusion_matrix(fold.apply(pred), ref_f, fold.num_out)
            counts.by_code[name] += np.bincount(
                ref.astype(np.int64).ravel() * k + pred.ravel(), minlength=256 * k
            ).reshape(256, k)
            counts.preds[name][s["id"]] = pred
        counts.per_tile.append((len(np.unique(ref[ref != IGNORE_INDEX])), s["id"]))
    return counts


def _sample_panels(
    models: _Models,
    ds: SegmentationDataset,
    counts: _TileCounts,
    by_id: dict[str, int],
    n_samples: int,
) -> list[dict[str, Any]]:
    """Panels of the ``n_samples`` tiles with the most reference classes (ties by tile id)."""
    ranked = sorted(counts.per_tile, key=lambda t: (-t[0], t[1]))
    chosen = [tid for _, tid in ranked[:n_samples]]
    samples = []
    for tid in chosen:
        img, mask, valid = ds.load(by_id[tid])
        samples.append(
            {
                "title": tid,
                "image": img,
                "reference": np.where(valid, mask, IGNORE_INDEX).astype(np.uint8),
                "predictions": {name: counts.preds[name][tid] for name, _ in models},
            }
        )
    return samples


def _by_partial_groups(
    by_code: dict[str, np.ndarray],
    classes: Sequence[str],
    names: tuple[str, ...],
    cms: dict[str, np.ndarray],
) -> tuple[tuple[str, ...], dict[str, np.ndarray], str]:
    """Partial labels only (e.g. 0|3 and 1|2): score per group, as train validates them.

    Returns ``(names, cms, how)`` by groups, or the ones given when the labels form no groups.
    """
    from cloudcps.train import validation_scores

    grouped = {name: validation_scores(c, list(classes)) for name, c in by_code.items()}
    if all(g.get("grouped") for g in grouped.values()):
        names = tuple(next(iter(grouped.values()))["classes"])
        cms = {n: np.asarray(g["confusion"], np.int64) for n, g in grouped.items()}
        return names, cms, ", by groups of the partial labels"
    return names, cms, ""
