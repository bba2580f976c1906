"""What the engine writes to: sinks of blended probabilities (arrays, GeoTIFFs), the
write-behind thread, and the finishing of the mask GeoTIFF (colours, tags, buffer, COG).

The mask is uint8 class ids, 255 where the scene is nodata, tiled and deflate-compressed, with a
colour table, the class names in its tags and band description, and per-class cover
percentages in its tags; probabilities are uint8 (p x 255).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import rasterio
from rasterio.windows import Window

from cloudcps import __version__
from cloudcps.contract import DataContract
from cloudcps.io import GDAL_ERRORS, atomic_file
from cloudcps.predict.backends import InferenceModel
from cloudcps.scenes import Scene, source_tags

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


class Sink(Protocol):
    def write(self, row: int, col: int, probs: np.ndarray, valid: np.ndarray) -> None:
        """Receive final blended probabilities (K, h, w) of a region and its valid mask."""
        ...


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


_DONE = object()


class WriteBehind:
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


class maybe_atomic:
    """``atomic_file`` when a path is given, else a context yielding ``None``."""

    def __init__(self, path: Path | None, overwrite: bool) -> None:
        self.cm = atomic_file(path, overwrite) if path is not None else None

    def __enter__(self) -> Path | None:
        return self.cm.__enter__() if self.cm is not None else None

    def __exit__(self, *exc: Any) -> bool | None:
        return self.cm.__exit__(*exc) if self.cm is not None else None


def buffer_raster(
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


def finish_mask(
    path: Path,
    contract: DataContract,
    cover: dict[str, float],
    loaded: InferenceModel,
    buffer: int,
    opened: Scene | None = None,
) -> None:
    """Colour table, band description and tags (classes, cover, model, ``--buffer``, source)
    of a mask GeoTIFF whose classes are all written."""
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
            BUFFER_PX=str(buffer),
            SOFTWARE=f"cloudcps {__version__}",
        )
        if opened is not None:
            tags.update(source_tags(opened))
        dst.update_tags(**tags)


def mask_profile(src: rasterio.DatasetReader, gcps: list[Any], gcp_crs: Any) -> dict[str, Any]:
    """The GeoTIFF profile of a scene's mask and other rasters: the scene's grid (or its ground
    control points), tiled and deflate-compressed."""
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
    return profile


def describe_probabilities(pdst: Any, contract: DataContract) -> None:
    """Scale, band names and tags of an open probability GeoTIFF."""
    k = contract.num_classes
    pdst.scales = [1 / 255.0] * k
    for i, name in enumerate(contract.classes):
        pdst.set_band_description(i + 1, f"p({name})")
    pdst.update_tags(
        CLASSES=",".join(contract.classes),
        SCALE="probability = value / 255",
        SOFTWARE=f"cloudcps {__version__}",
    )


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
