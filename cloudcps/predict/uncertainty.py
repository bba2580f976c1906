"""How unsure a model is, pixel by pixel: the uncertainty layer of ``predict`` and ``suggest``.

Two measures, both in [0, 1] (0 = certain, 1 = most unsure), stored as uint8 ``round(u x 255)``:

* ``disagreement`` (a CPS run, both networks): the Jensen-Shannon divergence of the two networks'
  softmax, in bits, ``H((p1 + p2) / 2) - (H(p1) + H(p2)) / 2``. It is 0 where the networks give the
  same distribution (however flat) and 1 only where they are sure of two different classes. CPS
  trains the two networks to agree on unlabelled pixels, so where they still disagree the data
  did not teach them: the signal costs the second network's forward pass and nothing else.
* ``entropy`` (one network, or a checkpoint that holds one): the normalised entropy
  ``H(p) / log(K)`` of the (blended) softmax. It is 0 for a one-hot prediction and 1 for the
  uniform distribution over the K classes; 0.5 is about a 60/40 split between two classes.

A pixel counts as *unsure* when ``u >= UNSURE`` (0.5, 128 in the GeoTIFF); the JSON report of
``predict`` gives the share of valid pixels above it and ``suggest`` leaves such pixels 255
(unlabelled) in its label templates.

The measures are computed from the blended probabilities of each window region as it is
written (:class:`UncertaintySink`), so they stream with the mask and keep its memory bound.
For ``disagreement`` each network's softmax is blended separately (the engine carries 2K
instead of K channels; :class:`PairRunner`), and the mask is the argmax of their mean, the
same as ``--nets both`` without the layer.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
from rasterio.windows import Window

from cloudcps.errors import InputError
from cloudcps.predict.backends import InferenceModel, Runner, load_model

Measure = Literal["disagreement", "entropy"]
UNSURE = 0.5  # u at or above this is "unsure" (uint8 >= 128)
UNSURE_U8 = math.ceil(UNSURE * 255)  # 128
_TINY = np.float32(1e-12)


def entropy(probs: np.ndarray, base: float | None = None) -> np.ndarray:
    """Entropy of (K, h, w) probabilities over the first axis, float32; ``base`` None: divided by
    ``log(K)`` (so in [0, 1])."""
    k = probs.shape[0]
    logp = np.log(np.maximum(probs, _TINY))
    h = -np.einsum("khw,khw->hw", probs, logp, dtype=np.float32)
    div = math.log(base) if base is not None else math.log(max(k, 2))
    return np.asarray(h / np.float32(div), np.float32)


def disagreement(p1: np.ndarray, p2: np.ndarray) -> np.ndarray:
    """Jensen-Shannon divergence (bits, in [0, 1]) of two (K, h, w) softmax outputs."""
    m = (p1 + p2) * np.float32(0.5)
    js = entropy(m, 2.0) - np.float32(0.5) * (entropy(p1, 2.0) + entropy(p2, 2.0))
    return np.asarray(np.clip(js, 0.0, 1.0), np.float32)


def measure_of(members: int) -> Measure:
    return "disagreement" if members >= 2 else "entropy"


def split_members(probs: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean probabilities (K, h, w) and uncertainty (h, w) in [0, 1] of the engine's output for
    a region: K channels (one network: normalised entropy) or 2K (two networks' softmax one
    after the other: their disagreement)."""
    members = probs.shape[0] // k
    if members == 1:
        return probs, np.clip(entropy(probs), 0.0, 1.0)
    if members != 2 or probs.shape[0] != 2 * k:
        raise ValueError(f"expected {k} or {2 * k} channels, got {probs.shape[0]}")
    p1, p2 = probs[:k], probs[k:]
    return (p1 + p2) * np.float32(0.5), disagreement(p1, p2)


def to_u8(u: np.ndarray) -> np.ndarray:
    """Uncertainty in [0, 1] as uint8 0..255."""
    return np.clip(np.rint(u * np.float32(255.0)), 0, 255).astype(np.uint8)


def uncertainty_path(mask: Path) -> Path:
    """``NAME_uncertainty.tif`` beside ``NAME_mask.tif`` (or ``NAME.tif``)."""
    stem = mask.stem[: -len("_mask")] if mask.stem.endswith("_mask") else mask.stem
    return mask.with_name(f"{stem}_uncertainty.tif")


# --------------------------------------------------------------------------------------------
# Two networks' softmax side by side
# --------------------------------------------------------------------------------------------


class PairRunner:
    """Runs two runners (a CPS run's networks 1 and 2) on the same batch and returns their
    probabilities one after the other, (N, 2K, H, W); ``members`` tells the engine so."""

    members = 2

    def __init__(self, first: Runner, second: Runner) -> None:
        self.first, self.second = first, second
        self.name, self.device = first.name, first.device

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return np.concatenate([self.first(x), self.second(x)], axis=1)


