"""Score models on a tile folder, or masks against reference rasters; write reports and plots.

Ignore pixels (255) and nodata are excluded from every score. Several models (or prediction sets)
are reported side by side. Classes can be folded (``merge``), e.g. thick + thin cloud -> cloud and
shadow -> clear, to score a 4-class model against a binary reference.

* :mod:`~cloudcps.evaluate.scoring`: class folding (:class:`ClassFold`, :func:`parse_merge`)
  and the :class:`Evaluation` every path returns;
* :mod:`~cloudcps.evaluate.tiles`: models on the labelled tiles of a split;
* :mod:`~cloudcps.evaluate.pairs`: which prediction raster goes with which reference;
* :mod:`~cloudcps.evaluate.rasters`: mask rasters against reference rasters, block by block;
* :mod:`~cloudcps.evaluate.report`: report.json, report.md, confusion.png and samples.png;
* :mod:`~cloudcps.evaluate.run`: what ``cloudcps evaluate`` does with its options.
"""

from __future__ import annotations

from cloudcps.evaluate.pairs import match_pairs
from cloudcps.evaluate.rasters import evaluate_rasters
from cloudcps.evaluate.report import colourise, write_report
from cloudcps.evaluate.run import EvaluateRequest, run_evaluation
from cloudcps.evaluate.scoring import ClassFold, Evaluation, parse_merge
from cloudcps.evaluate.tiles import evaluate_models_on_tiles, model_names

__all__ = [
    "ClassFold",
    "EvaluateRequest",
    "Evaluation",
    "colourise",
    "evaluate_models_on_tiles",
    "evaluate_rasters",
    "match_pairs",
    "model_names",
    "parse_merge",
    "run_evaluation",
    "write_report",
]
