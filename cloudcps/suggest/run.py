"""``cloudcps suggest`` end to end: check the inputs, score every tile of a split, pick the
spread-out few and write the suggestions into one folder (all of it, or nothing)."""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cloudcps import __version__
from cloudcps.errors import InputError
from cloudcps.io import atomic_dir, check_out_dir, writing
from cloudcps.predict import Predictor
from cloudcps.predict.backends import InferenceModel, describe
from cloudcps.predict.uncertainty import (
    UNSURE,
    UNSURE_U8,
    describe_measure,
    load_for_uncertainty,
    measure_of,
    members_of,
)
from cloudcps.suggest.outputs import (
    SHEET_TILES,
    write_csv,
    write_geojson,
    write_label_template,
    write_sheet,
)
from cloudcps.suggest.scoring import (
    Candidate,
    TileScore,
    check_classes,
    class_weights,
    predict_tile,
    read_tile,
    tile_predictor,
)
from cloudcps.suggest.spread import next_round, pick

if TYPE_CHECKING:
    from cloudcps.train.data import TileFolder

log = logging.getLogger(__name__)


@dataclass
class SuggestOptions:
    """Options of :func:`suggest_tiles`."""

    split: str = "unlabeled"
    count: int = 20
    per_scene: int | None = None  # None: ceil(count / scenes in the split)
    overwrite: bool = False

    def validate(self) -> None:
        if self.count < 1:
            raise InputError(f"--count {self.count} must be 1 or more (tiles to suggest)")
        if self.per_scene is not None and self.per_scene < 1:
            raise InputError(
                f"--per-scene {self.per_scene} must be 1 or more (tiles of one scene at most)"
            )
        if not self.split or "/" in self.split or self.split.startswith("."):
            raise InputError(
                f"--split {self.split!r} must be the name of a split list (e.g. unlabeled)"
            )


@dataclass
class SuggestResult:
    out: Path
    chosen: list[Candidate]
    scored: int
    label_round: int
    measure: str
    class_weights: dict[str, float]
    files: list[str] = field(default_factory=list)


def suggest_from_run(
    model: str | os.PathLike[str],
    data: str | os.PathLike[str],
    out: str | os.PathLike[str],
    options: SuggestOptions,
    nets: str = "both",
    backend: str = "auto",
    device: str | None = None,
    threads: int | None = None,
    progress: bool = False,
) -> SuggestResult:
    """:func:`suggest_tiles` with the model loaded from a run folder or checkpoint (for the
    uncertainty ``nets`` asks for); the options are checked before the model is loaded."""
    options.validate()  # before the model is loaded (or exported)
    loaded = load_for_uncertainty(model, nets, backend, device, threads)
    return suggest_tiles(loaded, data, out, options, progress=progress)


def suggest_tiles(
    model: InferenceModel,
    data: str | os.PathLike[str],
    out: str | os.PathLike[str],
    options: SuggestOptions | None = None,
    progress: bool = False,
) -> SuggestResult:
    """Score the tiles of a split and write the suggestions (see :mod:`cloudcps.suggest`).

    Raises:
        InputError: a bad option, a tile folder that cannot be read, a model of other classes,
            an output that exists; nothing is written then.
    """
    opts = options or SuggestOptions()
    opts.validate()
    data_p, out_p = Path(data), Path(out)
    folder, ids = _checked_split(model, data_p, out_p, opts)
    k = folder.contract.num_classes
    tile_size = int(folder.manifest["tile_size"])
    predictor = tile_predictor(model, tile_size)
    cands = _score_tiles(folder, ids, predictor, k, progress)
    ranking = _rank(cands, opts)
    members = members_of(model)
    result = SuggestResult(
        out=out_p,
        chosen=ranking.chosen,
        scored=len(cands),
        label_round=next_round(list(folder.tiles.values())),
        measure=measure_of(members),
        class_weights={
            n: round(float(w), 6)
            for n, w in zip(folder.contract.classes, ranking.weights, strict=True)
        },
    )
    with writing(out_p), atomic_dir(out_p, opts.overwrite) as tmp:
        files = _write_suggestions(tmp, folder, predictor, result)
        result.files = ["suggest.json", *files]
        record = _record(model, members, data_p, opts, folder, ranking, result)
        (tmp / "suggest.json").write_text(json.dumps(record, indent=2) + "\n")
    return result


def _checked_split(
    model: InferenceModel, data_p: Path, out_p: Path, opts: SuggestOptions
) -> tuple[TileFolder, list[str]]:
    """The tile folder and the ids of its split, once the model, the split, every tile's files
    and the output folder have been checked (before any work)."""
    from cloudcps.train.data import TileFolder

    folder = TileFolder(data_p)
    check_classes(model, folder.contract, data_p)
    split_file = data_p / "splits" / f"{opts.split}.txt"
    if not split_file.is_file():
        have = sorted(p.stem for p in (data_p / "splits").glob("*.txt"))
        raise InputError(
            f"--split {opts.split}: {data_p} has no split list {split_file.name} (it has "
            f"{', '.join(have) or 'none'}); choose one of those"
        )
    ids = folder.split(opts.split)
    if not ids:
        raise InputError(
            f"the {opts.split} split of --data {data_p} is empty: no tile to suggest; choose "
            "another --split"
        )
    folder.items(ids)  # every tile's files exist and stay inside the folder, before any work
    inputs = [data_p, model.path]
    check_out_dir(out_p, opts.overwrite, "suggest", inputs)
    if model.contract.stretch != folder.contract.stretch:
        log.warning(
            "--model %s was trained on tiles with another stretch than --data %s",
            model.path,
            data_p,
        )
    return folder, ids


