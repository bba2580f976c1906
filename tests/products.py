"""Small products in the formats users download, for the tests of :mod:`cloudcps.scenes`.

Each builder writes a real-format product under a folder and returns a :class:`Product`: where it
is, its id, its grid, and the reflectance x 10000 of R, G, B, NIR that a correct reader must give
(NaN where the product has no data), computed here with numpy from the digital numbers written.
The layouts and metadata keys are those of the real products (trimmed to what a reader needs):

Sentinel-2 L1C / L2A (SAFE, the "compact" naming in use since 2016)::

    S2B_MSIL2A_20230823T095559_N0509_R122_T18TWL_20230823T124759.SAFE/
      MTD_MSIL2A.xml        product XML: Granule_List/IMAGE_FILE, BOA_QUANTIFICATION_VALUE,
                            BOA_ADD_OFFSET per band_id (L1C: QUANTIFICATION_VALUE, RADIO_ADD_OFFSET)
      GRANULE/L2A_T18TWL_A033750_20230823T100143/
        MTD_TL.xml          tile XML: HORIZONTAL_CS_CODE, Size and Geoposition per resolution
        IMG_DATA/R10m/T18TWL_20230823T095559_B04_10m.jp2   (B02, B03, B04, B08)
                            (L1C: IMG_DATA/T18TWL_20230823T095559_B04.jp2 ...)

    reflectance = (DN + offset) / quantification; DN 0 = no data.

Landsat 4-9 Collection 2 (what a USGS .tar unpacks to)::

    LC08_L2SP_140041_20210101_20210308_02_T1/
      LC08_L2SP_140041_20210101_20210308_02_T1_MTL.txt   ODL text: GROUP = ... / KEY = VALUE
      LC08_L2SP_140041_20210101_20210308_02_T1_MTL.json  the same as JSON
      LC08_L2SP_..._SR_B2.TIF ... SR_B5.TIF, _QA_PIXEL.TIF   (Level-1: _B2.TIF ... _B5.TIF)

    Level-2: reflectance = DN * REFLECTANCE_MULT_BAND_n + REFLECTANCE_ADD_BAND_n
             (LEVEL2_SURFACE_REFLECTANCE_PARAMETERS: 2.75e-05, -0.2)
    Level-1: reflectance = (DN * REFLECTANCE_MULT_BAND_n + REFLECTANCE_ADD_BAND_n)
                           / sin(SUN_ELEVATION)
             (LEVEL1_RADIOMETRIC_RESCALING, IMAGE_ATTRIBUTES)
    DN 0 or QA_PIXEL bit 0 (fill) = no data.

STAC Item (Earth Search's sentinel-2-l2a layout): a GeoJSON Feature whose assets ``red``, ``green``,
``blue``, ``nir`` carry ``eo:bands`` common names and ``raster:bands`` scale, offset and nodata.
"""

from __future__ import annotations

import json
import math
import tarfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from affine import Affine

from tests.conftest import write_raster

NODATA_OUT = -32768.0  # what the hand-stacked reference GeoTIFF uses for no data


@dataclass
class Product:
    """A product written by a builder and what reading it must give."""

    path: Path  # what a user passes: the folder (or archive / XML / JSON, see ``files``)
    product_id: str
    crs: str
    transform: Affine
    reflectance: np.ndarray  # (4, H, W) float32 R, G, B, NIR x 10000; NaN = no data
    files: dict[str, Path] = field(default_factory=dict)  # other entry points (xml, mtl, zip...)

    @property
    def valid(self) -> np.ndarray:
        return np.all(np.isfinite(self.reflectance), axis=0)

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.reflectance.shape[1]), int(self.reflectance.shape[2])

    def stacked(self, path: Path) -> Path:
        """The same reflectance stacked by hand in one float32 GeoTIFF (no data -32768)."""
        data = np.where(np.isfinite(self.reflectance), self.reflectance, NODATA_OUT)
        return write_raster(
            path, data.astype(np.float32), crs=self.crs, transform=self.transform, nodata=NODATA_OUT
        )


