"""Open a scene as users download it: R, G, B (and NIR) as reflectance x 10000 on one grid.

:func:`open_scene` recognises the input and returns a :class:`Scene` whose ``dataset`` is an open
rasterio dataset the rest of the pipeline reads like any stacked raster. For products it is a GDAL
VRT (held in memory, float32) that stacks the product's band files on their grid, applies the
product's scaling in each source (``ScaleRatio`` / ``ScaleOffset``) and declares the fill as no
data (-32768), so ``read_masks`` gives the valid pixels. What is read from where:

+------------------------+-------------------------------+-------------------------------------+
| input                  | R, G, B, NIR                  | reflectance x 10000; no data        |
+========================+===============================+=====================================+
| multi-band raster or   | ``--bands`` (the caller       | as stored (``--scale``/``--offset`` |
| ``.vrt``               | decides)                      | apply); the raster's nodata or mask |
+------------------------+-------------------------------+-------------------------------------+
| Sentinel-2 L1C / L2A:  | B04, B03, B02, B08 of the     | (DN + offset) * 10000 / Q, per band |
| ``.SAFE`` folder, its  | 10 m subdataset of GDAL's     | from MTD_MSIL*.xml: offset =        |
| ``.zip``,              | SENTINEL2 driver              | RADIO_ADD_OFFSET (L1C) or           |
| ``MTD_MSIL1C.xml`` /   |                               | BOA_ADD_OFFSET (L2A), 0 before      |
| ``MTD_MSIL2A.xml``     |                               | baseline 04.00; Q =                 |
|                        |                               | QUANTIFICATION_VALUE (L1C) or       |
|                        |                               | BOA_QUANTIFICATION_VALUE (L2A);     |
|                        |                               | DN 0 (SPECIAL_VALUE NODATA)         |
+------------------------+-------------------------------+-------------------------------------+
| Landsat 4-9 C2 Level-2 | OLI (8, 9): SR_B4, SR_B3,     | (DN * REFLECTANCE_MULT_BAND_n +     |
| (L2SP, L2SR): folder,  | SR_B2, SR_B5; TM, ETM+ (4, 5, | REFLECTANCE_ADD_BAND_n) x 10000,    |
| ``.tar``, ``_MTL.txt`` | 7): SR_B3, SR_B2, SR_B1,      | from the MTL's LEVEL2_SURFACE_      |
| or ``_MTL.json``       | SR_B4 (FILE_NAME_BAND_n)      | REFLECTANCE_PARAMETERS; DN 0 or     |
|                        |                               | QA_PIXEL fill (bit 0)               |
+------------------------+-------------------------------+-------------------------------------+
| Landsat 4-9 C2 Level-1 | OLI: B4, B3, B2, B5; TM,      | (DN * REFLECTANCE_MULT_BAND_n +     |
| (L1TP, L1GT, L1GS)     | ETM+: B3, B2, B1, B4          | REFLECTANCE_ADD_BAND_n) /           |
|                        |                               | sin(SUN_ELEVATION) x 10000, from    |
|                        |                               | LEVEL1_RADIOMETRIC_RESCALING and    |
|                        |                               | IMAGE_ATTRIBUTES; as Level-2        |
+------------------------+-------------------------------+-------------------------------------+
| STAC Item: JSON file   | assets whose ``eo:bands``     | (DN * scale + offset) x 10000 from  |
| or URL                 | common_name is red, green,    | the asset's ``raster:bands`` (none: |
|                        | blue, nir (or nir08), else    | as stored); ``raster:bands``        |
|                        | the assets keyed so           | nodata                              |
+------------------------+-------------------------------+-------------------------------------+
| band files             | the files, in the order       | as stored; each file's nodata       |
| (``band_files=``)      | R, G, B[, NIR]                |                                     |
+------------------------+-------------------------------+-------------------------------------+

Every failure is an :class:`~cloudcps.errors.InputError` of one line naming the file and what is
missing. ``Scene.record`` (JSON-able) says what was read and which scaling was applied.
"""

from __future__ import annotations

import json
import math
import os
import re
import tarfile
import time
import uuid
import warnings
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urljoin, urlparse
from xml.sax.saxutils import escape

import rasterio
from rasterio.errors import NotGeoreferencedWarning, RasterioError
from rasterio.io import DatasetReader, MemoryFile

from cloudcps import untrusted
from cloudcps.errors import InputError
from cloudcps.io import (
    GDAL_ERRORS,
    contains,
    gdal_message,
    gdal_name,
    is_virtual_path,
    open_raster,
)
from cloudcps.untrusted import safe_name

NODATA = -32768.0
"""No-data value of the stacked products (reflectance x 10000 never reaches it)."""

COLOR_INTERP = ("Red", "Green", "Blue", "Undefined")  # never Alpha: NIR is data

KINDS = ("raster", "sentinel2", "landsat", "stac", "band-files")


@dataclass
class BandSource:
    """One band of a product: where GDAL reads it and how it becomes reflectance x 10000."""

    name: str  # e.g. "B04", "SR_B4", the STAC asset key, the file name
    path: str  # GDAL name: a file, /vsizip/..., /vsitar/..., a SENTINEL2 subdataset
    band: int = 1  # 1-based band in ``path``
    scale: float = 1.0  # ScaleRatio
    offset: float = 0.0  # ScaleOffset
    nodata: float | None = None  # the source's fill value
    scaling_from: str = "none"  # where scale and offset were read
    file: str | None = None  # the file behind ``path`` when ``path`` is a subdataset

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "source": self.file or self.path,
            "band": self.band,
            "scale": self.scale,
            "offset": self.offset,
            "scaling_from": self.scaling_from,
            "nodata": self.nodata,
        }


@dataclass
class Grid:
    width: int
    height: int
    crs: str
    transform: tuple[float, ...]  # GDAL order

    def describe(self) -> str:
        res = abs(self.transform[1])
        x0, y0 = self.transform[0], self.transform[3]
        return (
            f"{self.width}x{self.height} px at {res:g} m from ({x0:.10g}, {y0:.10g}) in "
            f"{self.crs or 'no CRS'}"
        )


