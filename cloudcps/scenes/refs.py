"""What a command names and writes: a :class:`SceneRef` per scene the user gave (checked by
opening it once), the mask names beside scenes or in ``--out``, the sidecar files of a mask and the
GeoTIFF tags that say what it was computed from."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cloudcps.errors import InputError
from cloudcps.io import gdal_name
from cloudcps.scenes.open import open_scene
from cloudcps.scenes.scene import Scene


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
