"""The entry point: :func:`open_scene` recognises what the user named (a raster, a Sentinel-2 or
Landsat product, a STAC item, band files) and opens it with its kind's module."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import rasterio

from cloudcps import untrusted
from cloudcps.errors import InputError
from cloudcps.io import gdal_name, is_virtual_path, open_raster
from cloudcps.scenes.bandfiles import open_band_files
from cloudcps.scenes.landsat import mtl_in, open_landsat
from cloudcps.scenes.scene import Scene, real_valued
from cloudcps.scenes.sentinel2 import open_sentinel2
from cloudcps.scenes.stac import open_stac


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
    pixels do so under it too (:func:`cloudcps.contract.gdal_env`)."""
    with rasterio.Env(**untrusted.gdal_http_options()):
        return _open_scene(path, bands, band_files)


def _open_scene(
    path: str | Path,
    bands: tuple[int, ...] | None,
    band_files: Sequence[str | Path] | None,
) -> Scene:
    if band_files is not None:
        scene = open_band_files([Path(p) for p in band_files])
        scene.record["path"] = str(path)
        return _check_bands(scene, bands)
    text = gdal_name(path)  # a URL through click/pathlib lost one slash: https:/host
    if re.match(r"^https?://", text) and not re.search(r"\.(tif|tiff|vrt|jp2)$", text, re.I):
        return _check_bands(open_stac(text), bands)  # a STAC item (API items have no .json)
    p = Path(path)
    if not p.exists() and not is_virtual_path(text):  # /vsizip/... is GDAL's to resolve
        raise InputError(f"scene {p} does not exist; check the path")
    name = p.name
    if p.is_dir():
        if name.upper().endswith(".SAFE") or list(p.glob("MTD_MSI*.xml")):
            scene = open_sentinel2(p)
        elif mtl_in(p) is not None:
            scene = open_landsat(p)
        else:
            raise InputError(
                f"scene {p} is a folder but neither a Sentinel-2 SAFE (no MTD_MSIL1C.xml or "
                "MTD_MSIL2A.xml) nor a Landsat Collection 2 product (no *_MTL.txt); give a "
                "raster file, a product folder or its archive"
            )
    elif re.fullmatch(r"MTD_MSIL?\w+\.xml", name, re.IGNORECASE):
        scene = open_sentinel2(p)
    elif re.search(r"_MTL\.(txt|json)$", name, re.IGNORECASE):
        scene = open_landsat(p)
    elif name.lower().endswith(".zip"):
        scene = open_sentinel2(p)
    elif re.search(r"\.(tar|tar\.gz|tgz)$", name, re.IGNORECASE):
        scene = open_landsat(p)
    elif name.lower().endswith(".json"):
        scene = open_stac(text)
    else:
        return _open_raster(p, bands)
    return _check_bands(scene, bands)


def _open_raster(p: Path, bands: tuple[int, ...] | None) -> Scene:
    """A multi-band raster (or VRT) as stored: ``bands`` (the caller's) pick R, G, B[, NIR]."""
    src = open_raster(p, "scene")
    real_valued(src, f"scene {p}")
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
