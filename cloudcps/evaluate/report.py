"""Write an :class:`~cloudcps.evaluate.scoring.Evaluation` out: report.json, report.md,
confusion.png (row-normalised confusion matrices) and samples.png (image, reference and each
entry's prediction side by side)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from cloudcps import __version__
from cloudcps.evaluate.scoring import Evaluation
from cloudcps.io import atomic_dir, check_owned, remove_stale_temps, writing
from cloudcps.metrics import scores
from cloudcps.predict import class_colours


def _fmt(v: float | None, pct: bool = True) -> str:
    if v is None:
        return "-"
    return f"{100 * v:.1f}" if pct else f"{v:.4f}"


def write_report(
    ev: Evaluation, out: str | os.PathLike[str], overwrite: bool = False
) -> dict[str, Any]:
    """Write ``report.json``, ``report.md``, ``confusion.png`` and ``samples.png`` into ``out``.

    ``report.json`` lists the files written (``written_files``): ``--overwrite`` later replaces
    those and refuses a folder holding anything else."""
    results = {name: scores(cm, ev.classes) for name, cm in ev.confusion.items()}
    files = ["report.json", "report.md", "confusion.png"] + (["samples.png"] if ev.samples else [])
    report = {
        "cloudcps_version": __version__,
        "source": ev.source,
        "classes": list(ev.classes),
        "results": results,
        **ev.details,
        "written_files": files,
    }
    out_path = Path(out)
    remove_stale_temps([out_path])  # what a SIGKILL of an earlier run into --out left
    with writing(out_path), atomic_dir(out_path, overwrite) as tmp:
        (tmp / "report.json").write_text(json.dumps(report, indent=2) + "\n")
        (tmp / "report.md").write_text(_markdown(ev, results))
        _plot_confusion(ev, tmp / "confusion.png")
        if ev.samples:
            _plot_samples(ev, tmp / "samples.png")
        if overwrite and out_path.is_dir() and any(out_path.iterdir()):
            check_owned(out_path, "report")  # again: a file may have been added meanwhile
    return report


def _markdown(ev: Evaluation, results: dict[str, dict[str, Any]]) -> str:
    names = list(results)
    lines = [f"# Evaluation: {ev.source}", "", "## Summary (%)", ""]
    lines.append("| | " + " | ".join(names) + " |")
    lines.append("|---" * (len(names) + 1) + "|")
    for key, label in (
        ("miou", "mIoU"),
        ("mean_f1", "mean F1"),
        ("pixel_accuracy", "pixel accuracy"),
    ):
        lines.append(f"| {label} | " + " | ".join(_fmt(results[n][key]) for n in names) + " |")
    for metric, title in (
        ("iou", "IoU"),
        ("f1", "F1"),
        ("precision", "Precision"),
        ("recall", "Recall"),
    ):
        lines += ["", f"## Per-class {title} (%)", ""]
        lines.append("| class | " + " | ".join(names) + " | reference pixels |")
        lines.append("|---" * (len(names) + 2) + "|")
        for c, cname in enumerate(ev.classes):
            ref_px = results[names[0]]["reference_pixels"][c]
            cells = " | ".join(_fmt(results[n][metric][c]) for n in names)
            lines.append(f"| {cname} | {cells} | {ref_px} |")
    for n in names:
        lines += ["", f"## Confusion matrix: {n} (rows reference, columns prediction; pixels)", ""]
        lines.append("| | " + " | ".join(ev.classes) + " |")
        lines.append("|---" * (len(ev.classes) + 1) + "|")
        for c, row in enumerate(results[n]["confusion"]):
            lines.append(f"| {ev.classes[c]} | " + " | ".join(str(v) for v in row) + " |")
    return "\n".join(lines) + "\n"


def _plot_confusion(ev: Evaluation, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(ev.confusion)
    k = len(ev.classes)
    fig, axes = plt.subplots(1, n, figsize=(2.2 + 1.1 * k * n, 1.6 + 1.0 * k), squeeze=False)
    for ax, (name, cm) in zip(axes[0], ev.confusion.items(), strict=True):
        rows = cm.sum(1, keepdims=True)
        norm = np.divide(cm, rows, out=np.zeros(cm.shape, float), where=rows > 0)
        ax.imshow(norm, vmin=0, vmax=1, cmap="Blues")
        for i in range(k):
            for j in range(k):
                ax.text(
                    j,
                    i,
                    f"{norm[i, j]:.2f}",
                    ha="center",
                    va="center",
                    color="white" if norm[i, j] > 0.6 else "black",
                    fontsize=8,
                )
        ax.set_xticks(range(k), ev.classes, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(k), ev.classes, fontsize=8)
        ax.set_xlabel("prediction")
        ax.set_ylabel("reference")
        ax.set_title(f"{name} (row-normalised)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def colourise(labels: np.ndarray, k: int) -> np.ndarray:
    """RGB picture of class ids; ignore/nodata in black."""
    pal = np.zeros((256, 3), np.uint8)
    for i, c in enumerate(class_colours(k)):
        pal[i] = c[:3]
    return pal[labels]


def _plot_samples(ev: Evaluation, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    k = len(ev.classes)
    models = list(ev.samples[0]["predictions"])
    cols = 2 + len(models)
    fig, axes = plt.subplots(
        len(ev.samples), cols, figsize=(2.6 * cols, 2.6 * len(ev.samples) + 0.6), squeeze=False
    )
    for row, s in zip(axes, ev.samples, strict=True):
        panels = [("image", s["image"]), ("reference", colourise(s["reference"], k))]
        panels += [(m, colourise(s["predictions"][m], k)) for m in models]
        for ax, (title, img) in zip(row, panels, strict=True):
            if img is None:
                ax.text(0.5, 0.5, "image n/a", ha="center", va="center")
            else:
                ax.imshow(img, interpolation="nearest")
            ax.set_title(f"{title}" if title != "image" else s["title"], fontsize=8)
            ax.axis("off")
    handles = [
        Patch(facecolor=(c[0] / 255, c[1] / 255, c[2] / 255), edgecolor="0.3", label=n)
        for n, c in zip(ev.classes, class_colours(k), strict=True)
    ]
    handles.append(Patch(facecolor="black", edgecolor="0.3", label="ignore / nodata"))
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 6), fontsize=8)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(path, dpi=100)
    plt.close(fig)
