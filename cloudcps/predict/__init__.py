"""Prediction: whole scenes (or arrays) to georeferenced masks, by sliding windows blended
without seams, on ONNX Runtime or PyTorch.

- :mod:`~cloudcps.predict.windows`: the window grid and the blending weights.
- :mod:`~cloudcps.predict.sources`: windows of scenes and arrays, normalised for the network;
  the read-ahead thread.
- :mod:`~cloudcps.predict.checks`: a scene's bands and the warnings about its values.
- :mod:`~cloudcps.predict.engine`: :class:`Predictor`, the model run window by window;
  :func:`predict_array`.
- :mod:`~cloudcps.predict.outputs`: sinks, the write-behind thread, the mask GeoTIFF's
  colours, tags, buffer and COG.
- :mod:`~cloudcps.predict.scene`: :func:`predict_scene`, one scene to its mask and report.
- :mod:`~cloudcps.predict.jobs`: a batch of scenes as ``cloudcps predict`` asks (which scenes,
  where masks go, what is skipped or replaced, torchrun ranks).
- :mod:`~cloudcps.predict.backends`: the runners (ONNX Runtime, PyTorch) and model loading;
  :mod:`~cloudcps.predict.graphs`: the ONNX graphs, exported, cached and checked;
  :mod:`~cloudcps.predict.ckptread`: a checkpoint's tensors read without PyTorch.
- :mod:`~cloudcps.predict.uncertainty`: the uncertainty layer.
"""

from __future__ import annotations

from cloudcps.predict.checks import (
    check_value_range,
    degenerate_warnings,
    no_valid_pixel_warning,
    resolve_bands,
    sample_scene,
    scene_bands,
)
from cloudcps.predict.engine import (
    DEFAULT_OVERLAP,
    MAX_BATCH,
    MAX_TILE,
    Predictor,
    as_inference,
    check_window_options,
    predict_array,
)
from cloudcps.predict.jobs import PredictJob, predict_scenes
from cloudcps.predict.outputs import (
    DEFAULT_COLOURS,
    NODATA,
    ArraySink,
    RasterSink,
    Sink,
    argmax_classes,
    buffer_classes,
    class_colours,
    quiet_libtiff,
    scene_gcps,
    write_cog,
)
from cloudcps.predict.scene import PredictOptions, PredictResult, predict_scene
from cloudcps.predict.sources import ArraySource, InputTransform, RasterSource, Source
from cloudcps.predict.windows import axis_windows, ramp
from cloudcps.scenes import default_mask_path, output_paths  # were here

__all__ = [
    "DEFAULT_COLOURS",
    "DEFAULT_OVERLAP",
    "MAX_BATCH",
    "MAX_TILE",
    "NODATA",
    "ArraySink",
    "ArraySource",
    "InputTransform",
    "PredictJob",
    "PredictOptions",
    "PredictResult",
    "Predictor",
    "RasterSink",
    "RasterSource",
    "Sink",
    "Source",
    "argmax_classes",
    "as_inference",
    "axis_windows",
    "buffer_classes",
    "check_value_range",
    "check_window_options",
    "class_colours",
    "default_mask_path",
    "degenerate_warnings",
    "no_valid_pixel_warning",
    "output_paths",
    "predict_array",
    "predict_scene",
    "predict_scenes",
    "quiet_libtiff",
    "ramp",
    "resolve_bands",
    "sample_scene",
    "scene_bands",
    "scene_gcps",
    "write_cog",
]
