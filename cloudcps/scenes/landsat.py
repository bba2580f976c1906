"""Landsat 4-9 Collection 2 products, Level-1 (L1TP, L1GT, L1GS) and Level-2 (L2SP, L2SR): a
folder, its ``.tar``, its ``_MTL.txt`` or ``_MTL.json``. R, G, B, NIR are the sensor's bands
(OLI: 4, 3, 2, 5; TM, ETM+: 3, 2, 1, 4) as (DN * REFLECTANCE_MULT_BAND_n +
REFLECTANCE_ADD_BAND_n) x 10000 (Level-1: / sin(SUN_ELEVATION)); DN 0 and QA_PIXEL fill are no
data."""

from __future__ import annotations

import json
import math
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cloudcps import untrusted
from cloudcps.errors import InputError
from cloudcps.scenes.scene import BandSource, Scene, product_stem
from cloudcps.scenes.vrt import one_grid, stacked_scene
from cloudcps.untrusted import safe_name

LANDSAT_RGBN = {
    "OLI_TIRS": (4, 3, 2, 5),
    "OLI": (4, 3, 2, 5),
    "TM": (3, 2, 1, 4),
    "ETM": (3, 2, 1, 4),
}
LANDSAT_L1 = ("L1TP", "L1GT", "L1GS")
LANDSAT_L2 = ("L2SP", "L2SR")


def mtl_in(folder: Path) -> Path | None:
    """The ``*_MTL.txt`` (else ``*_MTL.json``) in ``folder``: is it a Landsat product?"""
    for pattern in ("*_MTL.txt", "*_MTL.json"):
        found = sorted(folder.glob(pattern))
        if found:
            return found[0]
    return None


def parse_mtl(text: str) -> dict[str, Any]:
    """Landsat's MTL text (``GROUP = A`` ... ``KEY = VALUE`` ... ``END_GROUP = A``, ``END``)
    as nested dicts of strings (quotes removed), like the MTL.json."""
    root: dict[str, Any] = {}
    stack = [root]
    for line in text.splitlines():
        line = line.strip()
        if not line or line == "END" or "=" not in line:
            continue
        key, value = (part.strip() for part in line.split("=", 1))
        if key == "GROUP":
            group: dict[str, Any] = {}
            stack[-1][value] = group
            stack.append(group)
        elif key == "END_GROUP":
            if len(stack) > 1:
                stack.pop()
        else:
            stack[-1][key] = value.strip('"')
    return root


@dataclass(frozen=True)
class _Product:
    """Where a Landsat product's files are and what its MTL says."""

    path: Path  # what the user named
    prefix: str  # GDAL folder prefix of the band files
    mtl: str  # the MTL's file name
    meta: dict[str, Any]  # its LANDSAT_METADATA_FILE group
    members: set[str] | None  # the names in the tar's product folder; None: not a tar
    contents: dict[str, Any]  # the MTL's PRODUCT_CONTENTS: level, file names, product id
    attrs: dict[str, Any]  # its IMAGE_ATTRIBUTES: sensor, spacecraft, sun elevation

    @property
    def owner(self) -> str:
        return str(self.path)

    @property
    def who(self) -> str:
        return f"Landsat product {self.path}"

    def file(self, value: Any, field: str) -> str:
        """A file the MTL names in ``field``: a base name, in a folder one that resolves inside
        it."""
        name = untrusted.member_name(value, self.who, self.mtl, field)
        if self.members is None:
            untrusted.inside(Path(self.prefix), Path(self.prefix, name), self.who, self.mtl, field)
        return name

    def holds(self, name: str) -> bool:
        """Whether the product holds the file ``name`` (from :meth:`file`)."""
        if self.members is not None:
            return name in self.members
        return Path(self.prefix, name).exists()