def _digital_numbers(
    shape: tuple[int, int], lo: int, hi: int, seed: int, border: int
) -> np.ndarray:
    """(4, H, W) uint16 DNs in [lo, hi) with a no-data (0) wedge at the left, like a tile edge."""
    rng = np.random.default_rng(seed)
    dn = rng.integers(lo, hi, size=(4, *shape)).astype(np.uint16)
    h = shape[0]
    for row in range(h):
        dn[:, row, : border + row * border // max(h, 1)] = 0
    return dn


# ----------------------------------------------------------------------------- Sentinel-2

S2_BANDS = ("B02", "B03", "B04", "B08")  # written in this order; reflectance is R, G, B, NIR
S2_BAND_ID = {"B02": 1, "B03": 2, "B04": 3, "B08": 7}  # band_id of the product XML (B1 = 0)
S2_ALL_BANDS = ("B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B9", "B10", "B11", "B12")


def _write_jp2(path: Path, data: np.ndarray, crs: str, transform: Affine) -> None:
    """One band as lossless JPEG2000 with GMLJP2 georeferencing, as ESA writes them."""
    path.parent.mkdir(parents=True, exist_ok=True)
    profile = {
        "driver": "JP2OpenJPEG",
        "width": data.shape[1],
        "height": data.shape[0],
        "count": 1,
        "dtype": "uint16",
        "crs": crs,
        "transform": transform,
        "QUALITY": "100",
        "REVERSIBLE": "YES",
        "YCC": "NO",
    }
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data, 1)


def _s2_product_xml(
    level: str,
    product_uri: str,
    baseline: str,
    image_files: list[str],
    quantification: int,
    offset: int | None,
) -> str:
    l2a = level == "L2A"
    root = "Level-2A_User_Product" if l2a else "Level-1C_User_Product"
    files = "\n".join(f"            <IMAGE_FILE>{f}</IMAGE_FILE>" for f in image_files)
    granule = image_files[0].split("/")[1]
    if l2a:
        quant = (
            "<QUANTIFICATION_VALUES_LIST>\n"
            '        <BOA_QUANTIFICATION_VALUE unit="none">'
            f"{quantification}</BOA_QUANTIFICATION_VALUE>\n"
            '        <AOT_QUANTIFICATION_VALUE unit="none">1000.0</AOT_QUANTIFICATION_VALUE>\n'
            '        <WVP_QUANTIFICATION_VALUE unit="cm">1000.0</WVP_QUANTIFICATION_VALUE>\n'
            "      </QUANTIFICATION_VALUES_LIST>"
        )
        tag, group = "BOA_ADD_OFFSET", "BOA_ADD_OFFSET_VALUES_LIST"
    else:
        quant = f'<QUANTIFICATION_VALUE unit="none">{quantification}</QUANTIFICATION_VALUE>'
        tag, group = "RADIO_ADD_OFFSET", "Radiometric_Offset_List"
    offsets = ""
    if offset is not None:
        rows = "\n".join(
            f'        <{tag} band_id="{i}">{offset}</{tag}>' for i in range(len(S2_ALL_BANDS))
        )
        offsets = f"<{group}>\n{rows}\n      </{group}>"
    spectral = "\n".join(
        f'        <Spectral_Information bandId="{i}" physicalBand="{b}"/>'
        for i, b in enumerate(S2_ALL_BANDS)
    )
    ns = f"https://psd-14.sentinel2.eo.esa.int/PSD/User_Product_{root.split('_')[0]}.xsd"
    datastrip = f"S2B_OPER_MSI_{level}_DS_2BPS_20230823T124759_S20230823T100143_N{baseline}"
    return f"""<?xml version="1.0" encoding="UTF-8" standalone="no"?>
<n1:{root} xmlns:n1="{ns}"
    xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xsi:schemaLocation="{ns}">
  <n1:General_Info>
    <Product_Info>
      <PRODUCT_START_TIME>2023-08-23T09:55:59.024Z</PRODUCT_START_TIME>
      <PRODUCT_STOP_TIME>2023-08-23T09:55:59.024Z</PRODUCT_STOP_TIME>
      <PRODUCT_URI>{product_uri}</PRODUCT_URI>
      <PROCESSING_LEVEL>Level-{level[1:]}</PROCESSING_LEVEL>
      <PRODUCT_TYPE>S2MSI{level[1:]}</PRODUCT_TYPE>
      <PROCESSING_BASELINE>{baseline}</PROCESSING_BASELINE>
      <GENERATION_TIME>2023-08-23T12:47:59.000000Z</GENERATION_TIME>
      <Datatake datatakeIdentifier="GS2B_20230823T095559_033750_N{baseline}">
        <SPACECRAFT_NAME>Sentinel-2B</SPACECRAFT_NAME>
        <DATATAKE_TYPE>INS-NOBS</DATATAKE_TYPE>
        <DATATAKE_SENSING_START>2023-08-23T09:55:59.024Z</DATATAKE_SENSING_START>
        <SENSING_ORBIT_NUMBER>122</SENSING_ORBIT_NUMBER>
        <SENSING_ORBIT_DIRECTION>DESCENDING</SENSING_ORBIT_DIRECTION>
      </Datatake>
      <Query_Options completeSingleTile="true">
        <PRODUCT_FORMAT>SAFE_COMPACT</PRODUCT_FORMAT>
      </Query_Options>
      <Product_Organisation>
        <Granule_List>
          <Granule datastripIdentifier="{datastrip}"
                   granuleIdentifier="{granule}" imageFormat="JPEG2000">
{files}
          </Granule>
        </Granule_List>
      </Product_Organisation>
    </Product_Info>
    <Product_Image_Characteristics>
      <Special_Values>
        <SPECIAL_VALUE_TEXT>NODATA</SPECIAL_VALUE_TEXT>
        <SPECIAL_VALUE_INDEX>0</SPECIAL_VALUE_INDEX>
      </Special_Values>
      <Special_Values>
        <SPECIAL_VALUE_TEXT>SATURATED</SPECIAL_VALUE_TEXT>
        <SPECIAL_VALUE_INDEX>65535</SPECIAL_VALUE_INDEX>
      </Special_Values>
      {quant}
      {offsets}
      <Spectral_Information_List>
{spectral}
      </Spectral_Information_List>
    </Product_Image_Characteristics>
  </n1:General_Info>
</n1:{root}>
"""


