"""What the engine reads: windows of a scene or an array, turned into the network's input.

A source hands out raw values and the valid mask of any window, padded where it passes the
scene's edge; :class:`InputTransform` turns raw values into the normalised float32 input the
networks were trained on; :func:`prefetch` reads the next windows in a thread while the network
runs, so computing never waits for GDAL.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Protocol, TypeVar

import numpy as np
import rasterio
from rasterio.windows import Window

from cloudcps.contract import DataContract, Stretch, scale_values
from cloudcps.errors import InputError
from cloudcps.io import read_valid_mask, reading

T = TypeVar("T")


class Source(Protocol):
    height: int
    width: int

    def read(self, row: int, col: int, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
        """Raw data (C, h, w) and valid mask (h, w) of a window that may pass the edges."""
        ...


def pad_window(
    data: np.ndarray, valid: np.ndarray, h: int, w: int
) -> tuple[np.ndarray, np.ndarray]:
    """A window cut short by the scene's edge, padded to ``h`` x ``w`` (reflected where it can
    be, repeated otherwise; the padding is not valid)."""
    dh, dw = h - data.shape[1], w - data.shape[2]
    if dh == 0 and dw == 0:
        return data, valid
    ok = data.shape[1] > dh and data.shape[2] > dw
    pad = ((0, 0), (0, dh), (0, dw))
    data = np.pad(data, pad, mode="reflect") if ok else np.pad(data, pad, mode="edge")
    valid = np.pad(valid, ((0, dh), (0, dw)), constant_values=False)
    return data, valid


class RasterSource:
    """Windowed reads of the model's bands from an open rasterio dataset."""

    def __init__(
        self, src: rasterio.DatasetReader, bands: Sequence[int], name: str | None = None
    ) -> None:
        self.src, self.bands = src, list(bands)
        self.name = name or src.name  # a product's stack is a VRT in memory: name the product
        self.height, self.width = src.height, src.width

    def read(self, row: int, col: int, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
        win = Window(col, row, min(w, self.width - col), min(h, self.height - row))
        with reading(self.name):
            valid = read_valid_mask(self.src, self.bands, window=win)
            if not valid.any():  # nothing to predict here: the values are never used
                shape = (len(self.bands), int(win.height), int(win.width))
                return pad_window(np.zeros(shape, self.src.dtypes[0]), valid, h, w)
            data = self.src.read(self.bands, window=win)
        if np.issubdtype(data.dtype, np.floating):
            valid &= np.all(np.isfinite(data), axis=0)
            data = np.nan_to_num(data)
        return pad_window(data, valid, h, w)


class ArraySource:
    """A (C, H, W) array of raw scene values as a source."""

    def __init__(self, array: np.ndarray, valid: np.ndarray | None = None) -> None:
        if array.ndim != 3:
            raise InputError(f"expected an array of shape (bands, H, W), got {array.shape}")
        self.array = array
        self.valid = np.ones(array.shape[1:], bool) if valid is None else valid.astype(bool)
        self.height, self.width = array.shape[1:]

    def read(self, row: int, col: int, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
        data = self.array[:, row : row + h, col : col + w]
        valid = self.valid[row : row + h, col : col + w]
        return pad_window(data, valid, h, w)


class InputTransform:
    """Raw scene values of a window to the normalised float32 input the networks were trained on.

    The same arithmetic as the tiler's 8-bit stretch followed by the training normalisation;
    for 8- and 16-bit data it is one table lookup per pixel (tables built by running that
    arithmetic over every possible value), for other types it is computed directly.
    """

    def __init__(self, contract: DataContract, scale: float = 1.0, offset: float = 0.0) -> None:
        self.stretch: Stretch = contract.stretch
        self.scale, self.offset = scale, offset
        mean = np.asarray(contract.mean, np.float32)
        std = np.asarray(contract.std, np.float32)
        u8 = np.arange(256, dtype=np.float32) / np.float32(255.0)
        self.norm8 = ((u8[None, :] - mean[:, None]) / std[:, None]).astype(np.float32)  # (3, 256)
        self.fill = self.norm8[:, 0]  # nodata pixels are 0 in the 8-bit tiles
        self._luts: dict[str, np.ndarray] = {}

    def _scaled(self, data: np.ndarray) -> np.ndarray:
        return scale_values(data, self.scale, self.offset)

    def _lut(self, dtype: np.dtype[Any], bands: int) -> np.ndarray:
        key = f"{dtype.str}:{bands}"
        if key not in self._luts:
            n = 1 << (8 * dtype.itemsize)
            values = np.broadcast_to(np.arange(n, dtype=dtype), (bands, 1, n))
            img = self.stretch.apply(self._scaled(values))[:, 0, :]  # (bands, n) uint8
            self._luts[key] = np.stack([self.norm8[b][img[b]] for b in range(bands)])
        return self._luts[key]

    def __call__(self, data: np.ndarray, valid: np.ndarray) -> np.ndarray:
        c = data.shape[0]
        out = np.empty(data.shape, np.float32)
        if data.dtype in (np.uint8, np.uint16):
            lut = self._lut(data.dtype, c)
            for b in range(c):
                np.take(lut[b], data[b], out=out[b])
        else:
            img = self.stretch.apply(self._scaled(data))
            for b in range(c):
                np.take(self.norm8[b], img[b], out=out[b])
        if not valid.all():
            out[:, ~valid] = self.fill[:c, None]
        return out


# --------------------------------------------------------------------------------------------
# The read-ahead thread
# --------------------------------------------------------------------------------------------

_DONE = object()


class _Failure:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


def prefetch(func: Callable[[Any], T], items: Iterable[Any], depth: int) -> Iterator[tuple[Any, T]]:
    """``(item, func(item))`` in order, computed up to ``depth`` items ahead in a thread."""
    if depth <= 0:
        for item in items:
            yield item, func(item)
        return
    q: queue.Queue[Any] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def work() -> None:
        try:
            for item in items:
                res = (item, func(item))
                while not stop.is_set():
                    try:
                        q.put(res, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
        except BaseException as exc:  # handed to the consumer, which re-raises it
            q.put(_Failure(exc))
            return
        q.put(_DONE)

    t = threading.Thread(target=work, name="cloudcps-read", daemon=True)
    t.start()
    try:
        while True:
            got = q.get()
            if got is _DONE:
                return
            if isinstance(got, _Failure):
                raise got.exc
            yield got
    finally:
        stop.set()
        while t.is_alive():  # unblock a producer waiting on a full queue
            with contextlib.suppress(queue.Empty):
                q.get(timeout=0.05)
        t.join()