def networks_in(model: InferenceModel) -> int:
    """How many networks the checkpoint behind ``model`` holds."""
    meta = getattr(model.runner, "meta", None)
    if isinstance(meta, dict) and str(meta.get("nets_total", "")).isdigit():
        return int(meta["nets_total"])
    from cloudcps.models import load_checkpoint

    return len(load_checkpoint(model.path).get("nets", []))


def load_for_uncertainty(
    model: str | os.PathLike[str],
    nets: str = "both",
    backend: str = "auto",
    device: str | None = None,
    threads: int | None = None,
) -> InferenceModel:
    """A model whose runner also gives what the uncertainty needs: with ``nets`` ``both`` and a
    checkpoint of two networks, both networks' softmax (:class:`PairRunner`, measure
    ``disagreement``); otherwise the chosen network (measure ``entropy``)."""
    if nets not in ("1", "2", "both"):
        raise InputError(f"--nets {nets}: choose 1, 2 or both")
    first = load_model(model, nets="1" if nets == "both" else nets, backend=backend,
                       device=device, threads=threads)  # fmt: skip
    if nets != "both" or networks_in(first) < 2:
        return first
    second = load_model(model, nets="2", backend=backend, device=device, threads=threads)
    return InferenceModel(
        first.contract, PairRunner(first.runner, second.runner), first.path, first.iteration,
        "1,2",
    )  # fmt: skip


def members_of(model: InferenceModel) -> int:
    """Probability sets the runner of ``model`` returns side by side (1, or 2 for a pair)."""
    return int(getattr(model.runner, "members", 1))


# --------------------------------------------------------------------------------------------
# Sinks
# --------------------------------------------------------------------------------------------


class UncertaintySink:
    """Receives the engine's regions (K or 2K channels), hands the mean probabilities to
    ``inner`` (the mask's sink) and writes the uncertainty as uint8 into the open GeoTIFF
    ``dst`` (nodata kept as its internal mask; 0 there). Without ``dst`` it only averages the
    networks for ``inner``."""

    def __init__(self, inner: Any, dst: Any, k: int) -> None:
        self.inner, self.dst, self.k = inner, dst, k
        self.valid_pixels = 0
        self.unsure_pixels = 0

    def write(self, row: int, col: int, probs: np.ndarray, valid: np.ndarray) -> None:
        if self.dst is None:
            k = self.k
            mean = probs if probs.shape[0] == k else (probs[:k] + probs[k:]) * np.float32(0.5)
            self.inner.write(row, col, mean, valid)
            return
        mean, u = split_members(probs, self.k)
        self.inner.write(row, col, mean, valid)
        q = to_u8(u)
        q[~valid] = 0
        h, w = valid.shape
        win = Window(col, row, w, h)
        self.dst.write(q, 1, window=win)
        self.dst.write_mask(np.where(valid, np.uint8(255), np.uint8(0)), window=win)
        self.valid_pixels += int(valid.sum())
        self.unsure_pixels += int(np.count_nonzero(q[valid] >= UNSURE_U8))

    @property
    def unsure_percent(self) -> float:
        if not self.valid_pixels:
            return 0.0
        return round(100.0 * self.unsure_pixels / self.valid_pixels, 4)


@contextlib.contextmanager
def open_uncertainty(path: Path | None, profile: dict[str, Any]) -> Iterator[Any]:
    """The uncertainty GeoTIFF on the mask's grid (``profile``), open for writing; None without
    ``path``. Uint8 without a nodata value (255 is a value: most unsure); nodata pixels are
    marked in its internal mask, as GDAL and QGIS read it."""
    if path is None:
        yield None
        return
    import rasterio

    with (
        rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True),
        rasterio.open(path, "w", count=1, dtype="uint8", **profile) as dst,
    ):
        yield dst


def describe_measure(members: int) -> str:
    if members >= 2:
        return (
            "disagreement of the two CPS networks: Jensen-Shannon divergence of their softmax in "
            "bits (0 = same distribution, 1 = each sure of another class)"
        )
    return "normalised entropy of the softmax, H(p) / log(K) (0 = one-hot, 1 = uniform)"


def finish_uncertainty(dst: Any, members: int, sink: UncertaintySink) -> None:
    """Describe the uncertainty GeoTIFF in its tags and band description."""
    from cloudcps import __version__

    dst.set_band_description(1, f"uncertainty ({measure_of(members)}): value / 255")
    dst.update_tags(
        MEASURE=measure_of(members),
        DEFINITION=describe_measure(members),
        SCALE="uncertainty = value / 255 (0 certain, 255 most unsure)",
        UNSURE_THRESHOLD=f"{UNSURE_U8} (u >= {UNSURE})",
        UNSURE_PERCENT=f"{sink.unsure_percent:.4f}",
        SOFTWARE=f"cloudcps {__version__}",
    )


def uncertainty_report(path: Path, members: int, sink: UncertaintySink) -> dict[str, Any]:
    """The ``uncertainty`` entry of predict's JSON report."""
    return {
        "file": str(path),
        "measure": measure_of(members),
        "definition": describe_measure(members),
        "scale": "value / 255",
        "unsure_threshold": UNSURE,
        "unsure_percent": sink.unsure_percent,
    }