@dataclass
class Scene:
    """An opened scene; a context manager that closes what :func:`open_scene` opened."""

    dataset: DatasetReader
    bands: tuple[int, ...] | None  # 1-based R, G, B[, NIR] in ``dataset``; None: caller decides
    product_id: str  # what outputs are named after
    kind: str  # one of KINDS
    record: dict[str, Any]  # JSON-able: sources, processing level, sensor, scaling, nodata
    scaled: bool  # the product's scaling is applied: do not apply --scale/--offset again
    vrt: str | None = None  # the stacking VRT (self-contained XML; rasterio.open(vrt) reopens it)
    _memfile: MemoryFile | None = field(default=None, repr=False)

    def close(self) -> None:
        self.dataset.close()
        if self._memfile is not None:
            self._memfile.close()
            self._memfile = None

    def __enter__(self) -> Scene:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


# ----------------------------------------------------------------------------- entry point


def open_scene(
    path: str | Path,
    *,
    bands: tuple[int, ...] | None = None,
    band_files: Sequence[str | Path] | None = None,
) -> Scene:
    """Open ``path`` (a raster, a Sentinel-2 or Landsat product, a STAC item) or the stack of
    ``band_files`` (R, G, B[, NIR]; ``path`` is then only recorded). ``bands`` picks R, G, B[, NIR]
    of a multi-band raster; for a product it may only repeat the product's own (1, 2, 3[, 4]).

    GDAL's reads of remote rasters while opening (a STAC item's assets, a raster URL) have the
    deadline of :func:`cloudcps.untrusted.gdal_http_options`; callers that read the scene's
    pixels do so under it too (:func:`cloudcps.tiling.gdal_env`)."""
    with rasterio.Env(**untrusted.gdal_http_options()):
        return _open_scene(path, bands, band_files)


def _open_scene(
    path: str | Path,
    bands: tuple[int, ...] | None,
    band_files: Sequence[str | Path] | None,
) -> Scene:
    if band_files is not None:
        scene = _open_band_files([Path(p) for p in band_files])
        scene.record["path"] = str(path)
        return _check_bands(scene, bands)
    text = gdal_name(path)  # a URL through click/pathlib lost one slash: https:/host
    if re.match(r"^https?://", text) and not re.search(r"\.(tif|tiff|vrt|jp2)$", text, re.I):
        return _check_bands(_open_stac(text), bands)  # a STAC item (API items have no .json)
    p = Path(path)
    if not p.exists() and not is_virtual_path(text):  # /vsizip/... is GDAL's to resolve
        raise InputError(f"scene {p} does not exist; check the path")
    name = p.name
    if p.is_dir():
        if name.upper().endswith(".SAFE") or list(p.glob("MTD_MSI*.xml")):
            scene = _open_sentinel2(p)
        elif _mtl_in(p) is not None:
            scene = _open_landsat(p)
        else:
            raise InputError(
                f"scene {p} is a folder but neither a Sentinel-2 SAFE (no MTD_MSIL1C.xml or "
                "MTD_MSIL2A.xml) nor a Landsat Collection 2 product (no *_MTL.txt); give a "
                "raster file, a product folder or its archive"
            )
    elif re.fullmatch(r"MTD_MSIL?\w+\.xml", name, re.IGNORECASE):
        scene = _open_sentinel2(p)
    elif re.search(r"_MTL\.(txt|json)$", name, re.IGNORECASE):
        scene = _open_landsat(p)
    elif name.lower().endswith(".zip"):
        scene = _open_sentinel2(p)
    elif re.search(r"\.(tar|tar\.gz|tgz)$", name, re.IGNORECASE):
        scene = _open_landsat(p)
    elif name.lower().endswith(".json"):
        scene = _open_stac(text)
    else:
        src = open_raster(p, "scene")
        _real_valued(src, f"scene {p}")
        return Scene(
            dataset=src,
            bands=bands,
            product_id=p.stem,
            kind="raster",
            record={
                "kind": "raster",
                "path": str(p),
                "bands": list(bands) if bands else None,
                "scaling": "none (values as stored; --scale/--offset apply)",
                "nodata": src.nodata,
            },
            scaled=False,
        )
    return _check_bands(scene, bands)


def _real_valued(src: DatasetReader, name: str) -> None:
    """Refuse complex bands (``name``: the file in messages): reading them as reflectance would
    drop the imaginary part. Plain rasters, band files and every band a product stacks."""
    complex_types = sorted({d for d in src.dtypes if d.startswith("complex")})
    if complex_types:
        src.close()
        raise InputError(
            f"{name} holds complex values ({complex_types[0]}); cloud masking needs real "
            "reflectance: convert it first (e.g. gdal_translate -ot Float32 of the band's "
            "amplitude, gdal_calc.py --calc 'abs(A)')"
        )


def _check_bands(scene: Scene, bands: tuple[int, ...] | None) -> Scene:
    own = scene.bands or ()
    if bands is not None and tuple(bands) not in (own, own[:3]):
        names = ", ".join(s["name"] for s in scene.record["bands"])
        scene.close()
        raise InputError(
            f"--bands {','.join(map(str, bands))} does not apply to {scene.record['path']}: "
            f"a {scene.kind} input has its bands picked as R, G, B[, NIR] = {names}; leave "
            "--bands out"
        )
    if bands is not None and len(bands) == 3:
        scene.bands = own[:3]
    return scene


# ----------------------------------------------------------------------------- stacking VRT