def _s2_tile_xml(level: str, epsg: int, transform: Affine, shape: tuple[int, int]) -> str:
    """The granule's MTD_TL.xml: the tile's CRS and, per resolution, its size and corner."""
    root = "Level-2A_Tile_ID" if level == "L2A" else "Level-1C_Tile_ID"
    h, w = shape
    sizes, corners = [], []
    for res in (10, 20, 60):
        f = res // 10
        sizes.append(
            f'      <Size resolution="{res}"><NROWS>{h // f}</NROWS><NCOLS>{w // f}</NCOLS></Size>'
        )
        corners.append(
            f'      <Geoposition resolution="{res}"><ULX>{transform.c:.0f}</ULX>'
            f"<ULY>{transform.f:.0f}</ULY><XDIM>{res}</XDIM><YDIM>-{res}</YDIM></Geoposition>"
        )
    ns = f"https://psd-14.sentinel2.eo.esa.int/PSD/S2_PDI_{root.replace('_ID', '')}_Metadata.xsd"
    tile_id = f"S2B_OPER_MSI_{level}_TL_2BPS_20230823T124759_A033750_T18TWL_N05.09"
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<n1:{root} xmlns:n1="{ns}">
  <n1:General_Info>
    <TILE_ID metadataLevel="Brief">{tile_id}</TILE_ID>
    <SENSING_TIME metadataLevel="Standard">2023-08-23T10:01:43.123Z</SENSING_TIME>
  </n1:General_Info>
  <n1:Geometric_Info>
    <Tile_Geocoding metadataLevel="Brief">
      <HORIZONTAL_CS_NAME>WGS84 / UTM zone 18N</HORIZONTAL_CS_NAME>
      <HORIZONTAL_CS_CODE>EPSG:{epsg}</HORIZONTAL_CS_CODE>
{chr(10).join(sizes)}
{chr(10).join(corners)}
    </Tile_Geocoding>
  </n1:Geometric_Info>
