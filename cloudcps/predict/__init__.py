"""Sliding-window prediction of whole scenes into georeferenced mask GeoTIFFs.

The scene is read window by window on a regular grid of ``tile`` x ``tile`` windows that overlap
by ``overlap`` pixels. Each window's softmax is multiplied by a smooth weight that is 0 in the outer
quarter of the overlap and rises with a cosine ramp across its middle half; on the scene border
the weight stays 1. The weights of neighbouring windows sum to exactly 1 everywhere (a partition
of unity), so blending needs no normalising buffer and shows no seams, and window-edge pixels,
whose context is cut off, never count where a neighbour sees them from inside.

Memory is constant in the scene's height and nearly so in its width: the engine keeps the
blended probabilities of one window (K x tile x tile), the overlap still owed to the next window
in the row (K x tile x overlap) and the overlap still owed to the next row of windows
(K x overlap x width), and writes every region the moment no later window can touch it.

Windows are spread evenly: the fewest windows of at most ``tile`` px that cover the scene with
at least ``overlap`` px between neighbours, shrunk (in steps of 32 px) so that they end at the
scene's edge instead of running far past it. A reader thread reads and normalises the next
windows and a writer thread writes finished regions while the network runs, so computing never
waits for GDAL; both queues are short, so memory stays flat in the scene's size.

A window without a valid pixel costs nothing: its data is not read and the network does not
run on it (no valid pixel lies within it, so none of its blended values is ever kept; the mask
is nodata there), so a scene that is mostly nodata takes the time of its valid part.

The networks run on a backend (:mod:`cloudcps.predict.backends`): ONNX Runtime on the CPU by
default, PyTorch on CUDA or MPS; both get the same normalised windows and return probabilities.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import math
import os
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.windows import Window

from cloudcps import __version__
from cloudcps.bands import DEFAULT_ORDER, needs_bands_message, raster_bands
from cloudcps.contract import DataContract, Stretch, gdal_env, scale_values
from cloudcps.errors import CloudCPSError, InputError
from cloudcps.io import (
    GDAL_ERRORS,
    atomic_file,
    check_output_file,
    read_valid_mask,
    reading,
    writing,
)
from cloudcps.predict.backends import InferenceModel, describe, from_loaded, is_out_of_memory
from cloudcps.predict.uncertainty import (
    UncertaintySink,
    finish_uncertainty,
    members_of,
    open_uncertainty,
    uncertainty_path,
    uncertainty_report,
)
from cloudcps.scenes import (  # noqa: F401  (default_mask_path, output_paths: were here)
    Scene,
    SceneRef,
    as_ref,
    default_mask_path,
    output_paths,
    sidecars,
    source_tags,
)

if TYPE_CHECKING:
    import torch

    from cloudcps.models import LoadedModel

    ModelLike = LoadedModel | InferenceModel
    DeviceLike = torch.device | str | None

T = TypeVar("T")

log = logging.getLogger(__name__)

NODATA = 255
# colours of the default classes: clear, thick cloud, thin cloud, cloud shadow
DEFAULT_COLOURS: tuple[tuple[int, int, int, int], ...] = (
    (46, 139, 87, 255),
    (255, 255, 255, 255),
    (135, 206, 250, 255),
    (105, 75, 55, 255),
)


def class_colours(n: int) -> list[tuple[int, int, int, int]]:
    """RGBA colours for ``n`` classes: the cloud palette for 4 classes, tab20 otherwise."""
    if n <= len(DEFAULT_COLOURS):
        return list(DEFAULT_COLOURS[:n])
    import matplotlib

    cmap = matplotlib.colormaps["tab20"]
    return [tuple(int(255 * c) for c in cmap(i % 20)) for i in range(n)]  # type: ignore[misc]


@dataclass
class PredictOptions:
    """Options of :func:`predict_scene`; ``None`` sizes come from the checkpoint's contract."""

    tile_size: int | None = None
    overlap: int | None = None
    batch_size: int | None = None
    tta: bool = False
    probabilities: bool = False
    buffer: int = 0
    bands: tuple[int, ...] | None = None
    overwrite: bool = False
    scale: float | None = None  # None: the model's (the tiles' --scale / --offset)
    offset: float | None = None
    cog: bool = False
    uncertainty: bool = False  # also NAME_uncertainty.tif (cloudcps.predict.uncertainty)


@dataclass
class PredictResult:
    scene: Path
    mask: Path | None
    probabilities: Path | None
    stats: Path | None
    cover_percent: dict[str, float]
    valid_pixels: int
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# Window grid and blending weights
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# Sources and sinks
# --------------------------------------------------------------------------------------------