def _grid_of(path: str, what: str, owner: str) -> Grid:
    """The grid of ``path`` (``what`` names it in errors)."""
    start = time.monotonic()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(path) as src:
                _real_valued(src, f"{what} of {owner}")
                crs = src.crs.to_string() if src.crs else ""
                return Grid(src.width, src.height, crs, tuple(src.transform.to_gdal()))
    except (RasterioError, *GDAL_ERRORS) as exc:
        remote = re.match(r"^/vsi(curl|s3|gs|az|adls|oss|swift)/", path)
        timeout = untrusted.fetch_timeout()
        if remote and time.monotonic() - start >= timeout:  # GDAL_HTTP_TIMEOUT ended a request
            raise InputError(
                f"{what} of {owner} did not arrive within {timeout:g} s; check the server (or "
                "raise CLOUDCPS_FETCH_TIMEOUT)"
            ) from None
        if remote:
            hint = (
                "check the URL, that its host resolves and the network"
                if remote.group(1) == "curl"
                else f"check the object path and your credentials for {remote.group(1)} "
                "(e.g. AWS_ACCESS_KEY_ID / AWS_NO_SIGN_REQUEST=YES for public s3 buckets)"
            )
            raise InputError(
                f"{what} of {owner} could not be fetched ({gdal_message(exc)}); {hint}"
            ) from None
        if not is_virtual_path(path) and not Path(path).exists():
            raise InputError(
                f"{what} of {owner} does not exist; the product names a file it does not hold: "
                "download or unpack it again"
            ) from None
        raise InputError(
            f"{what} of {owner} could not be opened ({gdal_message(exc)}); the file may be "
            "truncated or corrupt: download it again"
        ) from None


def _one_grid(sources: list[BandSource], owner: str) -> Grid:
    grids = [(s, _grid_of(s.path, f"band {s.name} ({s.path})", owner)) for s in sources]
    first, grid = grids[0]
    tol = 1e-3 * (abs(grid.transform[1]) or 1.0)  # a thousandth of a pixel
    for src, other in grids[1:]:
        same = (other.width, other.height, other.crs) == (grid.width, grid.height, grid.crs)
        if not same or any(
            abs(a - b) > tol for a, b in zip(other.transform, grid.transform, strict=True)
        ):
            raise InputError(
                f"band {src.name} of {owner} ({src.path}) is {other.describe()} but band "
                f"{first.name} is {grid.describe()}; give bands on one grid (resample them with "
                "gdalwarp to the same extent and resolution)"
            )
    return grid


def _num(value: float) -> str:
    return repr(float(value))


def _source_xml(s: BandSource, nodata: str | None = None) -> str:
    nd = nodata if nodata is not None else (None if s.nodata is None else _num(s.nodata))
    parts = [
        "<ComplexSource>",
        f'<SourceFilename relativeToVRT="0">{escape(s.path)}</SourceFilename>',
        f"<SourceBand>{s.band}</SourceBand>",
    ]
    if nd is not None:
        parts.append(f"<NODATA>{nd}</NODATA>")
    if s.scale != 1.0 or s.offset != 0.0:
        parts.append(f"<ScaleOffset>{_num(s.offset)}</ScaleOffset>")
        parts.append(f"<ScaleRatio>{_num(s.scale)}</ScaleRatio>")
    parts.append("</ComplexSource>")
    return "".join(parts)


def _header(grid: Grid) -> str:
    gt = ", ".join(_num(v) for v in grid.transform)
    srs = f"<SRS>{escape(grid.crs)}</SRS>" if grid.crs else ""
    return (
        f'<VRTDataset rasterXSize="{grid.width}" rasterYSize="{grid.height}">{srs}'
        f"<GeoTransform>{gt}</GeoTransform>"
    )


def stack_vrt(sources: list[BandSource], grid: Grid, qa_fill: str | None = None) -> str:
    """VRT XML stacking ``sources`` as float32 bands of reflectance x 10000 (no data -32768).

    ``qa_fill``: a Landsat QA_PIXEL file whose fill pixels (value 1: bit 0 alone) are no data
    too. Each band is then read through an inner derived band (inlined, so the XML stays
    self-contained) that multiplies the scaled band by 1 where QA_PIXEL is not fill and by NaN
    where it is (its source no data); the outer band turns NaN into -32768.
    """
    bands = []
    for i, s in enumerate(sources, start=1):
        if qa_fill is None:
            inner_src = _source_xml(s)
        else:
            qa = BandSource("QA_PIXEL", qa_fill, nodata=1)
            inner = (
                _header(grid)
                + '<VRTRasterBand dataType="Float32" band="1" subClass="VRTDerivedRasterBand">'
                "<NoDataValue>nan</NoDataValue><PixelFunctionType>mul</PixelFunctionType>"
                + _source_xml(s)
                + _source_xml(qa).replace(
                    "</ComplexSource>", "<LUT>0:1,65535:1</LUT></ComplexSource>"
                )
                + "</VRTRasterBand></VRTDataset>"
            )
            inner_src = _source_xml(BandSource(s.name, inner), nodata="nan")
        bands.append(
            f'<VRTRasterBand dataType="Float32" band="{i}">'
            f"<Description>{escape(s.name)}</Description>"
            f"<ColorInterp>{COLOR_INTERP[i - 1]}</ColorInterp>"
            f"<NoDataValue>{_num(NODATA)}</NoDataValue>{inner_src}</VRTRasterBand>"
        )
    return _header(grid) + "".join(bands) + "</VRTDataset>"


def _stacked_scene(
    sources: list[BandSource],
    *,
    kind: str,
    product_id: str,
    record: dict[str, Any],
    scaled: bool,
    owner: str,
    grid: Grid | None = None,
    qa_fill: str | None = None,
) -> Scene:
    grid = grid or _one_grid(sources, owner)
    xml = stack_vrt(sources, grid, qa_fill)
    vrt_name = re.sub(r"[^\w.-]", "_", product_id) or "scene"
    mem = MemoryFile(
        xml.encode(), dirname=f"cloudcps-{uuid.uuid4().hex}", filename=f"{vrt_name}.vrt"
    )
    try:
        dataset = mem.open()
    except (RasterioError, *GDAL_ERRORS) as exc:
        mem.close()
        raise InputError(f"{owner} could not be stacked ({gdal_message(exc)})") from None
    record = {
        "kind": kind,
        "product_id": product_id,
        **record,
        "bands": [s.describe() for s in sources],
        "qa_fill": qa_fill,
        "nodata": NODATA,
        "grid": {
            "width": grid.width,
            "height": grid.height,
            "crs": grid.crs,
            "transform": list(grid.transform),
        },
        "values": "reflectance x 10000" if scaled else "as stored (--scale/--offset apply)",
    }
    return Scene(
        dataset=dataset,
        bands=tuple(range(1, len(sources) + 1)),
        product_id=product_id,
        kind=kind,
        record=record,
        scaled=scaled,
        vrt=xml,
        _memfile=mem,
    )


