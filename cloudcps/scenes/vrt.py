"""The stacking VRT: a product's band files checked to lie on one grid and stacked as float32
bands of reflectance x 10000 (GDAL VRT XML held in memory, no data -32768), opened as a
:class:`~cloudcps.scenes.scene.Scene`. Every product kind and ``--band-files`` end here."""

from __future__ import annotations

import re
import time
import uuid
import warnings
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import rasterio
from rasterio.errors import NotGeoreferencedWarning, RasterioError
from rasterio.io import MemoryFile

from cloudcps import untrusted
from cloudcps.errors import InputError
from cloudcps.io import GDAL_ERRORS, gdal_message, is_virtual_path
from cloudcps.scenes.scene import COLOR_INTERP, NODATA, BandSource, Grid, Scene, real_valued


def _grid_of(path: str, what: str, owner: str) -> Grid:
    """The grid of ``path`` (``what`` names it in errors)."""
    start = time.monotonic()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(path) as src:
                real_valued(src, f"{what} of {owner}")
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


def one_grid(sources: list[BandSource], owner: str) -> Grid:
    """The grid all ``sources`` share (to a thousandth of a pixel); refused if they differ."""
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


def stacked_scene(
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
    """The :class:`Scene` of ``sources`` stacked on their grid (checked unless ``grid`` is
    given); ``record`` gains the bands, the grid and the no data of the stack."""
    grid = grid or one_grid(sources, owner)
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