def _landsat_entry(p: Path) -> tuple[str, str, dict[str, Any], set[str] | None]:
    """(GDAL folder prefix of the band files, MTL name, parsed MTL, names in a tar or None)."""
    if p.is_dir():
        mtl = mtl_in(p)
        if mtl is None:
            raise InputError(
                f"Landsat product {p} has no *_MTL.txt or *_MTL.json; give a Collection 2 "
                "product folder"
            )
        p = mtl
    if p.suffix.lower() in (".txt", ".json"):
        data = untrusted.read_file_limited(p, f"Landsat product {p.parent}", p.name)
        return str(p.parent.absolute()), p.name, _read_mtl(p.name, data, str(p)), None
    try:
        with tarfile.open(p) as tf:
            names = [m.name for m in tf.getmembers() if m.isfile()]
            mtls = sorted(n for n in names if re.search(r"_MTL\.(txt|json)$", n, re.IGNORECASE))
            if not mtls:
                raise InputError(
                    f"tar {p} holds no Landsat product (no *_MTL.txt or *_MTL.json); give a "
                    "Landsat Collection 2 .tar, its folder or a raster"
                )
            info = tf.getmember(mtls[0])
            untrusted.check_size(info.size, f"Landsat product {p}", mtls[0])
            member = tf.extractfile(info)  # streamed: at most the limit is read
            data = (
                untrusted.read_limited(member, f"Landsat product {p}", mtls[0]) if member else b""
            )
    except (tarfile.TarError, OSError) as exc:
        raise InputError(f"Landsat tar {p} cannot be read ({exc}); download it again") from None
    folder = str(Path(mtls[0]).parent)
    prefix = f"/vsitar/{p.absolute()}" + ("" if folder == "." else f"/{folder}")
    members = {Path(n).name for n in names if str(Path(n).parent) == folder}
    return prefix, Path(mtls[0]).name, _read_mtl(Path(mtls[0]).name, data, str(p)), members


def _product(p: Path) -> _Product:
    """The product ``p`` names, with the MTL groups every product has."""
    prefix, mtl, meta, members = _landsat_entry(p)
    who = f"Landsat product {p}"
    contents = untrusted.group(meta, "PRODUCT_CONTENTS", who, mtl)
    attrs = untrusted.group(meta, "IMAGE_ATTRIBUTES", who, mtl)
    return _Product(p, prefix, mtl, meta, members, contents, attrs)


def _read_mtl(name: str, data: bytes, owner: str) -> dict[str, Any]:
    text = untrusted.decode(data, f"Landsat product {owner}", name)
    try:
        doc = json.loads(text) if name.lower().endswith(".json") else parse_mtl(text)
    except json.JSONDecodeError as exc:
        raise InputError(
            f"Landsat product {owner}: {name} is not valid JSON ({exc}); download it again"
        ) from None
    except RecursionError:
        raise InputError(
            f"Landsat product {owner}: {name} is nested too deeply to be an MTL; download it again"
        ) from None
    meta = doc.get("LANDSAT_METADATA_FILE") if isinstance(doc, dict) else None
    if not isinstance(meta, dict):
        raise InputError(
            f"Landsat product {owner}: {name} is not a Collection 2 MTL (no LANDSAT_METADATA_FILE "
            "group); give a Collection 2 product"
        )
    return meta


def _level_and_sensor(prod: _Product) -> tuple[str, str]:
    """The product's processing level and sensor, refused unless supported."""
    who, owner, mtl_name = prod.who, prod.owner, prod.mtl
    level = untrusted.text(
        prod.contents.get("PROCESSING_LEVEL", ""), who, mtl_name, "PROCESSING_LEVEL"
    )
    level = level.upper()
    if level not in LANDSAT_L1 + LANDSAT_L2:
        raise InputError(
            f"Landsat product {owner} is of processing level {level or '(none given)'} "
            f"({mtl_name}), which is not supported; give a Level-1 ({', '.join(LANDSAT_L1)}) or "
            f"Level-2 ({', '.join(LANDSAT_L2)}) product"
        )
    sensor = untrusted.text(prod.attrs.get("SENSOR_ID", ""), who, mtl_name, "SENSOR_ID").upper()
    if sensor not in LANDSAT_RGBN:
        raise InputError(
            f"Landsat product {owner}: sensor {sensor or '(none given)'} in {mtl_name} is not "
            "supported; give an OLI (Landsat 8/9), TM or ETM+ (Landsat 4/5/7) product"
        )
    return level, sensor


def _sun_elevation(prod: _Product) -> tuple[float, float]:
    """(SUN_ELEVATION in degrees, its sine): Level-1 reflectance is divided by the sine."""
    if "SUN_ELEVATION" not in prod.attrs:
        raise InputError(
            f"Landsat product {prod.owner}: {prod.mtl} has no SUN_ELEVATION in IMAGE_ATTRIBUTES, "
            "needed for Level-1 reflectance; download the product again"
        )
    # below 1 degree top-of-atmosphere reflectance (/ sin) is meaningless
    elevation = untrusted.number(
        prod.attrs["SUN_ELEVATION"], prod.who, prod.mtl, "SUN_ELEVATION", 1, 90
    )
    return elevation, math.sin(math.radians(elevation))


