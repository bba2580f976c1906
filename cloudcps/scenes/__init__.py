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

The modules: ``open`` (:func:`open_scene`: which kind an input is, plain rasters), ``scene`` (the
:class:`Scene`, :class:`BandSource` and :class:`Grid` types), ``vrt`` (one grid for all bands,
the stacking VRT), one module per kind (``sentinel2``, ``landsat``, ``stac``, ``bandfiles``) and
``refs`` (:class:`SceneRef`: a scene as a command names it; mask names, sidecars, source tags).
"""

from __future__ import annotations

from cloudcps.scenes.bandfiles import parse_band_files
from cloudcps.scenes.landsat import LANDSAT_RGBN, parse_mtl
from cloudcps.scenes.open import open_scene
from cloudcps.scenes.refs import (
    SceneRef,
    as_ref,
    default_mask_path,
    is_url,
    output_paths,
    scene_ref,
    sidecars,
    source_tags,
)
from cloudcps.scenes.scene import COLOR_INTERP, KINDS, NODATA, BandSource, Grid, Scene
from cloudcps.scenes.sentinel2 import S2_RGBN
from cloudcps.scenes.stac import STAC_NAMES
from cloudcps.scenes.vrt import stack_vrt

__all__ = [
    "COLOR_INTERP",
    "KINDS",
    "LANDSAT_RGBN",
    "NODATA",
    "S2_RGBN",
    "STAC_NAMES",
    "BandSource",
    "Grid",
    "Scene",
    "SceneRef",
    "as_ref",
    "default_mask_path",
    "is_url",
    "open_scene",
    "output_paths",
    "parse_band_files",
    "parse_mtl",
    "scene_ref",
    "sidecars",
    "source_tags",
    "stack_vrt",
]