</n1:{root}>
"""


def sentinel2_safe(
    root: Path,
    level: str = "L2A",
    *,
    baseline: str = "05.09",
    offset: int | None = -1000,
    quantification: int = 10000,
    shape: tuple[int, int] = (100, 120),
    omit: tuple[str, ...] = (),
    seed: int = 0,
) -> Product:
    """A Sentinel-2 ``level`` (L1C or L2A) SAFE folder of tile T18TWL at 10 m (EPSG:32618).

    ``offset`` is BOA_ADD_OFFSET / RADIO_ADD_OFFSET for every band (None: the XML has none, as
    before baseline 04.00); ``omit`` leaves band files (e.g. "B08") out of the folder but listed in
    the XML. ``files`` holds "xml" (the product XML) and "zip" (the SAFE zipped, as the Copernicus
    Data Space delivers it).
    """
    l2a = level == "L2A"
    stamp = "20230823T124759" if l2a else "20230823T114432"
    name = f"S2B_MSI{level}_20230823T095559_N{baseline.replace('.', '')}_R122_T18TWL_{stamp}"
    safe = root / f"{name}.SAFE"
    granule = f"{level}_T18TWL_A033750_20230823T100143"
    crs, epsg = "EPSG:32618", 32618
    transform = Affine(10.0, 0.0, 499980.0, 0.0, -10.0, 4700040.0)
    dn = _digital_numbers(shape, 1, 9000, seed, border=12)
    image_files = []
    for i, band in enumerate(S2_BANDS):
        if l2a:
            rel = f"GRANULE/{granule}/IMG_DATA/R10m/T18TWL_20230823T095559_{band}_10m"
        else:
            rel = f"GRANULE/{granule}/IMG_DATA/T18TWL_20230823T095559_{band}"
        image_files.append(rel)
        if band not in omit:
            _write_jp2(safe / f"{rel}.jp2", dn[i], crs, transform)
    if l2a:  # the other resolutions are listed too; a reader must pick the 10 m files
        image_files += [
            f"GRANULE/{granule}/IMG_DATA/R20m/T18TWL_20230823T095559_B04_20m",
            f"GRANULE/{granule}/IMG_DATA/R60m/T18TWL_20230823T095559_B04_60m",
        ]
    xml_name = f"MTD_MSI{level}.xml"
    safe.mkdir(parents=True, exist_ok=True)
    (safe / xml_name).write_text(
        _s2_product_xml(level, f"{name}.SAFE", baseline, image_files, quantification, offset)
    )
    (safe / "GRANULE" / granule).mkdir(parents=True, exist_ok=True)
    (safe / "GRANULE" / granule / "MTD_TL.xml").write_text(
        _s2_tile_xml(level, epsg, transform, shape)
    )
    order = [S2_BANDS.index(b) for b in ("B04", "B03", "B02", "B08")]
    add = 0 if offset is None else offset
    refl = (dn[order].astype(np.float64) + add) * (10000.0 / quantification)
    refl[:, np.any(dn[order] == 0, axis=0)] = np.nan
    zip_path = root / f"{name}.zip"
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_STORED) as zf:
        for p in sorted(safe.rglob("*")):
            zf.write(p, p.relative_to(root).as_posix())
    return Product(
        safe,
        name,
        crs,
        transform,
        refl.astype(np.float32),
        {"xml": safe / xml_name, "zip": zip_path},
    )


# ----------------------------------------------------------------------------- Landsat

# Landsat band numbers of R, G, B, NIR per sensor
LANDSAT_RGBN = {"OLI_TIRS": (4, 3, 2, 5), "TM": (3, 2, 1, 4), "ETM": (3, 2, 1, 4)}


def _odl(groups: dict[str, Any], indent: int = 0) -> list[str]:
    """Landsat's MTL text ("ODL"): nested GROUP = NAME ... END_GROUP = NAME; strings quoted."""
    out: list[str] = []
    pad = "  " * indent
    for key, value in groups.items():
        if isinstance(value, dict):
            out.append(f"{pad}GROUP = {key}")
            out += _odl(value, indent + 1)
            out.append(f"{pad}END_GROUP = {key}")
        elif isinstance(value, str):
            out.append(f'{pad}{key} = "{value}"')
        else:
            out.append(f"{pad}{key} = {value}")
    return out


