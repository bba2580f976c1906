"""How unsure the model is on a tile, weighted toward the classes it rarely predicts.

**Score.** Each tile is predicted (both CPS networks when the run has two: their disagreement;
else the normalised entropy, see :mod:`cloudcps.predict.uncertainty`) and scored as

    score = sum over the tile's pixels of u(x) * sum_c p_c(x) * w_c  /  tile pixels

with u the uncertainty in [0, 1], p the mean softmax and w_c a class weight: rare classes weigh
more. The shares s_c of the classes are those the model predicts over the whole split (sum of
p_c over every valid pixel), and w_c = 1 / sqrt(max(s_c, 0.001)), scaled so that the average
pixel weighs 1 (sum_c s_c w_c = 1). Why: uncertainty alone ranks the edges of thick clouds first
(many pixels, a class the model already knows); the weak classes of a cloud mask (thin cloud,
shadow) are rare, and a model that is unsure between clear and shadow learns more from that
label than from another cloud edge. The square root keeps a class seen on a handful of pixels
from deciding alone; 0.001 caps its weight at about 32 times the average. Nodata and padding
count as certain, so a tile that is half nodata scores at most half.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cloudcps.contract import DataContract
from cloudcps.errors import InputError
from cloudcps.predict import ArraySource, InputTransform, Predictor, argmax_classes
from cloudcps.predict.backends import InferenceModel
from cloudcps.predict.uncertainty import split_members, to_u8

MIN_SHARE = 1e-3  # a class's share below this weighs as if it were this


@dataclass
class Candidate:
    """One tile's numbers (arrays are not kept: the chosen tiles are predicted again)."""

    tile: dict[str, Any]
    tile_pixels: int
    valid_pixels: int
    unsure_pixels: int
    prob_sum: np.ndarray
    weighted_u: np.ndarray
    class_counts: np.ndarray
    score: float = 0.0
    rank: int = 0
    rule: str = ""


@dataclass
class TileScore:
    """What one tile's prediction leaves for ranking: per-class sums over its valid pixels."""

    classes: np.ndarray  # (h, w) uint8 class ids, 255 outside the valid pixels
    uncertainty: np.ndarray  # (h, w) uint8 0..255
    valid: np.ndarray  # (h, w) bool
    prob_sum: np.ndarray  # (K,) sum of the mean probabilities over valid pixels
    weighted_u: np.ndarray  # (K,) sum of u x p_c over valid pixels


class ArrayUncertaintySink:
    """Collects one tile's classes, uncertainty and per-class sums (see :class:`TileScore`)."""

    def __init__(self, height: int, width: int, k: int) -> None:
        self.k = k
        self.classes = np.full((height, width), 255, np.uint8)
        self.u8 = np.zeros((height, width), np.uint8)
        self.valid = np.zeros((height, width), bool)
        self.prob_sum = np.zeros(k, np.float64)
        self.weighted_u = np.zeros(k, np.float64)

    def write(self, row: int, col: int, probs: np.ndarray, valid: np.ndarray) -> None:
        mean, u = split_members(probs, self.k)
        h, w = valid.shape
        cls = argmax_classes(mean)
        cls[~valid] = 255
        q = to_u8(u)
        q[~valid] = 0
        self.classes[row : row + h, col : col + w] = cls
        self.u8[row : row + h, col : col + w] = q
        self.valid[row : row + h, col : col + w] = valid
        pv = mean[:, valid].astype(np.float64)
        self.prob_sum += pv.sum(axis=1)
        self.weighted_u += pv @ u[valid].astype(np.float64)

    def result(self) -> TileScore:
        return TileScore(self.classes, self.u8, self.valid, self.prob_sum, self.weighted_u)


class TileTransform(InputTransform):
    """The input of the networks from an 8-bit tile (already stretched by ``cloudcps tile``):
    only the training normalisation."""

    def __call__(self, data: np.ndarray, valid: np.ndarray) -> np.ndarray:
        out = np.empty(data.shape, np.float32)
        for b in range(data.shape[0]):
            np.take(self.norm8[b], data[b], out=out[b])
        if not valid.all():
            out[:, ~valid] = self.fill[: data.shape[0], None]
        return out


def read_tile(folder: Any, tile_id: str) -> tuple[np.ndarray, np.ndarray]:
    """The RGB image (3, h, w) uint8 and valid mask (h, w) of a tile of a ``TileFolder``."""
    from PIL import Image

    item = folder.items([tile_id])[0]
    with Image.open(item.image) as im:
        img = np.asarray(im.convert("RGB")).transpose(2, 0, 1)
    if item.valid is not None:
        with Image.open(item.valid) as im:
            valid = np.asarray(im) > 0
    else:
        valid = np.ones(img.shape[1:], bool)
    return np.ascontiguousarray(img), valid


def predict_tile(predictor: Predictor, image: np.ndarray, valid: np.ndarray) -> TileScore:
    """Classes, uncertainty and per-class sums of one 8-bit tile (see :class:`TileScore`)."""
    sink = ArrayUncertaintySink(image.shape[1], image.shape[2], predictor.k)
    predictor.run(ArraySource(image, valid), sink, background=False)
    return sink.result()


def tile_predictor(model: InferenceModel, tile_size: int) -> Predictor:
    """A predictor that reads 8-bit tiles of side ``tile_size`` in one window."""
    size = 32 * math.ceil(tile_size / 32)
    predictor = Predictor(model, tile_size=size, overlap=0, batch_size=1)
    predictor.transform = TileTransform(model.contract)
    return predictor


def check_classes(model: InferenceModel, contract: DataContract, data: Path) -> None:
    if tuple(model.contract.classes) != tuple(contract.classes):
        raise InputError(
            f"--model {model.path} was trained for the classes {list(model.contract.classes)} "
            f"but the tiles of --data {data} have {list(contract.classes)}; give a run trained "
            "on tiles with these classes"
        )


def class_weights(shares: np.ndarray) -> np.ndarray:
    """w_c = 1 / sqrt(max(s_c, MIN_SHARE)), scaled so that sum_c s_c w_c = 1."""
    w = 1.0 / np.sqrt(np.maximum(shares, MIN_SHARE))
    norm = float((shares * w).sum())
    return w / norm if norm > 0 else np.ones_like(shares)
