"""Which prediction goes with which reference: files in order, or two folders by name."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from cloudcps.errors import InputError
from cloudcps.scenes.missing import check_options_exist

log = logging.getLogger(__name__)


def match_pairs(
    preds: Sequence[Path], refs: Sequence[Path], allow_missing: bool = False
) -> list[tuple[Path, Path]]:
    """Pair predictions with references: in order, or two folders matched by file name.

    In folders, ``NAME_mask.tif`` (what ``cloudcps predict`` writes) matches ``NAME.tif``; a
    file of either folder without its match is an error naming it, unless ``allow_missing``
    (then a warning names them and the matched pairs are scored).
    """
    if len(preds) == 1 and len(refs) == 1 and preds[0].is_dir() and refs[0].is_dir():
        ref_by_stem = {
            p.stem: p for p in sorted(refs[0].iterdir()) if p.suffix.lower() in (".tif", ".tiff")
        }
        pairs = []
        no_ref: list[Path] = []
        for p in sorted(preds[0].iterdir()):
            if p.suffix.lower() not in (".tif", ".tiff") or p.stem.endswith("_proba"):
                continue
            stem = p.stem[: -len("_mask")] if p.stem.endswith("_mask") else p.stem
            if stem in ref_by_stem:
                pairs.append((p, ref_by_stem.pop(stem)))
            else:
                no_ref.append(p)
        if not pairs:
            raise InputError(
                f"no file of --pred {preds[0]} matches a file of --ref {refs[0]} by name"
            )
        no_pred = list(ref_by_stem.values())
        if no_ref or no_pred:
            parts = [f"{p} (no reference)" for p in no_ref[:5]]
            parts += [f"{r} (no prediction)" for r in no_pred[:5]]
            n = len(no_ref) + len(no_pred)
            if n > len(parts):
                parts.append(f"and {n - len(parts)} more")
            listed = f"{n} file(s) of --pred {preds[0]} and --ref {refs[0]} have no match by name: "
            listed += ", ".join(parts)
            if not allow_missing:
                raise InputError(
                    f"{listed}; NAME_mask.tif pairs with NAME.tif: add the missing files, or "
                    f"pass --allow-missing to score the {len(pairs)} matched pair(s) alone"
                )
            log.warning(
                "%s; scoring the %d matched pair(s) alone (--allow-missing)", listed, len(pairs)
            )
        return pairs
    if len(preds) != len(refs):
        raise InputError(
            f"give as many --ref as --pred (got {len(preds)} --pred, {len(refs)} --ref)"
        )
    check_options_exist([("--pred", preds), ("--ref", refs)], " (nothing was scored)")
    for p in list(preds) + list(refs):
        if p.is_dir():
            raise InputError(f"{p} is a folder; give two folders (--pred DIR --ref DIR) or files")
    return list(zip(preds, refs, strict=True))
