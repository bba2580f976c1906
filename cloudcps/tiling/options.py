"""What the tiler is asked (:class:`TileOptions`) and what it reports (:class:`TileSummary`)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from cloudcps.contract import (
    DEFAULT_CLASSES,
    MAX_PARTIAL_CLASSES,
    MAX_TILE,
    Stretch,
    StretchSpec,
    is_partial,
    partial_classes,
)
from cloudcps.errors import InputError


@dataclass
class TileOptions:
    """Options of :func:`tile_scenes`; the CLI maps its flags one to one onto these fields."""

    tile_size: int = 1024
    overlap: int = 0
    bands: tuple[int, ...] | None = None  # None: by the scenes' band names, else 1,2,3[,4]
    scale: float = 1.0
    offset: float = 0.0
    band_files: tuple[tuple[Path, ...], ...] = ()  # scenes given as single-band files
    stretch: StretchSpec = field(default_factory=StretchSpec)
    gamma: float = 1.0
    label_dirs: tuple[Path, ...] = ()
    clear: tuple[Path, ...] = ()
    label_map: dict[int, int] | None = None
    unknown_labels: Literal["error", "ignore"] = "error"
    classes: tuple[str, ...] = DEFAULT_CLASSES
    labeled_fraction: float = 1 / 16
    val: tuple[str, ...] = ()
    val_fraction: float = 0.0
    cover_classes: bool = True
    seed: int = 0
    workers: int = 1
    image_format: Literal["jpg", "png"] = "jpg"
    jpeg_quality: int = 95
    min_valid_fraction: float = 0.1
    overwrite: bool = False

    def __post_init__(self) -> None:
        # the Python API takes paths as str or os.PathLike in any sequence, as the CLI does
        self.label_dirs = tuple(Path(p) for p in self.label_dirs)
        self.clear = tuple(Path(p) for p in self.clear)
        self.band_files = tuple(tuple(Path(p) for p in group) for group in self.band_files)
        self.val = tuple(self.val)

    def validate(self) -> None:
        if self.tile_size < 32:
            raise InputError(f"--tile-size {self.tile_size} is too small; use 32 or more")
        if self.tile_size > MAX_TILE:
            raise InputError(f"--tile-size {self.tile_size} is too large; use at most {MAX_TILE}")
        dup = sorted({n for n in self.classes if self.classes.count(n) > 1})
        if dup:
            raise InputError(
                f"--classes {','.join(self.classes)}: class {dup[0]!r} is named twice; class "
                "names must be unique"
            )
        if not 0 <= self.overlap < self.tile_size:
            raise InputError(
                f"--overlap {self.overlap} must be >= 0 and smaller than --tile-size "
                f"{self.tile_size}"
            )
        if not 0.0 <= self.labeled_fraction <= 1.0:
            raise InputError(f"--labeled-fraction {self.labeled_fraction} must be in [0, 1]")
        if not 0.0 <= self.val_fraction < 1.0:
            raise InputError(f"--val-fraction {self.val_fraction} must be in [0, 1)")
        if self.val and self.val_fraction:
            raise InputError("give either --val or --val-fraction, not both")
        if not 0.0 <= self.min_valid_fraction <= 1.0:
            raise InputError(f"--min-valid {self.min_valid_fraction} must be in [0, 1]")
        if not (math.isfinite(self.scale) and self.scale > 0 and math.isfinite(self.offset)):
            raise InputError(f"--scale {self.scale} must be > 0 and --offset {self.offset} finite")
        if not (math.isfinite(self.gamma) and 0.1 <= self.gamma <= 10):
            raise InputError(f"--gamma {self.gamma} must be in [0.1, 10]")
        if not 1 <= self.jpeg_quality <= 100:
            raise InputError(f"--quality {self.jpeg_quality} must be in 1..100")
        if self.workers < 1:
            raise InputError(
                f"--workers {self.workers} must be 1 or more (the number of scenes tiled at once)"
            )
        k = len(self.classes)
        if self.clear and "clear" not in self.classes:
            raise InputError(
                f"--clear labels scenes with the class 'clear', which --classes "
                f"{','.join(self.classes)} lacks; add it or drop --clear"
            )
        if self.label_map:
            if k > MAX_PARTIAL_CLASSES and any(map(is_partial, self.label_map.values())):
                raise InputError(
                    f"--label-map maps to sets of classes, which need at most "
                    f"{MAX_PARTIAL_CLASSES} classes; this class set has {k}"
                )
            bad = sorted({c for v in self.label_map.values() for c in partial_classes(v) if c >= k})
            if bad:
                raise InputError(
                    f"--label-map sends values to class ids {bad}, but there are only {k} "
                    f"classes (0..{k - 1}; 255 = ignore)"
                )


@dataclass
class TileSummary:
    """What :func:`tile_scenes` wrote."""

    out: Path
    scenes: int
    labeled_scenes: int
    tiles: int
    splits: dict[str, int]
    skipped_low_valid: int
    class_shares: dict[str, dict[str, float]]
    stretch: Stretch
    warnings: list[str] = field(default_factory=list)


def summary_dict(summary: TileSummary) -> dict[str, Any]:
    d = asdict(summary)
    d["out"] = str(summary.out)
    return d


def summary_lines(summary: TileSummary, min_valid_fraction: float) -> list[str]:
    """The summary for people: counts, the stretch of R, G, B and each split's class shares
    (``min_valid_fraction``: the ``--min-valid`` that skipped tiles)."""
    s = summary.splits
    lines = [
        f"{summary.scenes} scene(s) ({summary.labeled_scenes} labelled) -> {summary.tiles} tiles "
        f"in {summary.out}: labeled {s['labeled']}, unlabeled {s['unlabeled']}, val {s['val']}; "
        f"skipped {summary.skipped_low_valid} (valid share < {min_valid_fraction:g})"
    ]
    st = summary.stretch
    lines.append(
        f"stretch {st.method}: low {', '.join(f'{v:g}' for v in st.low[:3])}; "
        f"high {', '.join(f'{v:g}' for v in st.high[:3])} (R,G,B)"
    )
    for split, shares in summary.class_shares.items():
        if not any(shares.values()):  # partial labels only: no pixel of one exact class
            lines.append(f"class shares {split}: - (partial labels only; see manifest.json)")
            continue
        parts = ", ".join(f"{k} {v:.1%}" for k, v in shares.items())
        lines.append(f"class shares {split}: {parts}")
    return lines