def _band_source(
    prod: _Product, number: int, group: dict[str, Any], group_name: str, l2: bool, sun: float
) -> BandSource:
    """Band ``number``: its file and its scaling from ``group`` (``group_name`` of the MTL)."""
    owner, who, mtl_name = prod.owner, prod.who, prod.mtl
    keys = (f"REFLECTANCE_MULT_BAND_{number}", f"REFLECTANCE_ADD_BAND_{number}")
    if any(k not in group for k in keys):
        raise InputError(
            f"Landsat product {owner}: {mtl_name} has no REFLECTANCE_MULT_BAND_{number} / "
            f"REFLECTANCE_ADD_BAND_{number} in {group_name}; the MTL is incomplete: download "
            "the product again"
        )
    where = f"{group_name} of {mtl_name}"
    mult = untrusted.number(group[keys[0]], who, where, keys[0], 0, 1, nonzero=True)
    add = untrusted.number(group[keys[1]], who, where, keys[1], -10, 10)
    fname = prod.contents.get(f"FILE_NAME_BAND_{number}")
    if not fname:
        raise InputError(
            f"Landsat product {owner}: {mtl_name} names no FILE_NAME_BAND_{number}; "
            "download the product again"
        )
    fname = prod.file(fname, f"FILE_NAME_BAND_{number}")
    if not prod.holds(fname):
        raise InputError(
            f"Landsat product {owner} is missing band {number} ({fname}); the product is "
            "incomplete: download or unpack it again"
        )
    origin = f"{group_name} in {mtl_name}" + ("" if l2 else " / sin(SUN_ELEVATION)")
    return BandSource(
        ("SR_B" if l2 else "B") + str(number),
        f"{prod.prefix}/{fname}",
        scale=10000.0 * mult / sun,
        offset=10000.0 * add / sun,
        nodata=0,
        scaling_from=origin,
    )


def _qa_pixel(prod: _Product, sources: list[BandSource]) -> str | None:
    """The GDAL name of the QA_PIXEL file (checked to lie on the bands' grid), None if the
    product has none."""
    qa_name = prod.contents.get("FILE_NAME_QUALITY_L1_PIXEL")
    qa = None
    if qa_name:
        qa_name = prod.file(qa_name, "FILE_NAME_QUALITY_L1_PIXEL")
        qa = f"{prod.prefix}/{qa_name}" if prod.holds(qa_name) else None
    if qa is not None:
        one_grid([*sources, BandSource("QA_PIXEL", qa)], prod.owner)
    return qa


def open_landsat(p: Path) -> Scene:
    """The scene of the Landsat Collection 2 product ``p`` (a folder, its tar or its MTL)."""
    prod = _product(p)
    level, sensor = _level_and_sensor(prod)
    l2 = level in LANDSAT_L2
    group_name = "LEVEL2_SURFACE_REFLECTANCE_PARAMETERS" if l2 else "LEVEL1_RADIOMETRIC_RESCALING"
    group = untrusted.group(prod.meta, group_name, prod.who, prod.mtl)
    elevation: float | None = None
    sun = 1.0
    if not l2:
        elevation, sun = _sun_elevation(prod)
    sources = [
        _band_source(prod, number, group, group_name, l2, sun) for number in LANDSAT_RGBN[sensor]
    ]
    qa = _qa_pixel(prod, sources)
    product_id = safe_name(prod.contents.get("LANDSAT_PRODUCT_ID"), product_stem(p))
    record = {
        "path": str(p),
        "mtl": f"{prod.prefix}/{prod.mtl}",
        "sensor": sensor,
        "spacecraft": prod.attrs.get("SPACECRAFT_ID"),
        "processing_level": level,
        "sun_elevation": elevation,
        "scaling": (
            "DN * REFLECTANCE_MULT_BAND_n + REFLECTANCE_ADD_BAND_n, x 10000"
            if l2
            else "(DN * REFLECTANCE_MULT_BAND_n + REFLECTANCE_ADD_BAND_n) / sin(SUN_ELEVATION), "
            "x 10000"
        ),
    }
    return stacked_scene(
        sources,
        kind="landsat",
        product_id=product_id,
        record=record,
        scaled=True,
        owner=prod.owner,
        qa_fill=qa,
    )