class Source(Protocol):
    height: int
    width: int

    def read(self, row: int, col: int, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
        """Raw data (C, h, w) and valid mask (h, w) of a window that may pass the edges."""
        ...


def _pad_window(
    data: np.ndarray, valid: np.ndarray, h: int, w: int
) -> tuple[np.ndarray, np.ndarray]:
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
                return _pad_window(np.zeros(shape, self.src.dtypes[0]), valid, h, w)
            data = self.src.read(self.bands, window=win)
        if np.issubdtype(data.dtype, np.floating):
            valid &= np.all(np.isfinite(data), axis=0)
            data = np.nan_to_num(data)
        return _pad_window(data, valid, h, w)


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
        return _pad_window(data, valid, h, w)


class Sink(Protocol):
    def write(self, row: int, col: int, probs: np.ndarray, valid: np.ndarray) -> None:
        """Receive final blended probabilities (K, h, w) of a region and its valid mask."""
        ...


# --------------------------------------------------------------------------------------------
# The engine
# --------------------------------------------------------------------------------------------


def as_inference(model: ModelLike, device: DeviceLike = None) -> InferenceModel:
    """An :class:`~cloudcps.predict.backends.InferenceModel`; a ``LoadedModel`` is wrapped."""
    if isinstance(model, InferenceModel):
        return model
    return from_loaded(model, device or "cpu")


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


def check_window_options(
    tile_size: int | None, overlap: int | None, batch_size: int | None
) -> None:
    """Refuse ``--tile-size``, ``--overlap`` or ``--batch-size`` out of range (``None``: the
    default, always fine)."""
    if tile_size is not None and not (32 <= tile_size <= MAX_TILE and tile_size % 32 == 0):
        raise InputError(
            f"--tile-size {tile_size} must be a multiple of 32, at least 32 and at most {MAX_TILE}"
        )
    if overlap is not None and not 0 <= overlap <= (tile_size or MAX_TILE) // 2:
        raise InputError(f"--overlap {overlap} must be between 0 and half of --tile-size")
    if batch_size is not None and not 1 <= batch_size <= MAX_BATCH:
        raise InputError(f"--batch-size {batch_size} must be between 1 and {MAX_BATCH}")


class Predictor:
    """Runs a model over sources window by window.

    Args:
        model: an :class:`~cloudcps.predict.backends.InferenceModel`
            (:func:`cloudcps.predict.backends.load_model`, any backend) or a PyTorch
            ``LoadedModel`` (:func:`cloudcps.models.load_for_inference`).
        device: where a ``LoadedModel`` runs (ignored for an ``InferenceModel``).
        tile_size, overlap: window geometry (defaults: the contract's tile size, 64 px).
        batch_size: windows per forward pass (default 8 on CUDA, 1 on the CPU, where batching
            only costs memory).
        tta: average the softmax of the image and its horizontal and vertical flips.
        scale, offset: applied to the scene's values before the stretch.
    """

    def __init__(
        self,
        model: ModelLike,
        device: DeviceLike = None,
        tile_size: int | None = None,
        overlap: int | None = None,
        batch_size: int | None = None,
        tta: bool = False,
        scale: float | None = None,
        offset: float | None = None,
    ) -> None:
        check_window_options(tile_size, overlap, batch_size)
        self.model = as_inference(model, device)
        self.contract: DataContract = self.model.contract
        # the scaling the tiles were made with, unless overridden
        scale = self.contract.scale if scale is None else scale
        offset = self.contract.offset if offset is None else offset
        if not (math.isfinite(scale) and scale > 0 and math.isfinite(offset)):
            raise InputError(f"--scale {scale} must be > 0 and --offset {offset} finite")
        self.scale, self.offset = scale, offset
        self.runner = self.model.runner
        self.tile = tile_size or self.contract.tile_size
        if self.tile < 32 or self.tile % 32 or self.tile > MAX_TILE:
            raise InputError(
                f"--tile-size {self.tile} must be a multiple of 32, at least 32 and at most "
                f"{MAX_TILE}"
            )
        self.overlap = min(DEFAULT_OVERLAP, self.tile // 4) if overlap is None else overlap
        if not 0 <= self.overlap <= self.tile // 2:
            raise InputError(
                f"--overlap {self.overlap} must be between 0 and half of --tile-size ({self.tile})"
            )
        on_gpu = self.runner.device.startswith(("cuda", "mps"))
        self.batch_size = max(1, batch_size or (8 if on_gpu else 1))
        self.tta = tta
        self.transform = InputTransform(self.contract, scale, offset)
        self.k = self.contract.num_classes
        # a runner may return several networks' probabilities side by side (the uncertainty
        # layer's PairRunner): the engine blends them all, the sink splits them
        self.channels = self.k * int(getattr(self.runner, "members", 1))

    def _infer(self, x: np.ndarray) -> np.ndarray:
        try:
            if not self.tta:
                return self.runner(x)
            out = self.runner(x)
            for axis in (-1, -2):
                flipped = np.ascontiguousarray(np.flip(x, axis))
                out += np.flip(self.runner(flipped), axis)
            return out / np.float32(3.0)
        except CloudCPSError:
            raise
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            n, _, h, w = x.shape
            raise InputError(
                f"out of memory running the network ({self.runner.name} on {self.runner.device}) "
                f"on {n} window(s) of {w}x{h} px; lower --batch-size (now {self.batch_size}) or "
                f"--tile-size (now {self.tile}), or close other programs"
            ) from None

    def _infer_valid(self, x: np.ndarray, valids: list[np.ndarray]) -> np.ndarray:
        """Probabilities of a batch; windows without a valid pixel cost nothing (zeros: no valid
        pixel lies within such a window, so none of its blended values is ever kept)."""
        keep = [i for i, v in enumerate(valids) if v.any()]
        if len(keep) == len(valids):
            return self._infer(x)
        out = np.zeros((x.shape[0], self.channels, *x.shape[2:]), np.float32)
        if keep:
            out[keep] = self._infer(np.ascontiguousarray(x[keep]))
        return out

    def run(
        self, source: Source, sink: Sink, progress: bool = False, background: bool = True
    ) -> None:
        """Predict ``source`` and hand every finished region to ``sink`` (see the module doc).

        With ``background`` the next windows are read and finished regions written in two
        threads beside the computation.
        """
        from tqdm import tqdm

        H, W, K = source.height, source.width, self.channels
        th, oy, rows = axis_windows(H, self.tile, self.overlap)
        tw, ox, cols = axis_windows(W, self.tile, self.overlap)
        sy, sx = th - oy, tw - ox
        wy = [ramp(th, oy, i == 0, i == len(rows) - 1) for i in range(len(rows))]
        wx = [ramp(tw, ox, j == 0, j == len(cols) - 1) for j in range(len(cols))]
        jobs = [
            (i, r, batch)
            for i, r in enumerate(rows)
            for batch in _chunks(list(enumerate(cols)), self.batch_size)
        ]

        def read(job: tuple[int, int, list[tuple[int, int]]]) -> tuple[np.ndarray, list[Any]]:
            _, r, batch = job
            xs, valids = [], []
            for _, c in batch:
                data, valid = source.read(r, c, th, tw)
                if valid.any():
                    xs.append(self.transform(data, valid))
                else:
                    xs.append(np.zeros((data.shape[0], th, tw), np.float32))
                valids.append(valid)
            return np.stack(xs), valids

        vcarry = np.zeros((K, oy, cols[-1] + tw), np.float32)  # owed to the next row of windows
        hcarry = np.zeros((K, th, ox), np.float32)  # owed to the next window in the row
        bar = tqdm(total=len(rows) * len(cols), unit="win", desc="predict", disable=not progress)
        out = _WriteBehind(sink) if background else sink
        try:
            for (i, r, batch), (x, valids) in _prefetch(read, jobs, 2 if background else 0):
                last_row = i == len(rows) - 1
                probs = self._infer_valid(x, valids)
                for (j, c), p, valid in zip(batch, probs, valids, strict=True):
                    if j == 0:
                        hcarry[:] = 0
                    last_col = j == len(cols) - 1
                    _weigh(p, wy[i], oy, 1)
                    _weigh(p, wx[j], ox, 2)
                    if ox:
                        p[:, :, :ox] += hcarry
                        hcarry[:] = p[:, :, sx:]
                    ncols = tw if last_col else sx
                    block = p[:, :, :ncols]
                    if oy:
                        block[:, :oy] += vcarry[:, :, c : c + ncols]
                        if not last_row:
                            vcarry[:, :, c : c + ncols] = block[:, sy:]
                    nrows = th if last_row else sy
                    h, w = min(nrows, H - r), min(ncols, W - c)
                    if h > 0 and w > 0:
                        out.write(r, c, block[:, :h, :w], valid[:h, :w])
                    bar.update(1)
            if isinstance(out, _WriteBehind):
                out.close()
        finally:
            if isinstance(out, _WriteBehind):
                out.abort()
            bar.close()


DEFAULT_OVERLAP = 64
MAX_TILE = 8192
MAX_BATCH = 1024


def _weigh(p: np.ndarray, w: np.ndarray, ov: int, axis: int) -> None:
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


def _chunks(items: list[Any], n: int) -> Iterator[list[Any]]:
    for i in range(0, len(items), n):
        yield items[i : i + n]


_DONE = object()


def _prefetch(
    func: Callable[[Any], T], items: Iterable[Any], depth: int
) -> Iterator[tuple[Any, T]]:
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


class _Failure:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


class _WriteBehind:
    """Runs ``sink.write`` in a thread, a few regions behind the caller."""

    def __init__(self, sink: Sink, depth: int = 3) -> None:
        self.sink = sink
        self.q: queue.Queue[Any] = queue.Queue(maxsize=depth)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._work, name="cloudcps-write", daemon=True)
        self.thread.start()

    def _work(self) -> None:
        while True:
            item = self.q.get()
            if item is _DONE:
                return
            if self.error is None:
                try:
                    self.sink.write(*item)
                except BaseException as exc:
                    self.error = exc

    def write(self, row: int, col: int, probs: np.ndarray, valid: np.ndarray) -> None:
        if self.error is not None:
            raise self.error
        self.q.put((row, col, probs, valid))

    def close(self) -> None:
        """Wait for every region to be written; re-raise a write error."""
        self.q.put(_DONE)
        self.thread.join()
        if self.error is not None:
            raise self.error

    def abort(self) -> None:
        if self.thread.is_alive():
            self.error = self.error or RuntimeError("aborted")
            self.q.put(_DONE)
            self.thread.join()


def argmax_classes(probs: np.ndarray) -> np.ndarray:
    """``probs.argmax(0)`` as uint8 (first class wins ties), in contiguous passes (faster than
    numpy's argmax over the first axis)."""
    cls = np.zeros(probs.shape[1:], np.uint8)
    best = probs[0].copy()
    for k in range(1, probs.shape[0]):
        better = probs[k] > best
        cls[better] = k
        np.maximum(best, probs[k], out=best)
    return cls


# --------------------------------------------------------------------------------------------
# Sinks: arrays and GeoTIFFs
# --------------------------------------------------------------------------------------------


class ArraySink:
    """Collects classes (and probabilities) into arrays."""

    def __init__(self, height: int, width: int, k: int, keep_probs: bool = True) -> None:
        self.classes = np.full((height, width), NODATA, np.uint8)
        self.probs = np.zeros((k, height, width), np.float32) if keep_probs else None

    def write(self, row: int, col: int, probs: np.ndarray, valid: np.ndarray) -> None:
        h, w = valid.shape
        cls = argmax_classes(probs)
        cls[~valid] = NODATA
        self.classes[row : row + h, col : col + w] = cls
        if self.probs is not None:
            self.probs[:, row : row + h, col : col + w] = probs


class RasterSink:
    """Writes class ids (uint8, 255 nodata) and optionally probabilities to open GeoTIFFs."""

    def __init__(self, mask: Any, probs: Any | None, k: int) -> None:
        self.mask, self.probs = mask, probs
        self.counts = np.zeros(k, np.int64)
        self.k = k

    def write(self, row: int, col: int, probs: np.ndarray, valid: np.ndarray) -> None:
        h, w = valid.shape
        win = Window(col, row, w, h)
        cls = argmax_classes(probs)
        cls[~valid] = NODATA
        self.mask.write(cls, 1, window=win)
        self.counts += np.bincount(cls[valid], minlength=self.k)[: self.k]
        if self.probs is not None:
            q = np.clip(np.rint(probs * 255), 0, 255).astype(np.uint8)
            q[:, ~valid] = 0
            self.probs.write(q, window=win)


def buffer_classes(
    classes: np.ndarray, radius: int, order: Sequence[int] = (1, 2, 3)
) -> np.ndarray:
    """Grow cloud and shadow classes by ``radius`` pixels into clear pixels (priority: ``order``).

    Only clear (0) pixels change; nodata (255) stays nodata.
    """
    from skimage.morphology import dilation, disk

    if radius <= 0:
        return classes
    out = classes.copy()
    fp = disk(radius, decomposition="sequence")  # type: ignore[no-untyped-call]
    for c in order:
        grown = dilation((classes == c).astype(np.uint8), fp).astype(bool)
        out[grown & (out == 0)] = c
    return out


# --------------------------------------------------------------------------------------------
# Scenes
# --------------------------------------------------------------------------------------------


def resolve_bands(
    contract: DataContract,
    count: int,
    path: Path,
    bands: Sequence[int] | None,
    named: tuple[int, ...] | None = None,
) -> list[int]:
    """The 1-based R,G,B band numbers of ``path`` that feed the model.

    ``bands`` (``--bands``) decides when given (every number must exist in the file). Else the
    file's own band metadata (``named``: :func:`cloudcps.bands.raster_bands`) decides; a file of
    more than 4 bands that names none needs ``--bands``, unless the model was trained on
    such files with other bands than 1,2,3 (its contract's).
    """
    if bands is not None:
        over = [b for b in bands if b > count]
        if over:
            raise InputError(
                f"--bands {','.join(map(str, bands))}: scene {path} has only {count} band(s), "
                f"so there is no band {over[0]}; give numbers from 1 to {count}"
            )
        chosen = list(bands)[:3]
    elif named is not None:
        chosen = list(named[:3])
        if tuple(chosen) != tuple(contract.bands[:3]):
            log.info("%s names its bands: reading R,G,B from bands %s", path, chosen)
    elif count > 4 and tuple(contract.bands[:3]) == DEFAULT_ORDER[:3]:
        raise InputError(needs_bands_message(path, count))
    elif count >= max(contract.bands[:3]):
        chosen = list(contract.bands[:3])
    elif count == 3:
        log.info("%s has 3 bands: reading them as R,G,B", path)
        chosen = [1, 2, 3]
    else:
        names = ",".join(contract.band_names[: len(contract.bands)]).upper()
        raise InputError(
            f"scene {path} has {count} band(s); the model reads R,G,B from bands "
            f"{','.join(map(str, contract.bands[:3]))} ({names} at "
            f"{','.join(map(str, contract.bands))}): give a 4-band or RGB scene, or --bands R,G,B"
        )
    if max(chosen) > count:
        raise InputError(f"--bands {','.join(map(str, chosen))}: {path} has only {count} band(s)")
    return chosen


def check_value_range(
    src: rasterio.DatasetReader,
    bands: Sequence[int],
    contract: DataContract,
    scale: float = 1.0,
    offset: float = 0.0,
    sample: tuple[np.ndarray, np.ndarray] | None = None,
    name: str | None = None,
) -> str | None:
    """A warning when the scene's values are far outside what the model's stretch expects.

    A model trained on reflectance x 10000 turns reflectance in 0-1 into a black image, and
    8-bit or differently scaled data into nonsense, without any error: a sample of the scene
    (:func:`sample_scene`, or ``sample`` when the caller has read it) is compared with the
    contract's stretch range.
    """
    st = contract.stretch
    shown = name or src.name
    if st.method == "none":
        return None
    data, valid = sample or sample_scene(src, bands)
    with np.errstate(over="ignore"):  # a float64 scene near its largest values
        values = data[:, valid].astype(np.float64) * scale + offset
    values = values[:, np.all(np.isfinite(values), axis=0)]
    if values.size == 0:
        return None
    lo, hi = min(st.low), max(st.high)
    p50, p99 = (float(v) for v in np.percentile(values, [50, 99]))
    expects = f"the model expects values in about {lo:g}..{hi:g}"
    if st.method == "fixed" and hi >= 1000:
        expects += " (reflectance x 10000, as Sentinel-2 L1C/L2A and Landsat TOA products)"
    if p99 < lo + 0.03 * (hi - lo):
        return (
            f"scene {shown} reaches only {p99:.4g} (99th percentile) but {expects}: the mask "
            "will be wrong; scale the values with --scale (e.g. --scale 10000 for reflectance in "
            "0-1)"
        )
    if p50 > hi:
        return (
            f"scene {shown} has a median of {p50:.4g}, above the top of the stretch; {expects}: "
            "the mask will be wrong; scale the values with --scale (e.g. --scale 0.1) or --offset"
        )
    return None


def sample_scene(
    src: rasterio.DatasetReader, bands: Sequence[int], grid: int = 6, size: int = 128
) -> tuple[np.ndarray, np.ndarray]:
    """A cheap sample of a scene's values and valid mask: its overviews when it has some, else
    ``grid`` x ``grid`` small windows spread over it (a decimated read of a scene without
    overviews decodes every block: seconds for a Sentinel-2 scene)."""
    if src.overviews(bands[0]) or max(src.width, src.height) <= grid * size:
        f = max(1.0, max(src.width, src.height) / 512)
        shape = (max(1, round(src.height / f)), max(1, round(src.width / f)))
        data = src.read(list(bands), out_shape=(len(bands), *shape), resampling=Resampling.nearest)
        return data, read_valid_mask(src, tuple(bands), out_shape=shape)
    parts, masks = [], []
    h, w = min(size, src.height), min(size, src.width)
    for i in range(grid):
        for j in range(grid):
            r = round((src.height - h) * (i + 0.5) / grid)
            c = round((src.width - w) * (j + 0.5) / grid)
            win = Window(c, r, w, h)
            parts.append(src.read(list(bands), window=win))
            masks.append(read_valid_mask(src, tuple(bands), window=win))
    return np.concatenate(parts, axis=2), np.concatenate(masks, axis=1)


def degenerate_warnings(
    src: rasterio.DatasetReader,
    bands: Sequence[int],
    sample: tuple[np.ndarray, np.ndarray] | None = None,
    name: str | None = None,
) -> list[str]:
    """Warnings for scenes that predict without error but not usefully: tiny, all nodata, or
    with non-finite values (judged on :func:`sample_scene`, or ``sample``)."""
    out = []
    shown = name or src.name
    if min(src.width, src.height) < 32:
        out.append(
            f"scene {shown} is only {src.width}x{src.height} px; the network sees mostly "
            "padding below 32 px, so the mask is unreliable"
        )
    data, valid = sample or sample_scene(src, bands)
    if data.dtype.kind == "f":
        bad = ~np.all(np.isfinite(data), axis=0)
        if bad.any():
            out.append(
                f"scene {shown}: {100 * bad.mean():.1f} % of the sampled pixels are NaN or "
                "infinite; they are masked as nodata (255)"
            )
            valid = valid & ~bad
    return out


def scene_gcps(src: rasterio.DatasetReader) -> tuple[list[Any], Any]:
    """The ground control points of a scene and their CRS when they are its georeferencing
    (no CRS, an identity transform); ``([], None)`` otherwise."""
    if src.crs is not None or not src.transform.is_identity:
        return [], None
    try:
        gcps, crs = src.gcps
    except (rasterio.errors.RasterioError, *GDAL_ERRORS):
        return [], None
    return list(gcps or []), crs


def quiet_libtiff() -> None:
    """Silence libtiff's default error handler, which prints lines such as "_tiffWriteProc: No
    space left on device." straight to stderr beside the one-line error (GDAL reports the same
    failure through its own handler, which stays). Best effort: for the libtiff bundled with
    rasterio's wheels; elsewhere nothing changes."""
    global _LIBTIFF_QUIET
    if _LIBTIFF_QUIET:
        return
    _LIBTIFF_QUIET = True
    import ctypes

    base = Path(rasterio.__file__).resolve().parent
    candidates = [*base.parent.glob("rasterio.libs/libtiff*"), *base.glob(".dylibs/libtiff*")]
    for lib_path in candidates:
        try:
            lib = ctypes.CDLL(str(lib_path))
            lib.TIFFSetErrorHandler.restype = ctypes.c_void_p
            lib.TIFFSetErrorHandler.argtypes = [ctypes.c_void_p]
            lib.TIFFSetErrorHandler(None)
        except (OSError, AttributeError):
            continue


_LIBTIFF_QUIET = False


def no_valid_pixel_warning(name: str) -> str:
    """The warning for a scene with no valid pixel at all (known once it has been read)."""
    return (
        f"scene {name} has no valid pixel (all nodata): the mask is nodata (255) wherever the "
        "scene is"
    )


def scene_bands(
    scene: str | os.PathLike[str] | SceneRef,
    contract: DataContract,
    bands: Sequence[int] | None = None,
) -> list[int]:
    """Open a scene and resolve the bands that feed the model (:func:`resolve_bands`): the
    checks :func:`predict_scene` makes, to make them for every scene before any work."""
    ref = as_ref(scene)
    with rasterio.Env(**gdal_env()), ref.open(bands) as opened:
        return _bands_of(opened, ref, contract, bands)


def _bands_of(
    opened: Scene, ref: SceneRef, contract: DataContract, bands: Sequence[int] | None
) -> list[int]:
    src = opened.dataset
    if opened.kind != "raster":
        assert opened.bands is not None
        return list(opened.bands[:3])
    named = raster_bands(src) if bands is None else None
    return resolve_bands(contract, src.count, ref.path, bands, named)


def predict_scene(
    scene: str | os.PathLike[str] | SceneRef,
    model: ModelLike,
    out: str | os.PathLike[str],
    options: PredictOptions | None = None,
    device: DeviceLike = None,
    progress: bool = False,
) -> PredictResult:
    """Predict one scene into a georeferenced mask GeoTIFF (plus probabilities and a JSON report).

    The mask has the scene's CRS, transform, width and height; it is uint8 class ids, 255 where
    the scene is nodata, tiled and deflate-compressed, with a colour table, the class names in its
    tags and band description, and per-class cover percentages in its tags and in ``NAME.json``.
    Everything is written under temporary names and renamed when complete.
    """
    opts = options or PredictOptions()
    loaded = as_inference(model, device)
    ref = as_ref(scene)
    scene_p, mask_p = ref.path, Path(out)
    proba_p, json_p = sidecars(mask_p)
    unc_p = uncertainty_path(mask_p) if opts.uncertainty else None
    for p in (
        [mask_p, json_p] + ([proba_p] if opts.probabilities else []) + ([unc_p] if unc_p else [])
    ):
        check_output_file(p, opts.overwrite, ref.inputs)
    t0 = time.perf_counter()
    contract = loaded.contract
    k = contract.num_classes
    predictor = Predictor(
        loaded,
        None,
        opts.tile_size,
        opts.overlap,
        opts.batch_size,
        opts.tta,
        opts.scale,
        opts.offset,
    )
    quiet_libtiff()
    with rasterio.Env(**gdal_env()), ref.open(opts.bands) as opened:
        src = opened.dataset
        bands = _bands_of(opened, ref, contract, opts.bands)
        with reading(ref.name):
            sample = sample_scene(src, bands)
        range_warning = check_value_range(
            src, bands, contract, predictor.scale, predictor.offset, sample, ref.name
        )
        notes = [range_warning] if range_warning else []
        notes += degenerate_warnings(src, bands, sample, ref.name)
        if opened.scaled and (predictor.scale, predictor.offset) != (1.0, 0.0):
            notes.append(
                f"{ref.name}: --scale {predictor.scale:g} / --offset {predictor.offset:g} apply "
                "on top of the product's own scaling (already reflectance x 10000)"
            )
        for note in notes:
            log.warning(note)
        gcps, gcp_crs = scene_gcps(src)
        if gcps:
            log.info(
                "scene %s is georeferenced by %d ground control points, not a transform: the "
                "mask carries the same GCPs (gdalwarp it for a regular grid)",
                ref.name,
                len(gcps),
            )
        profile: dict[str, Any] = {
            "driver": "GTiff",
            "width": src.width,
            "height": src.height,
            "crs": src.crs,
            "transform": src.transform,
            "tiled": True,
            "blockxsize": 256,
            "blockysize": 256,
            "compress": "deflate",
        }
        if gcps:  # rasterio writes the CRS given with GCPs as theirs
            profile.update(crs=gcp_crs, transform=None, gcps=gcps)
        with (
            atomic_file(mask_p, opts.overwrite) as tmp_mask,
            atomic_file(json_p, opts.overwrite) as tmp_json,
            _maybe_atomic(proba_p if opts.probabilities else None, opts.overwrite) as tmp_proba,
            _maybe_atomic(unc_p, opts.overwrite) as tmp_unc,
        ):
            stage = tmp_mask.with_name(tmp_mask.name + ".stage") if opts.cog else tmp_mask
            raw_mask = stage.with_name(stage.name + ".raw") if opts.buffer else stage
            proba_stage = (
                tmp_proba.with_name(tmp_proba.name + ".stage")
                if (opts.cog and tmp_proba is not None)
                else tmp_proba
            )
            unc_stage = (
                tmp_unc.with_name(tmp_unc.name + ".stage") if opts.cog and tmp_unc else tmp_unc
            )
            unc = UncertaintySink(None, None, k)
            try:
                with writing(mask_p, "mask"):
                    with rasterio.open(
                        raw_mask, "w", count=1, dtype="uint8", nodata=NODATA, **profile
                    ) as dst:
                        pdst = (
                            rasterio.open(proba_stage, "w", count=k, dtype="uint8", **profile)
                            if proba_stage is not None
                            else None
                        )
                        try:
                            sink = RasterSink(dst, pdst, k)
                            with open_uncertainty(unc_stage, profile) as udst:
                                unc = UncertaintySink(sink, udst, k)
                                split = predictor.channels > k or udst is not None
                                run_sink: Sink = unc if split else sink
                                predictor.run(
                                    RasterSource(src, bands, ref.name), run_sink, progress
                                )
                                if udst is not None:
                                    finish_uncertainty(udst, members_of(loaded), unc)
                            if pdst is not None:
                                pdst.scales = [1 / 255.0] * k
                                for i, name in enumerate(contract.classes):
                                    pdst.set_band_description(i + 1, f"p({name})")
                                pdst.update_tags(
                                    CLASSES=",".join(contract.classes),
                                    SCALE="probability = value / 255",
                                    SOFTWARE=f"cloudcps {__version__}",
                                )
                        finally:
                            if pdst is not None:
                                pdst.close()
                    counts = sink.counts
                    if opts.buffer:
                        counts = _buffer_raster(raw_mask, stage, opts.buffer, k, profile)
                    valid_px = int(counts.sum())
                    if valid_px == 0:
                        notes.append(no_valid_pixel_warning(ref.name))
                        log.warning(notes[-1])
                    cover = {
                        name: round(100.0 * float(c) / valid_px, 4) if valid_px else 0.0
                        for name, c in zip(contract.classes, counts, strict=True)
                    }
                    _finish_mask(stage, contract, cover, loaded, opts, opened)
                    if opts.cog:
                        write_cog(stage, tmp_mask, "mode")
                        if proba_stage is not None and tmp_proba is not None:
                            write_cog(proba_stage, tmp_proba, "average")
                        if unc_stage is not None and tmp_unc is not None:
                            write_cog(unc_stage, tmp_unc, "average")
            finally:
                for extra in {raw_mask, stage, proba_stage, unc_stage} - {
                    tmp_mask,
                    tmp_proba,
                    tmp_unc,
                    None,
                }:
                    if extra is not None and extra.exists():
                        extra.unlink()
            seconds = time.perf_counter() - t0
            report = {
                "scene": ref.name,
                "product_id": opened.product_id,
                "source": opened.record,
                "mask": str(mask_p),
                "probabilities": str(proba_p) if opts.probabilities else None,
                "model": str(loaded.path),
                "iteration": loaded.iteration,
                "classes": list(contract.classes),
                "cover_percent": cover,
                "valid_pixels": valid_px,
                "nodata_pixels": int(src.width * src.height - valid_px),
                "crs": src.crs.to_string() if src.crs else None,
                "transform": None if gcps else list(src.transform)[:6],
                "gcps": len(gcps) or None,
                "gcp_crs": gcp_crs.to_string() if gcps and gcp_crs else None,
                "width": src.width,
                "height": src.height,
                "bands": bands,
                "tile_size": predictor.tile,
                "overlap": predictor.overlap,
                **describe(loaded),
                "cog": opts.cog,
                "tta": opts.tta,
                "buffer": opts.buffer,
                "scale": predictor.scale,
                "offset": predictor.offset,
                "warnings": notes,
                "seconds": round(seconds, 3),
                "cloudcps_version": __version__,
            }
            if unc_p is not None:
                report["uncertainty"] = uncertainty_report(unc_p, members_of(loaded), unc)
            try:
                tmp_json.write_text(json.dumps(report, indent=2) + "\n")
            except OSError as exc:
                if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                    raise
                raise InputError(
                    f"could not write {json_p}: no space left on the disk; free some space or "
                    "choose another --out"
                ) from None
    return PredictResult(
        scene=scene_p,
        mask=mask_p,
        probabilities=proba_p if opts.probabilities else None,
        stats=json_p,
        cover_percent=cover,
        valid_pixels=valid_px,
        seconds=seconds,
        extra={"uncertainty": unc_p} if unc_p is not None else {},
    )


class _maybe_atomic:
    """``atomic_file`` when a path is given, else a context yielding ``None``."""

    def __init__(self, path: Path | None, overwrite: bool) -> None:
        self.cm = atomic_file(path, overwrite) if path is not None else None

    def __enter__(self) -> Path | None:
        return self.cm.__enter__() if self.cm is not None else None

    def __exit__(self, *exc: Any) -> bool | None:
        return self.cm.__exit__(*exc) if self.cm is not None else None


def _buffer_raster(
    src_path: Path, dst_path: Path, radius: int, k: int, profile: dict[str, Any]
) -> np.ndarray:
    """Dilate cloud/shadow classes block by block, each block read with a halo of ``radius``."""
    counts = np.zeros(k, np.int64)
    block = 1024
    with (
        rasterio.open(src_path) as src,
        rasterio.open(dst_path, "w", count=1, dtype="uint8", nodata=NODATA, **profile) as dst,
    ):
        for r in range(0, src.height, block):
            for c in range(0, src.width, block):
                r0, c0 = max(0, r - radius), max(0, c - radius)
                r1 = min(src.height, r + block + radius)
                c1 = min(src.width, c + block + radius)
                data = src.read(1, window=Window(c0, r0, c1 - c0, r1 - r0))
                grown = buffer_classes(data, radius)
                h, w = min(block, src.height - r), min(block, src.width - c)
                core = grown[r - r0 : r - r0 + h, c - c0 : c - c0 + w]
                dst.write(core, 1, window=Window(c, r, w, h))
                counts += np.bincount(core[core != NODATA], minlength=k)[:k]
    return counts


def write_cog(src: Path, dst: Path, resampling: str) -> None:
    """Copy a GeoTIFF to a Cloud Optimized GeoTIFF (GDAL's COG driver) with overviews made by
    ``resampling`` (``mode`` for classes, ``average`` for probabilities)."""
    from rasterio.shutil import copy as rio_copy

    rio_copy(
        src,
        dst,
        driver="COG",
        compress="DEFLATE",
        blocksize=512,
        overview_resampling=resampling.upper(),
        num_threads="ALL_CPUS",
    )


def _finish_mask(
    path: Path,
    contract: DataContract,
    cover: dict[str, float],
    loaded: InferenceModel,
    opts: PredictOptions,
    opened: Scene | None = None,
) -> None:
    colours = class_colours(contract.num_classes)
    cmap = {i: c for i, c in enumerate(colours)}
    cmap[NODATA] = (0, 0, 0, 0)
    with rasterio.open(path, "r+") as dst:
        dst.write_colormap(1, cmap)
        dst.set_band_description(
            1,
            "class: "
            + ", ".join(f"{i} {n}" for i, n in enumerate(contract.classes))
            + f", {NODATA} nodata",
        )
        tags = {f"CLASS_{i}": n for i, n in enumerate(contract.classes)}
        tags.update(
            {f"COVER_PERCENT_{n.upper().replace(' ', '_')}": f"{v:.4f}" for n, v in cover.items()}
        )
        tags.update(
            CLASSES=",".join(contract.classes),
            NODATA_VALUE=str(NODATA),
            MODEL=str(loaded.path),
            MODEL_ITERATION=str(loaded.iteration),
            BUFFER_PX=str(opts.buffer),
            SOFTWARE=f"cloudcps {__version__}",
        )
        if opened is not None:
            tags.update(source_tags(opened))
        dst.update_tags(**tags)


def predict_array(
    array: np.ndarray,
    model: ModelLike,
    valid: np.ndarray | None = None,
    tile_size: int | None = None,
    overlap: int | None = None,
    batch_size: int | None = None,
    tta: bool = False,
    device: DeviceLike = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Predict a (bands, H, W) array of raw scene values (R,G,B[,NIR] as in the contract).

    Returns:
        Class ids (H, W) uint8 (255 where ``valid`` is False) and probabilities (K, H, W).
    """
    if array.ndim != 3 or array.shape[0] < 3:
        raise InputError(f"expected an array of shape (bands>=3, H, W), got {array.shape}")
    predictor = Predictor(model, device, tile_size, overlap, batch_size, tta)
    sink = ArraySink(array.shape[1], array.shape[2], predictor.k)
    predictor.run(ArraySource(array[:3], valid), sink)
    assert sink.probs is not None
    return sink.classes, sink.probs
