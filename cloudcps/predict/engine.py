"""The sliding-window engine: a model run over a source window by window, blended without seams.

The scene is read window by window on a regular grid of ``tile`` x ``tile`` windows that overlap
by ``overlap`` pixels (:mod:`cloudcps.predict.windows`: the grid and the blending weights, which
sum to 1 everywhere, so blending needs no normalising buffer and shows no seams).

Memory is constant in the scene's height and nearly so in its width: the engine keeps the
blended probabilities of one window (K x tile x tile), the overlap still owed to the next window
in the row (K x tile x overlap) and the overlap still owed to the next row of windows
(K x overlap x width), and writes every region the moment no later window can touch it.
A reader thread reads and normalises the next windows and a writer thread writes finished
regions while the network runs, so computing never waits for GDAL; both queues are short, so
memory stays flat in the scene's size.

A window without a valid pixel costs nothing: its data is not read and the network does not
run on it (no valid pixel lies within it, so none of its blended values is ever kept; the mask
is nodata there), so a scene that is mostly nodata takes the time of its valid part.

The networks run on a backend (:mod:`cloudcps.predict.backends`): ONNX Runtime on the CPU by
default, PyTorch on CUDA or MPS; both get the same normalised windows and return probabilities.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from cloudcps.contract import DataContract
from cloudcps.errors import CloudCPSError, InputError
from cloudcps.predict.backends import InferenceModel, from_loaded, is_out_of_memory
from cloudcps.predict.outputs import ArraySink, Sink, WriteBehind
from cloudcps.predict.sources import ArraySource, InputTransform, Source, prefetch
from cloudcps.predict.windows import axis_windows, chunks, ramp, weigh

if TYPE_CHECKING:
    import torch

    from cloudcps.models import LoadedModel

    ModelLike = LoadedModel | InferenceModel
    DeviceLike = torch.device | str | None

DEFAULT_OVERLAP = 64
MAX_TILE = 8192
MAX_BATCH = 1024


def as_inference(model: ModelLike, device: DeviceLike = None) -> InferenceModel:
    """An :class:`~cloudcps.predict.backends.InferenceModel`; a ``LoadedModel`` is wrapped."""
    if isinstance(model, InferenceModel):
        return model
    return from_loaded(model, device or "cpu")


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
            for batch in chunks(list(enumerate(cols)), self.batch_size)
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
        out = WriteBehind(sink) if background else sink
        try:
            for (i, r, batch), (x, valids) in prefetch(read, jobs, 2 if background else 0):
                last_row = i == len(rows) - 1
                probs = self._infer_valid(x, valids)
                for (j, c), p, valid in zip(batch, probs, valids, strict=True):
                    if j == 0:
                        hcarry[:] = 0
                    last_col = j == len(cols) - 1
                    weigh(p, wy[i], oy, 1)
                    weigh(p, wx[j], ox, 2)
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
            if isinstance(out, WriteBehind):
                out.close()
        finally:
            if isinstance(out, WriteBehind):
                out.abort()
            bar.close()


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
