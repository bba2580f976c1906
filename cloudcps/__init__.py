"""cloudcps: cloud and cloud-shadow masking with Cross Pseudo Supervision.

The library's public API, one import away (as segmentation-models-pytorch and rasterio expose
theirs)::

    from cloudcps import tile_scenes, TrainConfig, Trainer, load_model, predict_scene, predict_array

Each name lives in the package of its stage (docs/architecture.md): ``cloudcps.scenes`` opens
scenes and products, ``cloudcps.tiling`` cuts them into tiles, ``cloudcps.train`` learns,
``cloudcps.predict`` masks whole scenes, ``cloudcps.evaluate`` scores, ``cloudcps.suggest`` picks
the tiles to label next. The names load on first use (PEP 562): ``import cloudcps`` stays cheap,
and ONNX prediction never imports torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> the module that defines it
_API: dict[str, str] = {
    "CloudCPSError": "cloudcps.errors",
    "InputError": "cloudcps.errors",
    "DataContract": "cloudcps.contract",
    "Scene": "cloudcps.scenes",
    "open_scene": "cloudcps.scenes",
    "TileOptions": "cloudcps.tiling",
    "TileSummary": "cloudcps.tiling",
    "tile_scenes": "cloudcps.tiling",
    "TrainConfig": "cloudcps.train.config",
    "Trainer": "cloudcps.train",
    "TrainResult": "cloudcps.train",
    "InferenceModel": "cloudcps.predict.backends",
    "load_model": "cloudcps.predict.backends",
    "PredictOptions": "cloudcps.predict",
    "PredictResult": "cloudcps.predict",
    "predict_array": "cloudcps.predict",
    "predict_scene": "cloudcps.predict",
    "evaluate_rasters": "cloudcps.evaluate",
    "suggest_tiles": "cloudcps.suggest",
}

__all__ = ["__version__", *_API]

if TYPE_CHECKING:
    from cloudcps.contract import DataContract as DataContract
    from cloudcps.errors import CloudCPSError as CloudCPSError
    from cloudcps.errors import InputError as InputError
    from cloudcps.evaluate import evaluate_rasters as evaluate_rasters
    from cloudcps.predict import PredictOptions as PredictOptions
    from cloudcps.predict import PredictResult as PredictResult
    from cloudcps.predict import predict_array as predict_array
    from cloudcps.predict import predict_scene as predict_scene
    from cloudcps.predict.backends import InferenceModel as InferenceModel
    from cloudcps.predict.backends import load_model as load_model
    from cloudcps.scenes import Scene as Scene
    from cloudcps.scenes import open_scene as open_scene
    from cloudcps.suggest import suggest_tiles as suggest_tiles
    from cloudcps.tiling import TileOptions as TileOptions
    from cloudcps.tiling import TileSummary as TileSummary
    from cloudcps.tiling import tile_scenes as tile_scenes
    from cloudcps.train import Trainer as Trainer
    from cloudcps.train import TrainResult as TrainResult
    from cloudcps.train.config import TrainConfig as TrainConfig


def __getattr__(name: str) -> Any:
    """Import a public name's module the first time the name is used."""
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'cloudcps' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_API})
