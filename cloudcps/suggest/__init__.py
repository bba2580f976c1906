"""Which tiles to label next: score every tile of a split by the model's uncertainty and pick a
spread-out few.

* :mod:`~cloudcps.suggest.scoring`: a tile's uncertainty, weighted toward rare classes (the
  score, and why);
* :mod:`~cloudcps.suggest.spread`: which ranked tiles to take (scene cap, no neighbours) and
  the label round they start;
* :mod:`~cloudcps.suggest.outputs`: suggestions.csv, suggestions.geojson, suggestions.png and
  the label templates ``labels/TILE.tif``;
* :mod:`~cloudcps.suggest.run`: :func:`suggest_tiles` end to end, and
  :func:`suggest_from_run` (what ``cloudcps suggest`` calls).
"""

from __future__ import annotations

from cloudcps.suggest.outputs import (
    LABEL_TAG,
    SHEET_TILES,
    footprint,
    label_template,
    write_csv,
    write_geojson,
    write_label_template,
    write_sheet,
)
from cloudcps.suggest.run import SuggestOptions, SuggestResult, suggest_from_run, suggest_tiles
from cloudcps.suggest.scoring import (
    MIN_SHARE,
    ArrayUncertaintySink,
    Candidate,
    TileScore,
    TileTransform,
    check_classes,
    class_weights,
    predict_tile,
    read_tile,
    tile_predictor,
)
from cloudcps.suggest.spread import next_round, pick, touches

__all__ = [
    "LABEL_TAG",
    "MIN_SHARE",
    "SHEET_TILES",
    "ArrayUncertaintySink",
    "Candidate",
    "SuggestOptions",
    "SuggestResult",
    "TileScore",
    "TileTransform",
    "check_classes",
    "class_weights",
    "footprint",
    "label_template",
    "next_round",
    "pick",
    "predict_tile",
    "read_tile",
    "suggest_from_run",
    "suggest_tiles",
    "tile_predictor",
    "touches",
    "write_csv",
    "write_geojson",
    "write_label_template",
    "write_sheet",
]
