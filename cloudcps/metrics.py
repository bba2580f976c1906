"""Confusion matrices and the scores derived from them (IoU, F1, precision, recall)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch


def confusion_matrix(
    pred: np.ndarray | torch.Tensor,
    ref: np.ndarray | torch.Tensor,
    num_classes: int,
    ignore_index: int = 255,
) -> np.ndarray:
    """``C[i, j]`` = pixels of reference class ``i`` predicted as ``j`` (ignored pixels skipped)."""
    if isinstance(pred, torch.Tensor):
        p = pred.reshape(-1).long()
        r = ref.reshape(-1).long()  # type: ignore[union-attr]
        keep = (r != ignore_index) & (r >= 0) & (r < num_classes) & (p >= 0) & (p < num_classes)
        idx = r[keep] * num_classes + p[keep]
        cm = torch.bincount(idx, minlength=num_classes * num_classes)
        return cm.reshape(num_classes, num_classes).cpu().numpy().astype(np.int64)
    p_np = np.asarray(pred).reshape(-1).astype(np.int64)
    r_np = np.asarray(ref).reshape(-1).astype(np.int64)
    keep_np = (
        (r_np != ignore_index)
        & (r_np >= 0)
        & (r_np < num_classes)
        & (p_np >= 0)
        & (p_np < num_classes)
    )
    idx_np = r_np[keep_np] * num_classes + p_np[keep_np]
    return np.bincount(idx_np, minlength=num_classes * num_classes).reshape(
        num_classes, num_classes
    )


def scores(cm: np.ndarray, class_names: Sequence[str] | None = None) -> dict[str, Any]:
    """Per-class IoU, F1, precision, recall, mIoU and pixel accuracy of a confusion matrix.

    A class absent from both reference and prediction has no IoU (``None``) and is left out of
    the mean; mIoU averages the classes that occur.
    """
    cm = np.asarray(cm, dtype=np.float64)
    k = cm.shape[0]
    tp = np.diag(cm)
    fp = cm.sum(0) - tp
    fn = cm.sum(1) - tp

    def ratio(a: np.ndarray, b: np.ndarray) -> list[float | None]:
        return [float(x / y) if y > 0 else None for x, y in zip(a, b, strict=True)]

    iou = ratio(tp, tp + fp + fn)
    f1 = ratio(2 * tp, 2 * tp + fp + fn)
    precision = ratio(tp, tp + fp)
    recall = ratio(tp, tp + fn)
    present = [v for v in iou if v is not None]
    total = cm.sum()
    names = list(class_names) if class_names is not None else [str(i) for i in range(k)]
    return {
        "classes": names,
        "iou": iou,
        "f1": f1,
        "precision": precision,
        "recall": recall,
        "miou": float(np.mean(present)) if present else None,
        "mean_f1": float(np.mean([v for v in f1 if v is not None])) if present else None,
        "pixel_accuracy": float(tp.sum() / total) if total > 0 else None,
        "pixels": int(total),
        "reference_pixels": [int(v) for v in cm.sum(1)],
        "predicted_pixels": [int(v) for v in cm.sum(0)],
        "confusion": cm.astype(np.int64).tolist(),
    }


def merge_confusion(cm: np.ndarray, mapping: Sequence[int], num_out: int) -> np.ndarray:
    """Fold classes: ``mapping[i]`` is the new id of old class ``i``."""
    out = np.zeros((num_out, num_out), dtype=np.int64)
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            out[mapping[i], mapping[j]] += int(cm[i, j])
    return out
