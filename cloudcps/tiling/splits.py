"""The splits: whole validation scenes (``--val`` / ``--val-fraction``) and the labelled subset of
the training tiles (``--labeled-fraction``, covering every class where possible); the rest of the
training tiles are unlabelled."""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cloudcps.errors import InputError
from cloudcps.tiling.options import TileOptions
from cloudcps.tiling.scene import SceneInfo


def _match_scene(name: str, scenes: Sequence[SceneInfo]) -> SceneInfo:
    p = Path(name)
    for s in scenes:
        if p.exists() and s.path.resolve() == p.resolve():
            return s
    hits = [s for s in scenes if name in (s.path.name, s.path.stem, str(s.path), s.id)]
    if len(hits) == 1:
        return hits[0]
    raise InputError(
        f"--val {name} matches {'none' if not hits else 'several'} of the scenes given; "
        "name one of the input scenes by path or file name"
    )


def assign_val_scenes(scenes: Sequence[SceneInfo], opts: TileOptions) -> None:
    """Mark whole scenes as validation scenes (``role = "val"``)."""
    rng = random.Random(opts.seed)
    if opts.val:
        for name in opts.val:
            s = _match_scene(name, scenes)
            if s.label is None:
                raise InputError(
                    f"--val {name}: scene {s.path} has no label raster in --label-dir; a "
                    "validation scene needs labels"
                )
            s.role = "val"
    elif opts.val_fraction > 0:
        labeled = [s for s in scenes if s.label is not None]
        if len(labeled) < 2:
            raise InputError(
                f"--val-fraction needs at least 2 labelled scenes, found {len(labeled)}; "
                "add labelled scenes or name one with --val"
            )
        n = min(len(labeled) - 1, max(1, round(opts.val_fraction * len(labeled))))
        for s in rng.sample(labeled, n):
            s.role = "val"


def choose_labeled(
    pool: Sequence[dict[str, Any]], fraction: float, num_classes: int, seed: int, cover: bool
) -> set[str]:
    """Pick ``fraction`` of the labelled training tiles; optionally cover every class present."""
    if not pool or fraction <= 0:
        return set()
    n = min(len(pool), max(1, round(fraction * len(pool))))
    rng = random.Random(seed + 1)
    order = list(pool)
    rng.shuffle(order)
    chosen: list[dict[str, Any]] = []
    if cover:
        totals = np.sum([t["class_counts"] for t in pool], axis=0)
        for c in sorted(range(num_classes), key=lambda c: totals[c]):
            if totals[c] == 0 or len(chosen) >= n:
                continue
            if any(t["class_counts"][c] > 0 for t in chosen):
                continue
            with_c = [t for t in order if t["class_counts"][c] > 0 and t not in chosen]
            if with_c:
                chosen.append(with_c[0])
    ids = {t["id"] for t in chosen}
    for t in order:
        if len(ids) >= n:
            break
        ids.add(t["id"])
    return ids


def split_tiles(
    tiles: Sequence[dict[str, Any]], scenes: Sequence[SceneInfo], opts: TileOptions
) -> dict[str, list[str]]:
    """The tile ids of each split (``labeled``, ``unlabeled``, ``val``) in tile order."""
    role = {s.id: s.role for s in scenes}
    val_ids = [t["id"] for t in tiles if role[t["scene"]] == "val"]
    # the pool of --labeled-fraction: tiles of scenes with a label raster (or --clear), the
    # same whether or not tile labels were added since (so earlier rounds keep their tiles)
    whole = {s.id for s in scenes if s.label is not None or s.clear}
    pool = [t for t in tiles if role[t["scene"]] != "val" and t["scene"] in whole]
    pool = [
        t for t in pool if sum(t["class_counts"]) + sum(t.get("partial_counts", {}).values()) > 0
    ]
    # --clear tiles all go to the labelled split (README, --help); the others are drawn
    clear_ids = {t["id"] for t in pool if t["scene"] in {s.id for s in scenes if s.clear}}
    drawn = [t for t in pool if t["id"] not in clear_ids]
    labeled = clear_ids | choose_labeled(
        drawn, opts.labeled_fraction, len(opts.classes), opts.seed, opts.cover_classes
    )
    labeled |= {  # tiles labelled by tile labels (suggest's rounds) are always labelled
        t["id"]
        for t in tiles
        if role[t["scene"]] != "val" and t.get("label_files") and sum(t["class_counts"]) > 0
    }
    unlabeled = [t["id"] for t in tiles if role[t["scene"]] != "val" and t["id"] not in labeled]
    return {
        "labeled": [t["id"] for t in tiles if t["id"] in labeled],
        "unlabeled": unlabeled,
        "val": val_ids,
    }
