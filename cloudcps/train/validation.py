"""Validation: every network (and the two networks' ensemble) on the validation split, scored.

The counts are of (label value 0..255, predicted class), so partial labels (sets of classes)
score too: :func:`validation_scores` falls back to IoU per group of the partial labels where a
split holds no exactly labelled pixel, and best.pt is still selected.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cloudcps.contract import is_partial, partial_classes
from cloudcps.metrics import scores
from cloudcps.train.data import SegmentationDataset

log = logging.getLogger(__name__)


def pad_to_multiple(x: torch.Tensor, multiple: int = 32) -> tuple[torch.Tensor, int, int]:
    """Pad (B, C, H, W) at the bottom/right to a multiple of ``multiple`` (reflect)."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph or pw:
        mode = "reflect" if ph < h and pw < w else "replicate"
        x = F.pad(x, (0, pw, 0, ph), mode=mode)
    return x, h, w


@torch.no_grad()
def evaluate_networks(
    nets: list[nn.Module],
    dataset: SegmentationDataset,
    num_classes: int,
    device: torch.device,
    amp: torch.dtype | None = None,
) -> dict[str, np.ndarray]:
    """Counts of (label value 0..255, predicted class) of each network and of their ensemble
    (mean softmax) on ``dataset``: rows below ``num_classes`` are the confusion matrix, the
    partial-label rows feed :func:`validation_scores`."""
    was_training = [n.training for n in nets]
    for n in nets:
        n.eval()
    names = [f"net{i + 1}" for i in range(len(nets))] + (["ensemble"] if len(nets) > 1 else [])
    cms = {k: np.zeros((256, num_classes), np.int64) for k in names}
    for i in range(len(dataset)):
        s = dataset[i]
        x, h, w = pad_to_multiple(s["image"][None].to(device))
        mask = s["mask"].to(device)
        mask = torch.where(s["valid"].to(device), mask, torch.full_like(mask, 255))
        probs = []
        for k, net in enumerate(nets):
            with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
                logits = net(x)[..., :h, :w]
            p = logits.float().softmax(1)
            probs.append(p)
            cms[f"net{k + 1}"] += label_pred_counts(p.argmax(1)[0], mask, num_classes)
        if len(nets) > 1:
            mean = torch.stack(probs).mean(0)
            cms["ensemble"] += label_pred_counts(mean.argmax(1)[0], mask, num_classes)
    for n, t in zip(nets, was_training, strict=True):
        n.train(t)
    return cms


def label_pred_counts(pred: torch.Tensor, mask: torch.Tensor, num_classes: int) -> np.ndarray:
    """(256, k) pixel counts of label value by predicted class."""
    idx = mask.reshape(-1).long() * num_classes + pred.reshape(-1).long()
    counts = torch.bincount(idx, minlength=256 * num_classes)
    return counts.reshape(256, num_classes).cpu().numpy().astype(np.int64)


def validation_scores(counts: np.ndarray, names: tuple[str, ...] | list[str]) -> dict[str, Any]:
    """Scores of (label value, predicted class) counts: IoU per class on the exactly labelled
    pixels; where there are none, IoU per group of the partial labels (e.g. cloud vs not cloud
    for labels ``0|3`` and ``1|2``), so a validation split of coarse labels still selects
    best.pt. Overlapping groups give no score (``miou`` None)."""
    k = len(names)
    exact = counts[:k]
    if exact.sum() > 0:
        return scores(exact, names)
    sets = [
        partial_classes(code) for code in range(256) if is_partial(code) and counts[code].sum() > 0
    ]
    used = [c for st in sets for c in st]
    if not sets or len(used) != len(set(used)):
        return scores(exact, names)
    groups = sets + [(c,) for c in range(k) if c not in used]
    group_of = {c: g for g, st in enumerate(groups) for c in st}
    grouped = np.zeros((len(groups), len(groups)), np.int64)
    for code in range(256):
        if is_partial(code) and counts[code].sum() > 0:
            g = group_of[partial_classes(code)[0]]
            for j in range(k):
                grouped[g, group_of[j]] += counts[code, j]
    result = scores(grouped, ["+".join(names[c] for c in st) for st in groups])
    result["grouped"] = True
    return result


def validate(
    nets: list[nn.Module],
    dataset: SegmentationDataset,
    classes: tuple[str, ...],
    device: torch.device,
    amp: torch.dtype | None = None,
) -> dict[str, Any]:
    """Scores of each network and of their ensemble on ``dataset``; ``selected`` names the one
    best.pt is chosen by (the ensemble when there are two networks)."""
    cms = evaluate_networks(nets, dataset, len(classes), device, amp)
    result = {name: validation_scores(cm, classes) for name, cm in cms.items()}
    key = "ensemble" if "ensemble" in result else "net1"
    result["selected"] = key  # type: ignore[assignment]
    return result


class Selection:
    """What best.pt is: the best validation score so far (``best``), and the last validation.

    Args:
        val_split: the validation split's name, for the warning when it gives no score.
    """

    def __init__(self, val_split: str) -> None:
        self.val_split = val_split
        self.best: dict[str, Any] = {"miou": None, "iteration": None}
        self.last_val: dict[str, Any] | None = None
        self._warned_no_score = False

    def record(self, result: dict[str, Any], iteration: int) -> bool:
        """Keep ``result`` as the last validation; True when it is the best so far (best.pt is
        due)."""
        self.last_val = result
        key = str(result["selected"])
        miou = result[key]["miou"]
        if miou is None and not self._warned_no_score:
            self._warned_no_score = True
            log.warning(
                "the validation split %r gives no score (no exactly labelled pixel, and "
                "no partial labels of disjoint classes): best.pt will be the final "
                "iteration; tile with --val scenes that have labels",
                self.val_split,
            )
        if miou is not None and (self.best["miou"] is None or miou > self.best["miou"]):
            self.best = {"miou": miou, "iteration": iteration, "net": key}
            return True
        return False