# ----------------------------------------------------------------------------- Sentinel-2

S2_RGBN = ("B04", "B03", "B02", "B08")


def _s2_entry(p: Path) -> tuple[str, str, str]:
    """(GDAL name of the product XML, what to call the product in messages, the GDAL name of the
    product's root: every file GDAL reads must lie under it). The metadata GDAL parses (the
    product and tile XMLs) is size-checked first: GDAL reads an XML whole."""
    owner = f"Sentinel-2 product {p}"
    if p.is_dir() or p.suffix.lower() != ".zip":
        root = p if p.is_dir() else p.parent
        found = sorted(root.glob("MTD_MSI*.xml")) if p.is_dir() else [p]
        if not found:
            raise InputError(
                f"Sentinel-2 product {p} has no MTD_MSIL1C.xml or MTD_MSIL2A.xml; the SAFE folder "
                "is incomplete: download or unzip it again"
            )
        for xml in [found[0], *sorted(root.glob("GRANULE/*/MTD_TL.xml"))]:
            untrusted.check_size(xml.stat().st_size, owner, xml.name)
        return str(found[0].absolute()), str(p), str(root.resolve())
    try:
        with zipfile.ZipFile(p) as zf:
            infos = zf.infolist()
    except (zipfile.BadZipFile, OSError) as exc:
        raise InputError(f"Sentinel-2 zip {p} cannot be read ({exc}); download it again") from None
    xmls = sorted(
        i.filename
        for i in infos
        if re.fullmatch(r"[^/]+\.SAFE/MTD_MSI\w+\.xml", i.filename, re.IGNORECASE)
    )
    if not xmls:
        raise InputError(
            f"zip {p} holds no Sentinel-2 product (no <name>.SAFE/MTD_MSIL1C.xml or "
            "MTD_MSIL2A.xml); give a Sentinel-2 .zip, a SAFE folder or a raster"
        )
    for info in infos:
        if info.filename.lower().endswith(".xml"):
            untrusted.check_size(info.file_size, owner, info.filename)
    return f"/vsizip/{p.absolute()}/{xmls[0]}", str(p), f"/vsizip/{p.absolute()}"


def _s2_level(xml: str, owner: str) -> str:
    name = Path(xml).name.upper()
    if "MSIL1C" in name:
        return "L1C"
    if "MSIL2A" in name:
        return "L2A"
    level = name.removeprefix("MTD_MSI").removesuffix(".XML")
    raise InputError(
        f"Sentinel-2 product {owner} is of processing level {level} ({Path(xml).name}), which is "
        "not supported; give a Level-1C or Level-2A product"
    )


def _open_sentinel2(p: Path) -> Scene:
    xml, owner, root = _s2_entry(p)
    level = _s2_level(xml, owner)
    try:
        with rasterio.open(xml) as prod:
            tags = prod.tags()
            subs = [s for s in prod.subdatasets if ":10m:" in s]
        if subs:
            with rasterio.open(subs[0]) as s10:
                described = {
                    (d or "").split(",")[0]: i for i, d in enumerate(s10.descriptions, start=1)
                }
                band_tags = {i: s10.tags(i) for i in range(1, s10.count + 1)}
                files = list(s10.files)
    except (RasterioError, *GDAL_ERRORS) as exc:
        raise InputError(
            f"Sentinel-2 product {owner}: GDAL cannot read {Path(xml).name} ({gdal_message(exc)}); "
            "the product XML is damaged: download the product again"
        ) from None
    if not subs:
        raise InputError(
            f"Sentinel-2 product {owner} has no 10 m bands ({Path(xml).name} lists no "
            f"{', '.join(S2_RGBN)} at 10 m); give a full L1C/L2A product"
        )
    sub = subs[0]
    _s2_files_inside(files, root, owner, Path(xml).name)
    baseline = tags.get("PROCESSING_BASELINE", "")
    qkey = "BOA_QUANTIFICATION_VALUE" if level == "L2A" else "QUANTIFICATION_VALUE"
    okey = "BOA_ADD_OFFSET" if level == "L2A" else "RADIO_ADD_OFFSET"
    s2 = f"Sentinel-2 product {owner}"
    if qkey not in tags:
        raise InputError(
            f"Sentinel-2 product {owner}: {Path(xml).name} has no {qkey}; the product XML is "
            "incomplete: download the product again"
        )
    quant = untrusted.number(tags[qkey], s2, Path(xml).name, qkey, 1.0, 1e6)
    nodata = untrusted.number(
        tags.get("SPECIAL_VALUE_NODATA", "0") or 0,
        s2,
        Path(xml).name,
        "SPECIAL_VALUE_NODATA",
        0,
        65535,
    )
    sources, missing = [], []
    for band in S2_RGBN:
        short = "B" + band[1:].lstrip("0")  # the driver's descriptions: B4, B8
        index = described.get(short)
        pattern = re.compile(rf"_{band}(_10m)?\.jp2$", re.IGNORECASE)
        found = [f for f in files if pattern.search(f)]
        if index is None or not found:
            missing.append(band)
            continue
        raw = band_tags[index].get(okey)
        if raw is None:
            if _baseline_at_least(baseline, 4.0):
                raise InputError(
                    f"Sentinel-2 product {owner} of processing baseline {baseline} lists no {okey} "
                    f"for {band} in {Path(xml).name}; the product XML is incomplete: download the "
                    "product again"
                )
            offset, origin = 0.0, f"no {okey} (processing baseline {baseline or '?'} < 04.00)"
        else:
            offset = untrusted.number(raw, s2, Path(xml).name, f"{okey} of {band}", -65535, 65535)
            origin = f"{okey} in {Path(xml).name}"
        sources.append(
            BandSource(
                band,
                sub,
                index,
                scale=10000.0 / quant,
                offset=offset * 10000.0 / quant,
                nodata=nodata,
                scaling_from=f"{origin}; {qkey} {quant:g}",
                file=found[0],
            )
        )
    uri = tags.get("PRODUCT_URI", "")
    if len(missing) == 4 and re.sub(r"\.(SAFE|zip)$", "", uri, flags=re.I) != _stem_of_product(p):
        raise InputError(
            f"Sentinel-2 product {owner}: PRODUCT_URI {untrusted.shown(uri)} in {Path(xml).name} "
            f"does not match the product ({_stem_of_product(p)}); GDAL derives the band file "
            "names from it, so none is found: restore the original XML or download the product "
            "again"
        )
    if missing:
        what = "none of its 10 m bands" if len(missing) == 4 else "no " + ", ".join(missing)
        raise InputError(
            f"Sentinel-2 product {owner} has {what} at 10 m (GRANULE/*/IMG_DATA/"
            f"{'R10m/*_B0x_10m' if level == 'L2A' else '*_B0x'}.jp2); the product is incomplete: "
            "download or unzip it again"
        )
    product_id = safe_name(
        re.sub(r"\.(SAFE|zip)$", "", uri, flags=re.IGNORECASE), _stem_of_product(p)
    )
    record = {
        "path": str(p),
        "product_xml": xml,
        "subdataset": sub,
        "sensor": "Sentinel-2 MSI",
        "spacecraft": tags.get("DATATAKE_1_SPACECRAFT_NAME"),
        "processing_level": level,
        "processing_baseline": baseline or None,
        "scaling": f"(DN + {okey}) * 10000 / {qkey}",
    }
    return _stacked_scene(
        sources, kind="sentinel2", product_id=product_id, record=record, scaled=True, owner=owner
    )