def _json_strings(groups: dict[str, Any]) -> dict[str, Any]:
    """USGS's MTL.json holds every value as a string."""
    return {
        k: _json_strings(v) if isinstance(v, dict) else (v if isinstance(v, str) else repr(v))
        for k, v in groups.items()
    }


def landsat_c2(
    root: Path,
    level: str = "L2SP",
    *,
    sensor: str = "OLI_TIRS",
    sun_elevation: float = 52.5,
    shape: tuple[int, int] = (100, 120),
    omit: tuple[int, ...] = (),
    no_coefficients: bool = False,
    qa: bool = True,
    seed: int = 1,
) -> Product:
    """A Landsat Collection 2 product folder: Landsat 8 OLI (``sensor="OLI_TIRS"``) or Landsat 5
    TM (``"TM"``), ``level`` L2SP (surface reflectance) or L1TP (top of atmosphere), on a 30 m
    UTM grid (EPSG:32645), with per-band COGs, QA_PIXEL, _MTL.txt and _MTL.json.

    ``omit`` leaves band numbers out of the folder (still listed in the MTL);
    ``no_coefficients`` drops the reflectance coefficients from the MTL. ``files`` holds "mtl",
    "mtl_json" and "tar" (the folder's files in a .tar, as USGS delivers them).
    """
    l2 = level.startswith("L2")
    craft, prefix = ("LANDSAT_8", "LC08") if sensor == "OLI_TIRS" else ("LANDSAT_5", "LT05")
    pid = f"{prefix}_{level}_140041_20210101_20210308_02_T1"
    folder = root / pid
    folder.mkdir(parents=True, exist_ok=True)
    crs = "EPSG:32645"
    transform = Affine(30.0, 0.0, 300000.0, 0.0, -30.0, 2800020.0)
    rgbn = LANDSAT_RGBN[sensor]
    lo, hi = (7300, 40000) if l2 else (5000, 30000)
    dn = _digital_numbers(shape, lo, hi, seed, border=9)
    qa_pixel = np.where(np.any(dn == 0, axis=0), 1, 21824).astype(np.uint16)  # 1 = fill
    qa_pixel[shape[0] // 2, shape[1] // 2] = 1  # a fill pixel QA knows of but the bands do not
    stem = "SR_B" if l2 else "B"
    band_nodata = 0 if l2 else None
    names: dict[str, str] = {}
    for band in range(1, 8):
        names[f"FILE_NAME_BAND_{band}"] = f"{pid}_{stem}{band}.TIF"
    names["FILE_NAME_QUALITY_L1_PIXEL"] = f"{pid}_QA_PIXEL.TIF"
    for i, band in enumerate(rgbn):
        if band not in omit:
            _write_cog(folder / f"{pid}_{stem}{band}.TIF", dn[i], crs, transform, band_nodata)
    if qa:
        _write_cog(folder / names["FILE_NAME_QUALITY_L1_PIXEL"], qa_pixel, crs, transform, 1)
    mult = 2.75e-05 if l2 else 2.0e-05
    add = -0.2 if l2 else -0.1
    coeffs = {}
    for band in range(1, 8):
        coeffs[f"REFLECTANCE_MULT_BAND_{band}"] = mult
        coeffs[f"REFLECTANCE_ADD_BAND_{band}"] = add
    if no_coefficients:
        coeffs = {}
    mtl: dict[str, Any] = {
        "PRODUCT_CONTENTS": {
            "ORIGIN": "Image courtesy of the U.S. Geological Survey",
            "DIGITAL_OBJECT_IDENTIFIER": "https://doi.org/10.5066/P9OGBGM6",
            "LANDSAT_PRODUCT_ID": pid,
            "PROCESSING_LEVEL": level,
            "COLLECTION_NUMBER": "02",
            "COLLECTION_CATEGORY": "T1",
            "OUTPUT_FORMAT": "GEOTIFF",
            **names,
            "FILE_NAME_METADATA_ODL": f"{pid}_MTL.txt",
            "FILE_NAME_METADATA_XML": f"{pid}_MTL.xml",
        },
        "IMAGE_ATTRIBUTES": {
            "SPACECRAFT_ID": craft,
            "SENSOR_ID": sensor,
            "WRS_TYPE": 2,
            "WRS_PATH": 140,
            "WRS_ROW": 41,
            "DATE_ACQUIRED": "2021-01-01",
            "SCENE_CENTER_TIME": "04:31:12.1234560Z",
            "CLOUD_COVER": 0.05,
            "SUN_AZIMUTH": 150.12345678,
            "SUN_ELEVATION": sun_elevation,
        },
        "PROJECTION_ATTRIBUTES": {
            "MAP_PROJECTION": "UTM",
            "DATUM": "WGS84",
            "ELLIPSOID": "WGS84",
            "UTM_ZONE": 45,
            "GRID_CELL_SIZE_REFLECTIVE": 30.0,
            "REFLECTIVE_LINES": shape[0],
            "REFLECTIVE_SAMPLES": shape[1],
        },
    }
    if l2:
        mtl["LEVEL2_SURFACE_REFLECTANCE_PARAMETERS"] = {
            **{f"QUANTIZE_CAL_MAX_BAND_{b}": 65535 for b in range(1, 8)},
            **coeffs,
        }
        mtl["LEVEL1_RADIOMETRIC_RESCALING"] = {  # an L2 MTL keeps the L1 coefficients too
            f"REFLECTANCE_MULT_BAND_{b}": 2.0e-05 for b in range(1, 8)
        }
    else:
        mtl["LEVEL1_RADIOMETRIC_RESCALING"] = {
            **{f"RADIANCE_MULT_BAND_{b}": 1.2e-02 for b in range(1, 8)},
            **coeffs,
        }
    doc = {"LANDSAT_METADATA_FILE": mtl}
    (folder / f"{pid}_MTL.txt").write_text("\n".join([*_odl(doc), "END"]) + "\n")
    (folder / f"{pid}_MTL.json").write_text(json.dumps(_json_strings(doc), indent=2))
    refl = dn.astype(np.float64) * mult + add
    if not l2:
        refl /= math.sin(math.radians(sun_elevation))
    refl *= 10000.0
    refl[:, np.any(dn == 0, axis=0) | (qa_pixel == 1)] = np.nan
    tar_path = root / f"{pid}.tar"
    with tarfile.open(tar_path, "w") as tf:
        for p in sorted(folder.iterdir()):
            tf.add(p, p.name)  # USGS tars hold the files at the top level
    return Product(
        folder,
        pid,
        crs,
        transform,
        refl.astype(np.float32),
        {"mtl": folder / f"{pid}_MTL.txt", "mtl_json": folder / f"{pid}_MTL.json", "tar": tar_path},
    )


def _write_cog(
    path: Path, data: np.ndarray, crs: str, transform: Affine, nodata: float | None
) -> None:
    profile = {
        "driver": "COG",
        "width": data.shape[1],
        "height": data.shape[0],
        "count": 1,
        "dtype": data.dtype.name,
        "crs": crs,
        "transform": transform,
        "nodata": nodata,
        "COMPRESS": "DEFLATE",
        "BLOCKSIZE": "64",
    }
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data, 1)


