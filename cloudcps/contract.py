"""The data contract: what tiling decides and training and prediction must reuse unchanged.

Class names and the ignore index, partial-label codes, band order and names, the 8-bit stretch,
normalisation, value scaling and GDAL's read options: every stage reads scenes and labels the
same way because it reads them through these types.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from cloudcps.untrusted import gdal_http_options

MANIFEST_FORMAT = "cloudcps-tiles"
MANIFEST_VERSION = 1
IGNORE_INDEX = 255
DEFAULT_CLASSES: tuple[str, ...] = ("clear", "thick cloud", "thin cloud", "cloud shadow")
BAND_NAMES: tuple[str, ...] = ("red", "green", "blue", "nir")
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
RASTER_SUFFIXES = (".tif", ".tiff", ".TIF", ".TIFF", ".png", ".img", ".jp2", ".vrt")
GDAL_ENV = {"GDAL_CACHEMAX": 128 * 1024 * 1024}


def gdal_env() -> dict[str, Any]:
    """GDAL's options while a scene is opened and read: the block cache, and the deadline of
    remote reads (:func:`cloudcps.untrusted.gdal_http_options`)."""
    return {**GDAL_ENV, **gdal_http_options()}


# --------------------------------------------------------------------------------------------
# Option parsing (library types; the CLI wraps these errors as BadParameter)
# --------------------------------------------------------------------------------------------


def parse_bands(text: str) -> tuple[int, ...]:
    """Parse ``"1,2,3,4"`` (R,G,B,NIR) or ``"1,2,3"`` (R,G,B, no NIR) into 1-based band indices."""
    try:
        bands = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise ValueError(
            f"expected comma-separated band numbers like 1,2,3,4, got {text!r}"
        ) from None
    if len(bands) not in (3, 4) or min(bands) < 1 or len(set(bands)) != len(bands):
        raise ValueError(
            f"expected 3 or 4 distinct 1-based band numbers (R,G,B[,NIR]), got {text!r}"
        )
    return bands


PARTIAL_BASE = 128
MAX_TILE = 8192  # a 4-band tile of this side is already 0.5 GB of float32
MAX_PARTIAL_CLASSES = 7


def partial_code(classes: Sequence[int]) -> int:
    """The label value that stands for "one of ``classes``" (a partial label).

    A set of one class is that class's id; a set of several is ``128 + sum(2**c)``, so the code
    is the same in every tile folder and needs no table to decode. Sets therefore need class ids
    below 7 (at most 7 classes); exact class ids stay below 128.
    """
    uniq = sorted(set(classes))
    if len(uniq) == 1:
        return uniq[0]
    if not uniq or min(uniq) < 0 or max(uniq) >= MAX_PARTIAL_CLASSES:
        raise ValueError(f"a partial label {'|'.join(map(str, uniq))} may only name class ids 0..6")
    return PARTIAL_BASE + sum(1 << c for c in uniq)


def is_partial(code: int) -> bool:
    """Whether a label value is a partial-label code (a set of classes)."""
    return PARTIAL_BASE < code < IGNORE_INDEX


def partial_classes(code: int) -> tuple[int, ...]:
    """The classes a label value allows: one for a class id, several for a partial code."""
    if is_partial(code):
        bits = code - PARTIAL_BASE
        return tuple(c for c in range(MAX_PARTIAL_CLASSES) if bits >> c & 1)
    if code == IGNORE_INDEX:
        return ()
    return (code,)


def parse_label_map(text: str) -> dict[int, int]:
    """Parse ``"128:0,255:1,192:2,64:3"`` into ``{source code: label value}``.

    A destination may be a set of classes, ``"0:0|3,1:1|2"`` (a coarser label: 0 means clear or
    shadow, 1 thick or thin cloud), stored as a partial-label code (:func:`partial_code`);
    ``SRC:255`` sends a code to ignore.
    """
    mapping: dict[int, int] = {}
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        parts = item.split(":")
        try:
            if len(parts) != 2:
                raise ValueError
            src = int(parts[0])
            dsts = [int(v) for v in parts[1].split("|")]
        except ValueError:
            raise ValueError(
                f"expected SRC:DST pairs like 128:0,255:1 (or a set of classes 0:0|3), got {item!r}"
            ) from None
        if not 0 <= src <= 65535:
            raise ValueError(
                f"{item!r}: source value {src} is not a label raster value; give 0..65535"
            )
        if any(d != IGNORE_INDEX and not 0 <= d < PARTIAL_BASE for d in dsts):
            raise ValueError(
                f"{item!r}: class ids are 0..{PARTIAL_BASE - 1} (or 255 to ignore), got {parts[1]}"
            )
        if len(dsts) > 1 and IGNORE_INDEX in dsts:
            raise ValueError(f"{item!r}: 255 (ignore) cannot be part of a set of classes")
        if len(dsts) > 1 and len(set(dsts)) != len(dsts):
            raise ValueError(f"{item!r} names a class twice")
        dst = partial_code(dsts)
        if src in mapping and mapping[src] != dst:
            raise ValueError(f"source value {src} is mapped twice")
        mapping[src] = dst
    if not mapping:
        raise ValueError("the label map is empty")
    return mapping


def label_map_to_dict(label_map: dict[int, int]) -> dict[str, int | list[int]]:
    """The manifest's form of a label map: a class id, or the list of a partial label's classes."""
    return {str(k): list(partial_classes(v)) if is_partial(v) else v for k, v in label_map.items()}


@dataclass(frozen=True)
class StretchSpec:
    """How to map scene values to 8 bits: ``auto`` percentiles, fixed ranges, or ``none``."""

    method: Literal["auto", "fixed", "none"] = "auto"
    percentiles: tuple[float, float] = (1.0, 99.5)
    ranges: tuple[tuple[float, float], ...] = ()


def parse_stretch(text: str) -> StretchSpec:
    """Parse ``auto``, ``auto:P_LOW:P_HIGH``, ``none``, ``MIN:MAX`` or per band ``MIN:MAX,...``."""
    text = text.strip()
    if text == "none":
        return StretchSpec("none")
    if text == "auto" or text.startswith("auto:"):
        if text == "auto":
            return StretchSpec("auto")
        try:
            lo, hi = (float(v) for v in text.split(":")[1:])
        except ValueError:
            raise ValueError(f"expected auto:P_LOW:P_HIGH like auto:1:99.5, got {text!r}") from None
        if not 0 <= lo < hi <= 100:
            raise ValueError(f"percentiles must satisfy 0 <= low < high <= 100, got {text!r}")
        return StretchSpec("auto", percentiles=(lo, hi))
    ranges: list[tuple[float, float]] = []
    for item in text.split(","):
        try:
            lo, hi = (float(v) for v in item.split(":"))
        except ValueError:
            raise ValueError(
                f"expected auto, none, MIN:MAX or MIN:MAX per band (R,G,B[,NIR]), got {text!r}"
            ) from None
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise ValueError(f"stretch range {item!r} must be finite numbers")
        if not hi > lo:
            raise ValueError(f"stretch range {item!r} must have MAX > MIN")
        ranges.append((lo, hi))
    if len(ranges) not in (1, 3, 4):
        raise ValueError(f"give one MIN:MAX for all bands or one per band (3 or 4), got {text!r}")
    return StretchSpec("fixed", ranges=tuple(ranges))


# --------------------------------------------------------------------------------------------
# The data contract: how raw scene values become network input
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Stretch:
    """A resolved stretch to 8 bits, one ``(low, high)`` per selected band.

    ``gamma`` > 1 brightens dark values: ``255 * t ** (1 / gamma)`` with ``t`` the linear position
    in ``[low, high]``; a fixed range with gamma 2 keeps both dark ground and bright cloud apart.
    """

    method: str
    low: tuple[float, ...]
    high: tuple[float, ...]
    percentiles: tuple[float, float] | None = None
    gamma: float = 1.0

    def apply(self, data: np.ndarray) -> np.ndarray:
        """Map ``data`` (bands, H, W) of the selected bands to uint8, band by band."""
        n = data.shape[0]
        lo = np.asarray(self.low[:n], dtype=np.float32).reshape(n, 1, 1)
        hi = np.asarray(self.high[:n], dtype=np.float32).reshape(n, 1, 1)
        # a range that float32 cannot tell apart (huge values: high = low + 1 rounds to low)
        # is one unit wide, as resolve_stretch means it
        span = np.where(hi > lo, hi - lo, np.float32(1.0))
        # values beyond float32 (+-inf, or huge ones the arithmetic overflows) go to 0 or 255
        # without numpy's overflow warning; NaN (no data, masked by the caller) casts silently
        with np.errstate(over="ignore", invalid="ignore"):
            if self.method == "none":
                return np.clip(data, 0, 255).astype(np.uint8)
            if self.gamma == 1.0:
                scaled = (data.astype(np.float32) - lo) * (255.0 / span)
            else:
                t = np.clip((data.astype(np.float32) - lo) / span, 0.0, 1.0)
                scaled = 255.0 * t ** np.float32(1.0 / self.gamma)
            return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "low": list(self.low),
            "high": list(self.high),
            "percentiles": list(self.percentiles) if self.percentiles else None,
            "gamma": self.gamma,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Stretch:
        pct = d.get("percentiles")
        st = cls(
            method=str(d["method"]),
            low=tuple(float(v) for v in d["low"]),
            high=tuple(float(v) for v in d["high"]),
            percentiles=(float(pct[0]), float(pct[1])) if pct else None,
            gamma=float(d.get("gamma", 1.0)),
        )
        values = (*st.low, *st.high, st.gamma)
        if (
            st.method not in ("fixed", "auto", "none")
            or len(st.low) != len(st.high)
            or not st.low
            or not all(math.isfinite(v) for v in values)
            or not all(h > lo for lo, h in zip(st.low, st.high, strict=True))
            or st.gamma <= 0
        ):
            raise ValueError(f"stretch {d} is not a valid stretch (method, low < high, gamma)")
        return st


@dataclass(frozen=True)
class DataContract:
    """Everything decided at tiling time that training and prediction must reuse unchanged."""

    classes: tuple[str, ...]
    bands: tuple[int, ...]
    stretch: Stretch
    tile_size: int
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    ignore_index: int = IGNORE_INDEX
    band_names: tuple[str, ...] = BAND_NAMES
    scale: float = 1.0  # tile --scale / --offset: predict reads scenes with the same
    offset: float = 0.0

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def to_dict(self) -> dict[str, Any]:
        return {
            "classes": [{"id": i, "name": n} for i, n in enumerate(self.classes)],
            "ignore_index": self.ignore_index,
            "bands": {
                "input": list(self.bands),
                "names": list(self.band_names[: len(self.bands)]),
                "tile_bands": list(self.band_names[:3]),
                "dropped": list(self.band_names[3 : len(self.bands)]),
            },
            "stretch": self.stretch.to_dict(),
            "normalization": {"scale": 255.0, "mean": list(self.mean), "std": list(self.std)},
            "tile_size": self.tile_size,
            "scaling": {"scale": self.scale, "offset": self.offset},
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DataContract:
        classes = tuple(c["name"] for c in sorted(d["classes"], key=lambda c: int(c["id"])))
        norm = d.get("normalization", {})
        return cls(
            classes=classes,
            bands=tuple(int(b) for b in d["bands"]["input"]),
            stretch=Stretch.from_dict(d["stretch"]),
            tile_size=int(d["tile_size"]),
            mean=tuple(float(v) for v in norm.get("mean", IMAGENET_MEAN)),
            std=tuple(float(v) for v in norm.get("std", IMAGENET_STD)),
            ignore_index=int(d.get("ignore_index", IGNORE_INDEX)),
            scale=float((d.get("scaling") or {}).get("scale", 1.0)),
            offset=float((d.get("scaling") or {}).get("offset", 0.0)),
        )


def scale_values(data: np.ndarray, scale: float, offset: float) -> np.ndarray:
    """``data * scale + offset`` in float32: ``--scale`` / ``--offset``, in tile and predict
    alike. A result beyond float32 (an extreme value times a large factor) is +-inf, which the
    stretch maps to its top or bottom, as the value is: numpy's overflow warning is not shown."""
    if (scale, offset) == (1.0, 0.0):
        return data
    with np.errstate(over="ignore"):
        return data.astype(np.float32) * np.float32(scale) + np.float32(offset)
