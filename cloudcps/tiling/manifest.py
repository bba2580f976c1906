"""What ``manifest.json`` records: the dataset's contract (bands, stretch, classes, tile size,
scaling) that a model trained on the tiles reads new scenes with, the options, the scenes, the
split counts and class shares, and every tile's record."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from cloudcps import __version__
from cloudcps.contract import (
    MANIFEST_FORMAT,
    MANIFEST_VERSION,
    DataContract,
    is_partial,
    label_map_to_dict,
    partial_classes,
)
from cloudcps.tiling.options import TileOptions
from cloudcps.tiling.scene import SceneInfo
from cloudcps.tiling.stretch import resolve_stretch


def dataset_contract(infos: Sequence[SceneInfo], opts: TileOptions) -> DataContract:
    """How every scene of the dataset is read: its bands, one stretch (with ``--gamma``), the
    classes, tile size and scaling."""
    # one band count for the dataset: the given --bands, else 4 when every scene has NIR
    n = len(opts.bands) if opts.bands else (4 if all(len(s.bands) >= 4 for s in infos) else 3)
    stretch = resolve_stretch(opts.stretch, infos, n, opts)
    if opts.gamma != 1.0 and stretch.method != "none":
        stretch = replace(stretch, gamma=opts.gamma)
    return DataContract(
        classes=tuple(opts.classes),
        # without --bands each scene's R, G, B[, NIR] were picked by its band names (or are a
        # product's stack): predict does the same, and reads unnamed files as 1, 2, 3[, 4]
        bands=tuple(opts.bands) if opts.bands else (1, 2, 3, 4)[:n],
        stretch=stretch,
        tile_size=opts.tile_size,
        scale=opts.scale,
        offset=opts.offset,
    )


def build_manifest(
    opts: TileOptions,
    contract: DataContract,
    infos: Sequence[SceneInfo],
    tiles: Sequence[dict[str, Any]],
    splits: dict[str, list[str]],
    skipped: int,
) -> dict[str, Any]:
    """The manifest of the tiles (``skipped``: tiles with too few valid pixels)."""
    n = len(contract.bands)
    return {
        "format": MANIFEST_FORMAT,
        "format_version": MANIFEST_VERSION,
        "created_by": f"cloudcps {__version__}",
        **contract.to_dict(),
        "overlap": opts.overlap,
        "image_format": opts.image_format,
        "jpeg_quality": opts.jpeg_quality if opts.image_format == "jpg" else None,
        "label_map": label_map_to_dict(opts.label_map) if opts.label_map else None,
        "partial_labels": {
            str(v): list(partial_classes(v))
            for v in sorted(set((opts.label_map or {}).values()))
            if is_partial(v)
        },
        "min_valid_fraction": opts.min_valid_fraction,
        "options": {
            "labeled_fraction": opts.labeled_fraction,
            "val": list(opts.val),
            "val_fraction": opts.val_fraction,
            "cover_classes": opts.cover_classes,
            "seed": opts.seed,
        },
        "scenes": [_scene_record(s, n) for s in infos],
        "splits": {k: len(v) for k, v in splits.items()},
        "split_files": [f"splits/{name}.txt" for name in splits],
        "skipped": {"low_valid": skipped},
        "class_shares": class_shares(tiles, splits, opts.classes),
        "label_rounds": _label_rounds(tiles, splits["labeled"]),
        "tiles": tiles,
    }


def _scene_record(s: SceneInfo, n: int) -> dict[str, Any]:
    """A scene in the manifest (``n``: the dataset's band count)."""
    return {
        "id": s.id,
        "path": str(s.path.resolve()),
        "label": str(s.label.resolve()) if s.label else None,
        "width": s.width,
        "height": s.height,
        "dtype": s.dtype,
        "crs": s.crs,
        "transform": list(s.transform),
        "role": s.role,
        "clear": s.clear,
        "bands": list(s.bands[:n]),
        "source": s.record,
        "tile_labels": [tl.to_dict() for tl in s.tile_labels],
    }


def class_shares(
    tiles: Sequence[dict[str, Any]], splits: dict[str, list[str]], classes: Sequence[str]
) -> dict[str, dict[str, float]]:
    """Each split's share of labelled pixels per class (splits without a labelled tile left out;
    all 0 where only partial labels)."""
    by_id = {t["id"]: t for t in tiles}
    shares: dict[str, dict[str, float]] = {}
    for name, ids in splits.items():
        counts = [by_id[i]["class_counts"] for i in ids if by_id[i]["class_counts"] is not None]
        if not counts:
            continue
        tot = np.sum(counts, axis=0).astype(float)
        s = tot.sum()
        shares[name] = {
            c: round(float(v / s), 5) if s else 0.0 for c, v in zip(classes, tot, strict=True)
        }
    return shares


def _label_rounds(tiles: Sequence[dict[str, Any]], labeled: Sequence[str]) -> dict[str, int]:
    """Labelled-split tiles per label round (``"0"``: scene label rasters; ``"null"``: tile
    labels without a round)."""
    ids = set(labeled)
    counts: dict[str, int] = {}
    for t in tiles:
        if t["id"] in ids:
            key = json.dumps(t.get("label_round"))
            counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items()))