# ----------------------------------------------------------------------------- STAC


def stac_item(
    root: Path,
    *,
    keys: tuple[str, ...] = ("red", "green", "blue", "nir"),
    common_names: bool = True,
    scale: float | None = 0.0001,
    offset: float | None = -0.1,
    shape: tuple[int, int] = (100, 120),
    seed: int = 2,
) -> Product:
    """A STAC Item JSON (Earth Search sentinel-2-l2a style) over local COGs in ``root/cogs``,
    with relative asset hrefs. ``keys`` are the asset keys of R, G, B, NIR (an empty key drops
    that asset); ``common_names=False`` leaves ``eo:bands`` out so only the keys tell the
    bands; ``scale``/``offset`` None leaves them out of ``raster:bands``."""
    item_id = "S2B_18TWL_20230823_0_L2A"
    crs = "EPSG:32618"
    transform = Affine(10.0, 0.0, 499980.0, 0.0, -10.0, 4700040.0)
    dn = _digital_numbers(shape, 1, 9000, seed, border=7)
    phys = {"red": "B04", "green": "B03", "blue": "B02", "nir": "B08"}
    assets: dict[str, Any] = {
        "thumbnail": {"href": "./thumb.jpg", "type": "image/jpeg", "roles": ["thumbnail"]}
    }
    for i, (common, key) in enumerate(zip(("red", "green", "blue", "nir"), keys, strict=True)):
        if not key:
            continue
        cog = root / "cogs" / f"{phys[common]}.tif"
        cog.parent.mkdir(parents=True, exist_ok=True)
        _write_cog(cog, dn[i], crs, transform, 0)
        raster_band: dict[str, Any] = {"nodata": 0, "data_type": "uint16", "spatial_resolution": 10}
        if scale is not None:
            raster_band["scale"] = scale
        if offset is not None:
            raster_band["offset"] = offset
        asset: dict[str, Any] = {
            "href": f"./cogs/{phys[common]}.tif",
            "type": "image/tiff; application=geotiff; profile=cloud-optimized",
            "roles": ["data", "reflectance"],
            "raster:bands": [raster_band],
        }
        if common_names:
            asset["eo:bands"] = [{"name": phys[common], "common_name": common}]
        assets[key] = asset
    h, w = shape
    item = {
        "type": "Feature",
        "stac_version": "1.0.0",
        "stac_extensions": [
            "https://stac-extensions.github.io/eo/v1.1.0/schema.json",
            "https://stac-extensions.github.io/raster/v1.1.0/schema.json",
            "https://stac-extensions.github.io/projection/v1.1.0/schema.json",
        ],
        "id": item_id,
        "geometry": None,
        "properties": {
            "datetime": "2023-08-23T10:01:43.123000Z",
            "platform": "sentinel-2b",
            "constellation": "sentinel-2",
            "instruments": ["msi"],
            "s2:processing_baseline": "05.09",
            "proj:epsg": 32618,
            "proj:shape": [h, w],
            "proj:transform": list(transform)[:6],
        },
        "links": [],
        "assets": assets,
    }
    path = root / f"{item_id}.json"
    path.write_text(json.dumps(item, indent=2))
    refl = dn.astype(np.float64)
    if scale is not None or offset is not None:
        refl = (refl * (1.0 if scale is None else scale) + (offset or 0.0)) * 10000.0
    refl[:, np.any(dn == 0, axis=0)] = np.nan
    return Product(path, item_id, crs, transform, refl.astype(np.float32))


# ----------------------------------------------------------------------------- band files


def band_files(root: Path, *, shape: tuple[int, int] = (100, 120), seed: int = 3) -> Product:
    """Four single-band GeoTIFFs scene_B4.tif (R), scene_B3.tif, scene_B2.tif, scene_B5.tif
    (uint16, nodata 0); ``files`` maps "R", "G", "B", "NIR" to them."""
    crs = "EPSG:32633"
    transform = Affine(30.0, 0.0, 500000.0, 0.0, -30.0, 5000000.0)
    dn = _digital_numbers(shape, 1, 9000, seed, border=5)
    files = {}
    for i, (name, band) in enumerate(zip(("R", "G", "B", "NIR"), (4, 3, 2, 5), strict=True)):
        files[name] = write_raster(
            root / f"scene_B{band}.tif", dn[i], crs=crs, transform=transform, nodata=0
        )
    refl = dn.astype(np.float32)
    refl[:, np.any(dn == 0, axis=0)] = np.nan
    return Product(root / "scene_B4.tif", "scene", crs, transform, refl, files)
