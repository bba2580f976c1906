"""What every input kind gives: the :class:`Scene`, the :class:`BandSource` of each stacked band
and the :class:`Grid` they lie on, with the checks and names the kinds share."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from rasterio.io import DatasetReader, MemoryFile

from cloudcps.errors import InputError

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


def real_valued(src: DatasetReader, name: str) -> None:
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


def product_stem(p: Path) -> str:
    """The product's name without its archive or metadata suffix (a Sentinel-2 ``MTD_MSI*.xml``:
    its SAFE folder's): the id when the metadata gives none."""
    name = p.parent.name if p.is_file() and p.suffix.lower() == ".xml" else p.name
    return re.sub(
        r"(\.SAFE|\.zip|\.tar|\.tar\.gz|\.tgz|_MTL\.txt|_MTL\.json)$", "", name, flags=re.IGNORECASE
    )
