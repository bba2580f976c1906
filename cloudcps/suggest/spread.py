"""Which of the ranked tiles to suggest, and the label round they start.

**Spread.** Tiles are taken in score order (ties by tile id) with two rules: at most
``per_scene`` tiles of one scene (default: ``ceil(count / scenes in the split)``), and no tile
that touches or overlaps an already chosen tile of its scene (neighbours share context, so their
labels teach the same thing twice). When the rules leave fewer than ``count`` tiles, the scene
cap is dropped first, then the neighbour rule; ``suggestions.csv`` says which pass took each tile.

**Rounds.** The labels written are of round ``1 + the latest round of the tile folder's labels``
(labels from scene label rasters are round 0), recorded in each label file's tags
(``LABEL_ROUND``) and, once tiled again, in the manifest (each tile's ``label_round``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from cloudcps.suggest.scoring import Candidate


def touches(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two tiles of one scene touch or overlap (corners included)."""
    if a["scene"] != b["scene"]:
        return False
    wa, wb = a["window"], b["window"]
    return (
        wa["col_off"] <= wb["col_off"] + wb["width"]
        and wb["col_off"] <= wa["col_off"] + wa["width"]
        and wa["row_off"] <= wb["row_off"] + wb["height"]
        and wb["row_off"] <= wa["row_off"] + wa["height"]
    )


def pick(ranked: Sequence[Candidate], count: int, per_scene: int) -> list[Candidate]:
    """Greedy spread-out choice (see the module docstring); sets ``rule`` on the chosen."""
    chosen: list[Candidate] = []
    taken: set[str] = set()
    passes = (("spread", True, True), ("scene cap dropped", False, True), ("score", False, False))
    for rule, cap, apart in passes:
        for c in ranked:
            if len(chosen) >= count:
                return chosen
            if c.tile["id"] in taken:
                continue
            same = [o for o in chosen if o.tile["scene"] == c.tile["scene"]]
            if cap and len(same) >= per_scene:
                continue
            if apart and any(touches(o.tile, c.tile) for o in same):
                continue
            c.rule = rule
            chosen.append(c)
            taken.add(c.tile["id"])
    return chosen


def next_round(tiles: Sequence[dict[str, Any]]) -> int:
    """1 + the latest ``label_round`` of a manifest's tiles (scene label rasters: round 0)."""
    rounds = [int(t.get("label_round") or 0) for t in tiles if t.get("label")]
    return 1 + max(rounds, default=0)