def _score_tiles(
    folder: TileFolder, ids: list[str], predictor: Predictor, k: int, progress: bool
) -> list[Candidate]:
    """Predict every tile of the split and keep its numbers (see :class:`Candidate`)."""
    from tqdm import tqdm

    cands: list[Candidate] = []
    for tid in tqdm(ids, desc="suggest", unit="tile", disable=not progress):
        image, valid = read_tile(folder, tid)
        s = predict_tile(predictor, image, valid)
        cands.append(
            Candidate(
                tile=folder.tiles[tid],
                tile_pixels=int(valid.size),
                valid_pixels=int(s.valid.sum()),
                unsure_pixels=int(np.count_nonzero(s.uncertainty[s.valid] >= UNSURE_U8)),
                prob_sum=s.prob_sum,
                weighted_u=s.weighted_u,
                class_counts=np.bincount(s.classes[s.valid], minlength=k)[:k],
            )
        )
    return cands


@dataclass
class _Ranking:
    """The chosen tiles (ranked) and the numbers they were chosen by."""

    chosen: list[Candidate]
    shares: np.ndarray  # predicted share of each class over the split
    weights: np.ndarray  # class weights from the shares
    per_scene: int  # tiles of one scene at most in the first pass


def _rank(cands: list[Candidate], opts: SuggestOptions) -> _Ranking:
    """Weight the classes by their predicted shares, score every tile and pick spread-out."""
    total = np.sum([c.prob_sum for c in cands], axis=0)
    shares = total / max(float(total.sum()), 1e-12)
    weights = class_weights(shares)
    for c in cands:
        c.score = float(weights @ c.weighted_u) / max(c.tile_pixels, 1)
    ranked = sorted(cands, key=lambda c: (-round(c.score, 9), c.tile["id"]))
    scenes = {c.tile["scene"] for c in cands}
    per_scene = opts.per_scene or math.ceil(opts.count / len(scenes))
    chosen = pick(ranked, opts.count, per_scene)
    for i, c in enumerate(chosen):
        c.rank = i + 1
    return _Ranking(chosen, shares, weights, per_scene)


def _write_suggestions(
    tmp: Path, folder: TileFolder, predictor: Predictor, result: SuggestResult
) -> list[str]:
    """Write the label templates, the tables and the contact sheet into ``tmp``; the files
    written (suggest.json aside)."""
    chosen = result.chosen
    k = folder.contract.num_classes
    (tmp / "labels").mkdir()
    sheet: list[tuple[Candidate, np.ndarray, TileScore]] = []
    for c in chosen:
        image, valid = read_tile(folder, c.tile["id"])
        s = predict_tile(predictor, image, valid)
        write_label_template(tmp / "labels" / f"{c.tile['id']}.tif", c.tile, s, folder,
                             result.label_round)  # fmt: skip
        if len(sheet) < SHEET_TILES:
            sheet.append((c, image, s))
    files = ["suggestions.csv", "suggestions.geojson", "suggestions.png"]
    files += [f"labels/{c.tile['id']}.tif" for c in chosen]
    write_csv(tmp / "suggestions.csv", chosen, folder.contract.classes)
    write_geojson(tmp / "suggestions.geojson", chosen, folder.contract.classes)
    write_sheet(tmp / "suggestions.png", sheet, k)
    return files


def _record(
    model: InferenceModel,
    members: int,
    data_p: Path,
    opts: SuggestOptions,
    folder: TileFolder,
    ranking: _Ranking,
    result: SuggestResult,
) -> dict[str, Any]:
    """What suggest.json says: what was done, with what, and the files written."""
    return {
        "created_by": f"cloudcps {__version__}",
        "cloudcps_version": __version__,
        "model": str(model.path),
        "iteration": model.iteration,
        **describe(model),
        "data": str(data_p.resolve()),
        "split": opts.split,
        "scored_tiles": result.scored,
        "count": opts.count,
        "per_scene": ranking.per_scene,
        "label_round": result.label_round,
        "uncertainty": {
            "measure": result.measure,
            "definition": describe_measure(members),
            "unsure_threshold": UNSURE,
        },
        "score": "sum of u * sum_c p_c w_c over the tile / tile pixels (cloudcps.suggest)",
        "predicted_shares": {
            n: round(float(s), 6)
            for n, s in zip(folder.contract.classes, ranking.shares, strict=True)
        },
        "class_weights": result.class_weights,
        "suggested": [c.tile["id"] for c in result.chosen],
        "written_files": result.files,
    }
