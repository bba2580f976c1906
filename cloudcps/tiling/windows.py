"""The tile grid: full ``tile x tile`` windows over a scene, the last reaching its far edge."""

from __future__ import annotations

import math

from rasterio.windows import Window


def grid_offsets(length: int, tile: int, overlap: int) -> list[int]:
    """Tile start offsets along one axis; the last tile reaches (and may pass) the far edge."""
    stride = tile - overlap
    n = 1 + max(0, math.ceil((length - tile) / stride))
    return [i * stride for i in range(n)]


def tile_windows(width: int, height: int, tile: int, overlap: int) -> list[Window]:
    """Full ``tile x tile`` windows covering the scene, in row-major order."""
    return [
        Window(col, row, tile, tile)
        for row in grid_offsets(height, tile, overlap)
        for col in grid_offsets(width, tile, overlap)
    ]


def clip_window(window: Window, width: int, height: int) -> Window:
    """The part of ``window`` inside a ``width`` x ``height`` scene."""
    return Window(
        window.col_off,
        window.row_off,
        min(window.width, width - window.col_off),
        min(window.height, height - window.row_off),
    )
