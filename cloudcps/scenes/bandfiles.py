"""Band files (``--band-files R.tif,G.tif,B.tif[,NIR.tif]``): single-band rasters on one grid
stacked as R, G, B[, NIR], values as stored (``--scale``/``--offset`` apply), each file's nodata."""

from __future__ import annotations

import re
from pathlib import Path

from cloudcps.errors import InputError
from cloudcps.io import open_raster
from cloudcps.scenes.scene import BandSource, Scene, real_valued
from cloudcps.scenes.vrt import stacked_scene


def parse_band_files(text: str) -> tuple[Path, ...]:
    """``R.tif,G.tif,B.tif[,NIR.tif]`` of ``--band-files``."""
    files = tuple(Path(p.strip()) for p in text.split(",") if p.strip())
    if not 3 <= len(files) <= 4:
        raise ValueError(
            f"give 3 or 4 comma-separated files R,G,B[,NIR], got {len(files)} in {text!r}"
        )
    return files


def open_band_files(files: list[Path]) -> Scene:
    """The scene of ``--band-files``: single-band files R, G, B[, NIR] on one grid, values as
    stored; its id is the name the files share (less a trailing band suffix)."""
    if not 3 <= len(files) <= 4:
        raise InputError(
            f"--band-files gives {len(files)} file(s); give 3 or 4: R,G,B[,NIR] (e.g. "
            "--band-files B4.tif,B3.tif,B2.tif,B8.tif)"
        )
    sources = []
    for role, f in zip(("R", "G", "B", "NIR"), files, strict=False):
        with open_raster(f, "band file") as src:
            real_valued(src, f"band file {f}")
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
    return stacked_scene(
        sources,
        kind="band-files",
        product_id=product_id,
        record=record,
        scaled=False,
        owner="--band-files " + ",".join(str(f) for f in files),
    )