def _s2_files_inside(files: list[str], root: str, owner: str, xml: str) -> None:
    """Every file GDAL's SENTINEL2 driver opens (named by IMAGE_FILE in the XML) lies in the
    product: under the SAFE folder, or in its zip."""
    for f in files:
        if root.startswith("/vsizip/"):
            ok = f.startswith(root + "/") and ".." not in Path(f[len(root) :]).parts
        else:
            ok = not is_virtual_path(f) and contains(Path(root), Path(f))
        if not ok:
            raise InputError(
                f"Sentinel-2 product {owner}: IMAGE_FILE in {xml} names {f}, outside the product "
                f"({root}); cloudcps reads only the product's own files: download it again"
            )


def _baseline_at_least(baseline: str, version: float) -> bool:
    try:
        return float(baseline) >= version
    except ValueError:
        return True  # unknown: expect the offsets to be given


def _stem_of_product(p: Path) -> str:
    name = p.parent.name if p.is_file() and p.suffix.lower() == ".xml" else p.name
    return re.sub(
        r"(\.SAFE|\.zip|\.tar|\.tar\.gz|\.tgz|_MTL\.txt|_MTL\.json)$", "", name, flags=re.IGNORECASE
    )


# ----------------------------------------------------------------------------- Landsat

LANDSAT_RGBN = {
    "OLI_TIRS": (4, 3, 2, 5),
    "OLI": (4, 3, 2, 5),
    "TM": (3, 2, 1, 4),
    "ETM": (3, 2, 1, 4),
}
LANDSAT_L1 = ("L1TP", "L1GT", "L1GS")
LANDSAT_L2 = ("L2SP", "L2SR")


def _mtl_in(folder: Path) -> Path | None:
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


def _landsat_entry(p: Path) -> tuple[str, str, dict[str, Any], set[str] | None]:
    """(GDAL folder prefix of the band files, MTL name, parsed MTL, names in a tar or None)."""
    if p.is_dir():
        mtl = _mtl_in(p)
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


def _landsat_file(
    value: Any, prefix: str, members: set[str] | None, who: str, mtl: str, field: str
) -> str:
    """A band file the MTL names: a base name, and in a folder one that resolves inside it."""
    name = untrusted.member_name(value, who, mtl, field)
    if members is None:
        untrusted.inside(Path(prefix), Path(prefix, name), who, mtl, field)
    return name


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


