"""Which bands of a raster hold red, green, blue and near infrared, from its own metadata.

A Sentinel-2 stack of 13 bands read in the default order 1,2,3 would feed the network coastal
aerosol, blue and green as R, G, B without any error. When a file names its bands (band
descriptions such as ``B04`` or ``red``, or GDAL's colour interpretation), those names decide;
a file of more than 4 bands that names none must be given ``--bands``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cloudcps.errors import InputError

DEFAULT_ORDER = (1, 2, 3, 4)

# Sentinel-2 MSI: B2 blue, B3 green, B4 red, B8 NIR. Landsat 8/9 OLI: B2, B3, B4, B5 (NIR).
_S2 = {"r": "4", "g": "3", "b": "2", "n": "8"}
_OLI = {"r": "4", "g": "3", "b": "2", "n": "5"}
_CODE = re.compile(r"^(?:sr_|toa_)?b(?:and)?0*(\d{1,2}a?)$")


def _tokens(text: str) -> list[str]:
    return [t for t in re.split(r"[^a-z0-9]+", text.lower()) if t]


def _code(text: str) -> str | None:
    """``4`` for ``B04``, ``B4``, ``SR_B4`` or ``B4 (red)``; ``8a`` for ``B8A``; else None."""
    for tok in re.split(r"[\s(),:;/]+", text.strip().lower()):
        m = _CODE.match(tok)
        if m:
            return m.group(1)
    return None


def _word_role(text: str) -> str | None:
    """r, g, b or n for a description that names the colour (``Red``, ``nir``, ``B4 - red``)."""
    toks = _tokens(text)
    joined = "".join(toks)
    if "edge" in toks or "rededge" in joined or "swir" in joined or "coastal" in toks:
        return None
    if any(t == "nir" or re.fullmatch(r"nir\d*", t) for t in toks) or "nearinfrared" in joined:
        return "n"
    if "infrared" in toks:
        return None
    for role, word in (("r", "red"), ("g", "green"), ("b", "blue")):
        if word in toks:
            return role
    return None


def _from_descriptions(descriptions: Sequence[str | None]) -> dict[str, int] | None:
    names = [d or "" for d in descriptions]
    if not any(n.strip() for n in names):
        return None
    found: dict[str, list[int]] = {}
    for i, name in enumerate(names, start=1):
        role = _word_role(name)
        if role:
            found.setdefault(role, []).append(i)
    if all(len(found.get(r, [])) == 1 for r in "rgb"):
        return {r: v[0] for r, v in found.items() if len(v) == 1}
    codes = [_code(n) for n in names]
    known = {c for c in codes if c}
    if not known:
        return None
    numbers = {int(c.rstrip("a")) for c in known}
    zero_padded = any(re.search(r"b0\d", n.lower()) for n in names)
    if "8a" in known or 12 in numbers or zero_padded:
        table = _S2
    elif numbers & {10, 11} and "8a" not in known:
        table = _OLI  # thermal bands 10 and 11: Landsat 8/9 OLI/TIRS
    else:
        return None  # B-numbers alone do not tell Sentinel-2 from Landsat OLI or TM
    out: dict[str, int] = {}
    for role, code in table.items():
        hits = [i for i, c in enumerate(codes, start=1) if c == code]
        if len(hits) == 1:
            out[role] = hits[0]
    return out if all(r in out for r in "rgb") else None


def _from_colorinterp(colorinterp: Sequence[Any]) -> dict[str, int] | None:
    names = [getattr(c, "name", str(c)) for c in colorinterp]
    out = {}
    for role, word in (("r", "red"), ("g", "green"), ("b", "blue")):
        hits = [i for i, n in enumerate(names, start=1) if n == word]
        if len(hits) != 1:
            return None
        out[role] = hits[0]
    return out


def bands_from_metadata(
    descriptions: Sequence[str | None], colorinterp: Sequence[Any] = ()
) -> tuple[int, ...] | None:
    """1-based (R, G, B, NIR), or (R, G, B) when NIR is not named, from band descriptions, else
    colour interpretation; None when they do not name R, G and B."""
    roles = _from_descriptions(descriptions) or _from_colorinterp(colorinterp)
    if roles is None:
        return None
    rgb = (roles["r"], roles["g"], roles["b"])
    if len(set(rgb)) != 3:
        return None
    nir = roles.get("n")
    return (*rgb, nir) if nir is not None and nir not in rgb else rgb


def raster_bands(src: Any) -> tuple[int, ...] | None:
    """:func:`bands_from_metadata` of an open rasterio dataset."""
    return bands_from_metadata(list(src.descriptions), list(src.colorinterp))


def needs_bands_message(path: Path | str, count: int) -> str:
    return (
        f"scene {path} has {count} bands and no band descriptions or colour interpretation "
        "naming red, green and blue; give --bands R,G,B[,NIR] (e.g. --bands 4,3,2,8 for a "
        "Sentinel-2 stack in band order)"
    )


def check_scene_bands(src: Any, path: Path | str, bands: Sequence[int]) -> None:
    """For tiling: refuse ``bands`` in the default order 1,2,3[,4] when the scene's metadata
    puts R, G, B elsewhere, or when it has more than 4 bands and names none."""
    bands = tuple(bands)
    if bands != DEFAULT_ORDER[: len(bands)]:
        return
    named = raster_bands(src)
    if named is None:
        if src.count > 4:
            raise InputError(needs_bands_message(path, src.count))
        return
    if named[:3] != bands[:3] or (len(bands) == 4 and len(named) == 4 and named != bands):
        want = ",".join(map(str, named[: len(bands)]))
        raise InputError(
            f"scene {path}: its band metadata puts R,G,B{',NIR' if len(named) == 4 else ''} "
            f"at bands {','.join(map(str, named))}, not {','.join(map(str, bands))}; pass "
            f"--bands {want}"
        )
