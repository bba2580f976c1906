"""The window grid over a scene and the blending weights of its windows.

Windows are spread evenly: the fewest windows of at most ``tile`` px that cover the scene with
at least ``overlap`` px between neighbours, shrunk (in steps of 32 px) so that they end at the
scene's edge instead of running far past it. Each window's softmax is multiplied by a smooth
weight that is 0 in the outer quarter of the overlap and rises with a cosine ramp across its
middle half; on the scene border the weight stays 1. The weights of neighbouring windows sum to
exactly 1 everywhere (a partition of unity), so blending needs no normalising buffer and shows
no seams, and window-edge pixels, whose context is cut off, never count where a neighbour sees
them from inside.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np


def axis_windows(length: int, tile: int, overlap: int) -> tuple[int, int, list[int]]:
    """Window size, overlap and start offsets along one axis.

    The fewest windows of at most ``tile`` px that cover ``length`` with ``overlap`` px between
    neighbours; their size is then shrunk to the smallest multiple of 32 that still covers, so
    the last window ends less than 32 px per window past the edge.
    """
    size = min(tile, 32 * math.ceil(length / 32))
    ov = min(overlap, size // 2)
    n = max(1, math.ceil((length - ov) / (size - ov)))
    if n > 1:
        size = min(size, 32 * math.ceil((length + (n - 1) * ov) / n / 32))
        ov = min(ov, size // 2)
    stride = size - ov
    return size, ov, [i * stride for i in range(n)]


def ramp(size: int, overlap: int, lead_border: bool, trail_border: bool) -> np.ndarray:
    """1-D blending weight of a window; neighbours' weights sum to 1 (see the module docstring)."""
    w = np.ones(size, dtype=np.float64)
    if overlap <= 0:
        return w.astype(np.float32)
    margin = overlap // 4
    width = max(overlap - 2 * margin, 1)
    d = np.arange(size) + 0.5

    def r(dist: np.ndarray) -> np.ndarray:
        t = np.clip((dist - margin) / width, 0.0, 1.0)
        return np.asarray(0.5 - 0.5 * np.cos(np.pi * t))

    if not lead_border:
        w *= r(d)
    if not trail_border:
        w *= r(size - d)
    return w.astype(np.float32)


def weigh(p: np.ndarray, w: np.ndarray, ov: int, axis: int) -> None:
    """Multiply ``p`` (K, h, w) in place by the 1-D blend weight ``w`` along ``axis``; the weight
    is 1 except within ``ov`` of either end, so only those strips are touched."""
    if not ov:
        return
    n = w.shape[0]
    for sl in (slice(0, ov), slice(n - ov, n)):
        ws = w[sl]
        if np.all(ws == 1.0):
            continue
        if axis == 1:
            p[:, sl, :] *= ws[None, :, None]
        else:
            p[:, :, sl] *= ws[None, None, :]


def chunks(items: list[Any], n: int) -> Iterator[list[Any]]:
    """``items`` in consecutive lists of ``n`` (the last may be shorter)."""
    for i in range(0, len(items), n):
        yield items[i : i + n]