def _open_landsat(p: Path) -> Scene:
    prefix, mtl_name, meta, members = _landsat_entry(p)
    owner = str(p)
    who = f"Landsat product {owner}"
    contents = untrusted.group(meta, "PRODUCT_CONTENTS", who, mtl_name)
    attrs = untrusted.group(meta, "IMAGE_ATTRIBUTES", who, mtl_name)
    level = untrusted.text(contents.get("PROCESSING_LEVEL", ""), who, mtl_name, "PROCESSING_LEVEL")
    level = level.upper()
    if level not in LANDSAT_L1 + LANDSAT_L2:
        raise InputError(
            f"Landsat product {owner} is of processing level {level or '(none given)'} "
            f"({mtl_name}), which is not supported; give a Level-1 ({', '.join(LANDSAT_L1)}) or "
            f"Level-2 ({', '.join(LANDSAT_L2)}) product"
        )
    sensor = untrusted.text(attrs.get("SENSOR_ID", ""), who, mtl_name, "SENSOR_ID").upper()
    if sensor not in LANDSAT_RGBN:
        raise InputError(
            f"Landsat product {owner}: sensor {sensor or '(none given)'} in {mtl_name} is not "
            "supported; give an OLI (Landsat 8/9), TM or ETM+ (Landsat 4/5/7) product"
        )
    l2 = level in LANDSAT_L2
    group_name = "LEVEL2_SURFACE_REFLECTANCE_PARAMETERS" if l2 else "LEVEL1_RADIOMETRIC_RESCALING"
    group = untrusted.group(meta, group_name, who, mtl_name)
    sun = 1.0
    elevation = None
    if not l2:
        if "SUN_ELEVATION" not in attrs:
            raise InputError(
                f"Landsat product {owner}: {mtl_name} has no SUN_ELEVATION in IMAGE_ATTRIBUTES, "
                "needed for Level-1 reflectance; download the product again"
            )
        # below 1 degree top-of-atmosphere reflectance (/ sin) is meaningless
        elevation = untrusted.number(attrs["SUN_ELEVATION"], who, mtl_name, "SUN_ELEVATION", 1, 90)
        sun = math.sin(math.radians(elevation))
    sources = []
    for number in LANDSAT_RGBN[sensor]:
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
        fname = contents.get(f"FILE_NAME_BAND_{number}")
        if not fname:
            raise InputError(
                f"Landsat product {owner}: {mtl_name} names no FILE_NAME_BAND_{number}; "
                "download the product again"
            )
        fname = _landsat_file(fname, prefix, members, who, mtl_name, f"FILE_NAME_BAND_{number}")
        present = (fname in members) if members is not None else Path(prefix, fname).exists()
        if not present:
            raise InputError(
                f"Landsat product {owner} is missing band {number} ({fname}); the product is "
                "incomplete: download or unpack it again"
            )
        origin = f"{group_name} in {mtl_name}" + ("" if l2 else " / sin(SUN_ELEVATION)")
        sources.append(
            BandSource(
                ("SR_B" if l2 else "B") + str(number),
                f"{prefix}/{fname}",
                scale=10000.0 * mult / sun,
                offset=10000.0 * add / sun,
                nodata=0,
                scaling_from=origin,
            )
        )
    qa_name = contents.get("FILE_NAME_QUALITY_L1_PIXEL")
    qa = None
    if qa_name:
        field = "FILE_NAME_QUALITY_L1_PIXEL"
        qa_name = _landsat_file(qa_name, prefix, members, who, mtl_name, field)
        present = (qa_name in members) if members is not None else Path(prefix, qa_name).exists()
        qa = f"{prefix}/{qa_name}" if present else None
    if qa is not None:
        _one_grid([*sources, BandSource("QA_PIXEL", qa)], owner)
    product_id = safe_name(contents.get("LANDSAT_PRODUCT_ID"), _stem_of_product(p))
    record = {
        "path": str(p),
        "mtl": f"{prefix}/{mtl_name}",
        "sensor": sensor,
        "spacecraft": attrs.get("SPACECRAFT_ID"),
        "processing_level": level,
        "sun_elevation": elevation,
        "scaling": (
            "DN * REFLECTANCE_MULT_BAND_n + REFLECTANCE_ADD_BAND_n, x 10000"
            if l2
            else "(DN * REFLECTANCE_MULT_BAND_n + REFLECTANCE_ADD_BAND_n) / sin(SUN_ELEVATION), "
            "x 10000"
        ),
    }
    return _stacked_scene(
        sources,
        kind="landsat",
        product_id=product_id,
        record=record,
        scaled=True,
        owner=owner,
        qa_fill=qa,
    )


# ----------------------------------------------------------------------------- STAC

STAC_NAMES = {"red": ("red",), "green": ("green",), "blue": ("blue",), "nir": ("nir", "nir08")}


def _load_item(where: str) -> tuple[dict[str, Any], str]:
    """(the item, the base its relative hrefs resolve against); bounded in size and, for a URL,
    in time (:mod:`cloudcps.untrusted`)."""
    try:
        if re.match(r"^https?://", where):
            data = untrusted.fetch_url(where, "STAC item")
            base = where
        else:
            data = untrusted.read_file_limited(Path(where), f"STAC item {where}", "the file")
            base = str(Path(where).resolve().parent) + "/"
        item = json.loads(untrusted.decode(data, f"STAC item {where}", "the item"))
    except json.JSONDecodeError as exc:
        raise InputError(
            f"STAC item {where} is not valid JSON ({exc}); give a STAC Item JSON file"
        ) from None
    except RecursionError:
        raise InputError(
            f"STAC item {where} is nested too deeply to be a STAC Item; give one item's JSON"
        ) from None
    except OSError as exc:
        raise InputError(f"STAC item {where} cannot be read ({exc})") from None
    if not (
        isinstance(item, dict)
        and item.get("type") == "Feature"
        and isinstance(item.get("assets"), dict)
    ):
        raise InputError(
            f"{where} is JSON but not a STAC Item (a Feature with assets); give one item's JSON "
            "(an ItemCollection or search result: save one of its features)"
        )
    return item, base


def _gdal_href(href: str, base: str, owner: str, field: str) -> str:
    """The GDAL name of an asset: an item read from a URL resolves every href against it (RFC
    3986: ``/a.tif`` is on the same host) and may name remote assets only; a local item's
    relative hrefs must stay in its folder (its absolute paths and ``file://`` are the user's)."""
    if re.match(r"^https?://", base):
        href = urljoin(base, href)
        untrusted.remote_href(href, owner, field)
    elif href.startswith("file://"):
        return urlparse(href).path
    elif not re.match(r"^[a-z][a-z0-9+.-]*://", href) and not href.startswith("/"):
        local = Path(base, href)
        return str(untrusted.inside(Path(base), local, owner, "the item", field))
    if re.match(r"^https?://", href):
        return "/vsicurl/" + href
    if href.startswith("s3://"):
        return "/vsis3/" + href[5:]
    if href.startswith("gs://"):
        return "/vsigs/" + href[5:]
    return href


