"""What a run writes as it goes: ``metrics.jsonl`` rows (and TensorBoard scalars, when
tensorboard is installed) of the main process, and the running means a training row holds."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch


class Logbook:
    """``RUN/metrics.jsonl`` and ``RUN/tb`` of the main process (other ranks write nothing)."""

    def __init__(self, out: Path, main: bool) -> None:
        self.out = out
        self.main = main
        self.writer = _tensorboard(out) if main else None

    def write(self, row: dict[str, Any]) -> None:
        """Append ``row`` to metrics.jsonl; its numbers (but the iteration) go to TensorBoard."""
        if not self.main:
            return
        with open(self.out / "metrics.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        if self.writer is not None:
            for k, v in row.items():
                if isinstance(v, (int, float)) and k != "iter":
                    self.writer.add_scalar(k, v, row["iter"])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _tensorboard(out: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception:  # tensorboard is optional
        return None
    return SummaryWriter(str(out / "tb"))


def validation_row(iteration: int, result: dict[str, Any]) -> dict[str, Any]:
    """The metrics row of a validation: the selected network and each network's (m)IoU."""
    row: dict[str, Any] = {"iter": iteration, "event": "val", "selected": str(result["selected"])}
    for name in [k for k in result if k != "selected"]:
        row[f"miou_{name}"] = result[name]["miou"]
        row[f"iou_{name}"] = result[name]["iou"]
    return row


class Accumulator:
    """Running means of losses and pseudo-label class counts between two log rows."""

    def __init__(self, k: int) -> None:
        self.k = k
        self.n = 0
        self.sums = {
            "loss": 0.0,
            "loss_sup": 0.0,
            "loss_cps": 0.0,
            "cps_weight": 0.0,
            "seconds": 0.0,
        }
        self.counts = {
            "labeled": torch.zeros(k, dtype=torch.float64),
            "pseudo": torch.zeros(k, dtype=torch.float64),
            "kept": torch.zeros(k, dtype=torch.float64),
        }
        self.valid_u = 0.0

    def add(self, stats: dict[str, Any], seconds: float) -> None:
        self.n += 1
        for key in ("loss", "loss_sup", "loss_cps"):
            self.sums[key] += float(stats[key])
        self.sums["cps_weight"] += float(stats.get("cps_weight", 0.0))
        self.sums["seconds"] += seconds
        for key in self.counts:
            if key in stats:
                self.counts[key] += stats[key]
        self.valid_u += float(stats.get("valid_u", 0.0))

    def summary(self, classes: tuple[str, ...]) -> dict[str, Any]:
        n = max(1, self.n)
        row: dict[str, Any] = {k: v / n for k, v in self.sums.items()}
        row["seconds_per_iter"] = row.pop("seconds")

        def share(c: torch.Tensor, total: float) -> list[float]:
            return [round(float(v) / total, 5) if total > 0 else 0.0 for v in c]

        row["labeled_share"] = share(self.counts["labeled"], float(self.counts["labeled"].sum()))
        if self.valid_u > 0:
            row["pseudo_share"] = share(self.counts["pseudo"], self.valid_u)
            # kept share: of all valid unlabelled pixels, those kept with each class
            row["kept_share"] = share(self.counts["kept"], self.valid_u)
        row["classes"] = list(classes)
        return row