def _asset_bands(
    asset: dict[str, Any], owner: str, key: str
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(eo band descriptions, raster band descriptions) of an asset, STAC 1.0 or 1.1."""
    eo = asset.get("eo:bands")
    raster = asset.get("raster:bands")
    fields = ("eo:bands", "raster:bands")
    if eo is None and raster is None and asset.get("bands") is not None:  # STAC 1.1
        eo = raster = asset["bands"]
        fields = ("bands", "bands")
    where = f"asset {key!r}"
    return (
        untrusted.objects(eo, owner, where, fields[0]),
        untrusted.objects(raster, owner, where, fields[1]),
    )


def _common_name(band: dict[str, Any]) -> str | None:
    name = band.get("common_name", band.get("eo:common_name"))
    return str(name).lower() if name else None


def _pick_asset(item: dict[str, Any], want: str, owner: str) -> tuple[str, int] | None:
    """(asset key, 1-based band) for common name ``want``: single-band assets first, the key
    equal to the name first, then multi-band assets, then assets keyed by the name alone."""
    names = STAC_NAMES[want]
    hits = []
    for key, asset in item["assets"].items():
        if not isinstance(asset, dict) or "href" not in asset:
            continue
        eo, _ = _asset_bands(asset, owner, key)
        for i, band in enumerate(eo, start=1):
            if _common_name(band) in names:
                hits.append((len(eo) > 1, key.lower() not in names, key, i))
    if hits:
        _, _, key, i = min(hits)
        return key, i
    for name in names:
        for key, asset in item["assets"].items():
            if key.lower() == name and isinstance(asset, dict) and "href" in asset:
                return key, 1
    return None


def _open_stac(where: str) -> Scene:
    item, base = _load_item(where)
    owner = f"STAC item {where}"
    item_id = safe_name(item.get("id"), Path(urlparse(where).path).stem)
    sources: list[BandSource] = []
    scaled = False
    for want in ("red", "green", "blue", "nir"):
        pick = _pick_asset(item, want, owner)
        if pick is None:
            if want == "nir":
                continue
            raise InputError(
                f"STAC item {where} has no {want} asset (none with eo:bands common_name {want!r} "
                f"nor keyed {want!r}); give an item of an optical product with red, green and "
                "blue bands"
            )
        key, band = pick
        asset = item["assets"][key]
        _, raster = _asset_bands(asset, owner, key)
        rb = raster[band - 1] if len(raster) >= band else {}
        scale, offset = rb.get("scale"), rb.get("offset")
        nodata = rb.get("nodata", asset.get("nodata"))
        where_band = f"raster:bands of asset {key!r}"
        if nodata is not None and not (isinstance(nodata, str) and nodata.lower() == "nan"):
            nodata = untrusted.number(nodata, owner, where_band, "nodata", -3.4e38, 3.4e38)
            nodata = None if math.isnan(nodata) else nodata
        else:
            nodata = None
        if scale is not None or offset is not None:
            scaled = True
            # |scale|, |offset| <= 100: reflectance x 10000 then stays within float32 and sane
            ratio = 10000.0 * (
                1.0
                if scale is None
                else untrusted.number(scale, owner, where_band, "scale", -100, 100, nonzero=True)
            )
            shift = 10000.0 * (
                0.0
                if offset is None
                else untrusted.number(offset, owner, where_band, "offset", -100, 100)
            )
            origin = f"raster:bands scale/offset of asset {key!r} in the item, x 10000"
        else:
            ratio, shift, origin = 1.0, 0.0, "none in the item (values as stored)"
        sources.append(
            BandSource(
                key,
                _gdal_href(
                    untrusted.text(asset["href"], owner, f"asset {key!r}", "href", numbers=False),
                    base,
                    owner,
                    f"href of asset {key!r}",
                ),
                band,
                scale=ratio,
                offset=shift,
                nodata=nodata,
                scaling_from=origin,
            )
        )
    if not scaled:  # no asset gave scaling: values as stored, the caller's --scale applies
        for s in sources:
            s.scaling_from = "none in the item (values as stored)"
    props = untrusted.group(item, "properties", owner, "the item")
    instruments = props.get("instruments") or []
    if not (isinstance(instruments, list) and all(isinstance(i, str) for i in instruments)):
        raise InputError(
            f"{owner}: properties.instruments is {untrusted.shown(instruments, 40)}, not a list "
            "of names; fix or regenerate the item"
        )
    record = {
        "path": where,
        "item_id": item_id,
        "collection": item.get("collection"),
        "sensor": ", ".join(instruments) or None,
        "platform": props.get("platform"),
        "processing_level": props.get("processing:level") or props.get("s2:product_type"),
        "scaling": "DN * scale + offset from raster:bands, x 10000" if scaled else "none",
    }
    return _stacked_scene(
        sources,
        kind="stac",
        product_id=item_id,
        record=record,
        scaled=scaled,
        owner=owner,
    )


# ----------------------------------------------------------------------------- band files


def _open_band_files(files: list[Path]) -> Scene:
    if not 3 <= len(files) <= 4:
        raise InputError(
            f"--band-files gives {len(files)} file(s); give 3 or 4: R,G,B[,NIR] (e.g. "
            "--band-files B4.tif,B3.tif,B2.tif,B8.tif)"
        )
    sources = []
    for role, f in zip(("R", "G", "B", "NIR"), files, strict=False):
        with open_raster(f, "band file") as src:
            _real_valued(src, f"band file {f}")
            if src.count != 1:
                raise InputError(
                    f"band file {f} has {src.count} bands; --band-files takes single-band files "
                    "(for a multi-band raster give it as the scene, with --bands)"
                )
            nodata = src.nodata
        sources.append(
            BandSource(
                role, str(f.absolute()), nodata=nodata, scaling_from="none (values as stored)"
            )
        )
    stems = [f.stem for f in files]
    common = stems[0][
        : next(
            (i for i, chars in enumerate(zip(*stems, strict=False)) if len(set(chars)) > 1),
            min(map(len, stems)),
        )
    ]
    product_id = re.sub(r"([_\-. ]+(b|band)\d*)?[_\-. ]*$", "", common, flags=re.IGNORECASE)
    product_id = product_id or stems[0]
    record = {
        "files": {s.name: s.path for s in sources},
        "processing_level": None,
        "sensor": None,
        "scaling": "none (values as stored; --scale/--offset apply)",
    }
    return _stacked_scene(
        sources,
        kind="band-files",
        product_id=product_id,
        record=record,
        scaled=False,
        owner="--band-files " + ",".join(str(f) for f in files),
    )


# ----------------------------------------------------------------------------- what a command names


@dataclass(frozen=True)
class SceneRef:
    """One scene as the user named it: a path (a raster, a product folder, archive or metadata
    file, a STAC item) or a set of band files; ``product_id`` names its outputs."""

    path: Path
    band_files: tuple[Path, ...] | None = None
    product_id: str = ""

    def open(self, bands: Sequence[int] | None = None) -> Scene:
        given = tuple(bands) if bands is not None else None
        return open_scene(self.path, bands=given, band_files=self.band_files)

    @property
    def name(self) -> str:
        """The scene in messages."""
        if self.band_files:
            return "--band-files " + ",".join(str(f) for f in self.band_files)
        return gdal_name(self.path)  # a URL keeps its // (pathlib collapses it)

    @property
    def inputs(self) -> list[Path]:
        """The files an output must never be or replace."""
        return [self.path, *(self.band_files or ())]

    @property
    def id(self) -> str:
        return self.product_id or self.path.stem


def scene_ref(
    path: str | Path,
    band_files: Sequence[str | Path] | None = None,
    bands: tuple[int, ...] | None = None,
) -> SceneRef:
    """Open what the user named once (every product is checked before any work) and return its
    :class:`SceneRef`; the errors of :func:`open_scene`."""
    files = tuple(Path(f) for f in band_files) if band_files else None
    first = files[0] if files else Path(path)
    with open_scene(first if files else path, bands=bands, band_files=files) as scene:
        return SceneRef(first, files, scene.product_id)


def as_ref(scene: str | os.PathLike[str] | SceneRef) -> SceneRef:
    return scene if isinstance(scene, SceneRef) else SceneRef(Path(scene))


def is_url(path: str | os.PathLike[str]) -> bool:
    """Whether a scene is named by a URL (also after pathlib collapsed its ``//``)."""
    return bool(re.match(r"^(https?|s3|gs)://", gdal_name(path)))


def default_mask_path(scene: str | os.PathLike[str] | SceneRef) -> Path:
    """``<product id>_mask.tif`` beside the scene (what ``cloudcps predict SCENE`` writes): for a
    raster file its name, for a product its id (a ``.SAFE`` folder, its ``.zip``, a Landsat
    folder or ``.tar`` get the mask beside them; an MTD or MTL file beside itself)."""
    ref = as_ref(scene)
    return ref.path.parent / f"{ref.id}_mask.tif"


def output_paths(
    scenes: Sequence[str | os.PathLike[str] | SceneRef], out: Path | None
) -> list[Path]:
    """One mask per scene: ``out`` for one scene and a .tif name, else ``out/<id>_mask.tif``;
    without ``out``, ``<id>_mask.tif`` beside each scene (:func:`default_mask_path`)."""
    refs = [as_ref(s) for s in scenes]
    remote = next((r for r in refs if is_url(r.path)), None)
    if out is None and remote is not None:
        raise InputError(
            f"scene {gdal_name(remote.path)} is a URL, so its mask cannot go beside it; give "
            "--out FOLDER"
        )
    if out is None:
        paths = [default_mask_path(r) for r in refs]
        seen: dict[Path, SceneRef] = {}
        for ref, path in zip(refs, paths, strict=True):
            if path in seen:  # e.g. X.SAFE and X.zip in one folder
                raise InputError(
                    f"{seen[path].name} and {ref.name} would both write {path}; give one of "
                    "them, or --out FOLDER for each"
                )
            seen[path] = ref
        return paths
    if len(refs) == 1 and out.suffix.lower() in (".tif", ".tiff"):
        return [out]
    if out.suffix.lower() in (".tif", ".tiff"):
        raise InputError(
            f"--out {out} names a file but {len(refs)} scenes were given; give a folder"
        )
    names = [r.id for r in refs]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise InputError(f"several scenes are named {sorted(dup)[0]!r}; their masks would collide")
    return [out / f"{r.id}_mask.tif" for r in refs]


def sidecars(mask: Path) -> tuple[Path, Path]:
    """The probability raster and JSON report that go with ``mask``."""
    stem = mask.name[: -len(mask.suffix)] if mask.suffix else mask.name
    return mask.with_name(f"{stem}_proba.tif"), mask.with_name(f"{stem}.json")


def parse_band_files(text: str) -> tuple[Path, ...]:
    """``R.tif,G.tif,B.tif[,NIR.tif]`` of ``--band-files``."""
    files = tuple(Path(p.strip()) for p in text.split(",") if p.strip())
    if not 3 <= len(files) <= 4:
        raise ValueError(
            f"give 3 or 4 comma-separated files R,G,B[,NIR], got {len(files)} in {text!r}"
        )
    return files


def source_tags(scene: Scene) -> dict[str, str]:
    """GeoTIFF tags that say what a mask was computed from and how its values were scaled."""
    rec = scene.record
    tags = {"SOURCE_KIND": scene.kind, "SOURCE_PRODUCT": scene.product_id}
    if scene.kind == "raster":
        tags["SOURCE_SCALING"] = "as stored (--scale/--offset)"
        return tags
    bands = rec.get("bands") or []
    tags["SOURCE_SCALING"] = "; ".join(
        f"{b['name']}: x{b['scale']:.6g} {b['offset']:+.6g} ({b['scaling_from']})" for b in bands
    )[:2000]
    for key in ("processing_level", "sensor"):
        if rec.get(key):
            tags[f"SOURCE_{key.upper()}"] = str(rec[key])
    return tags
