"""One scene to a georeferenced mask GeoTIFF (plus probabilities, uncertainty, a JSON report).

:func:`predict_scene` in named steps: check the outputs, open the scene and check it
(:mod:`cloudcps.predict.checks`), run the engine (:mod:`cloudcps.predict.engine`) into the
rasters at temporary names (:mod:`cloudcps.predict.outputs`), finish them (buffer, tags, COG),
write the report, and rename everything when complete.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import rasterio

from cloudcps import __version__
from cloudcps.contract import DataContract, gdal_env
from cloudcps.errors import InputError
from cloudcps.io import atomic_file, check_output_file, writing
from cloudcps.predict.backends import InferenceModel, describe
from cloudcps.predict.checks import bands_of, no_valid_pixel_warning, scene_warnings
from cloudcps.predict.engine import Predictor, as_inference
from cloudcps.predict.outputs import (
    NODATA,
    RasterSink,
    Sink,
    buffer_raster,
    describe_probabilities,
    finish_mask,
    mask_profile,
    maybe_atomic,
    quiet_libtiff,
    scene_gcps,
    write_cog,
)
from cloudcps.predict.sources import RasterSource
from cloudcps.predict.uncertainty import (
    UncertaintySink,
    finish_uncertainty,
    members_of,
    open_uncertainty,
    uncertainty_path,
    uncertainty_report,
)
from cloudcps.scenes import Scene, SceneRef, as_ref, sidecars

if TYPE_CHECKING:
    from cloudcps.predict.engine import DeviceLike, ModelLike

log = logging.getLogger(__name__)


@dataclass
class PredictOptions:
    """Options of :func:`predict_scene`; ``None`` sizes come from the checkpoint's contract."""

    tile_size: int | None = None
    overlap: int | None = None
    batch_size: int | None = None
    tta: bool = False
    probabilities: bool = False
    buffer: int = 0
    bands: tuple[int, ...] | None = None
    overwrite: bool = False
    scale: float | None = None  # None: the model's (the tiles' --scale / --offset)
    offset: float | None = None
    cog: bool = False
    uncertainty: bool = False  # also NAME_uncertainty.tif (cloudcps.predict.uncertainty)


@dataclass
class PredictResult:
    scene: Path
    mask: Path | None
    probabilities: Path | None
    stats: Path | None
    cover_percent: dict[str, float]
    valid_pixels: int
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)


def prediction_outputs(mask: Path, probabilities: bool, uncertainty: bool = False) -> list[Path]:
    """The files one scene's prediction writes: the mask, its JSON report, its probabilities,
    its uncertainty."""
    proba, report = sidecars(mask)
    extra = [uncertainty_path(mask)] if uncertainty else []
    return [mask, report] + ([proba] if probabilities else []) + extra


@dataclass
class _Files:
    """The files one scene's prediction writes (``None``: not asked for)."""

    mask: Path
    report: Path
    proba: Path | None
    unc: Path | None

    @classmethod
    def of(cls, mask: Path, opts: PredictOptions) -> _Files:
        proba, report = sidecars(mask)
        unc = uncertainty_path(mask) if opts.uncertainty else None
        return cls(mask, report, proba if opts.probabilities else None, unc)


@dataclass
class _Stages:
    """Where each raster is written: at its temporary name (``mask``, ``proba``, ``unc``; renamed
    when complete), and before that, with ``--cog``, as a plain GeoTIFF (``.stage``, copied to
    a COG at the end) and, with ``--buffer``, the mask undilated (``.raw``)."""

    mask: Path
    proba: Path | None
    unc: Path | None
    mask_stage: Path
    raw_mask: Path
    proba_stage: Path | None
    unc_stage: Path | None

    @classmethod
    def of(cls, mask: Path, proba: Path | None, unc: Path | None, opts: PredictOptions) -> _Stages:
        stage = mask.with_name(mask.name + ".stage") if opts.cog else mask
        raw_mask = stage.with_name(stage.name + ".raw") if opts.buffer else stage
        proba_stage = (
            proba.with_name(proba.name + ".stage") if (opts.cog and proba is not None) else proba
        )
        unc_stage = unc.with_name(unc.name + ".stage") if opts.cog and unc else unc
        return cls(mask, proba, unc, stage, raw_mask, proba_stage, unc_stage)

    def to_cog(self) -> None:
        write_cog(self.mask_stage, self.mask, "mode")
        if self.proba_stage is not None and self.proba is not None:
            write_cog(self.proba_stage, self.proba, "average")
        if self.unc_stage is not None and self.unc is not None:
            write_cog(self.unc_stage, self.unc, "average")

    def remove_intermediate(self) -> None:
        finals = {self.mask, self.proba, self.unc, None}
        for extra in {self.raw_mask, self.mask_stage, self.proba_stage, self.unc_stage} - finals:
            if extra is not None and extra.exists():
                extra.unlink()


@dataclass
class _Opened:
    """An opened scene and what its prediction needs to know of it."""

    ref: SceneRef
    scene: Scene
    bands: list[int]
    notes: list[str]  # the warnings, reported in the JSON
    gcps: list[Any]
    gcp_crs: Any
    profile: dict[str, Any]  # of the rasters written


def _inspect(
    ref: SceneRef,
    opened: Scene,
    contract: DataContract,
    predictor: Predictor,
    bands: tuple[int, ...] | None,
) -> _Opened:
    """The bands that feed the model and the warnings of an opened scene (logged), and the
    grid of its mask."""
    chosen = bands_of(opened, ref, contract, bands)
    notes = scene_warnings(opened, ref.name, chosen, contract, predictor.scale, predictor.offset)
    for note in notes:
        log.warning(note)
    gcps, gcp_crs = scene_gcps(opened.dataset)
    if gcps:
        log.info(
            "scene %s is georeferenced by %d ground control points, not a transform: the "
            "mask carries the same GCPs (gdalwarp it for a regular grid)",
            ref.name,
            len(gcps),
        )
    profile = mask_profile(opened.dataset, gcps, gcp_crs)
    return _Opened(ref, opened, chosen, notes, gcps, gcp_crs, profile)


def _write_rasters(
    sc: _Opened, predictor: Predictor, loaded: InferenceModel, st: _Stages, progress: bool
) -> tuple[np.ndarray, UncertaintySink]:
    """Run the engine over the scene into the mask (at ``st.raw_mask``), probability and
    uncertainty rasters; the mask's class counts and the uncertainty sink."""
    k = loaded.contract.num_classes
    profile = sc.profile
    with rasterio.open(st.raw_mask, "w", count=1, dtype="uint8", nodata=NODATA, **profile) as dst:
        pdst = (
            rasterio.open(st.proba_stage, "w", count=k, dtype="uint8", **profile)
            if st.proba_stage is not None
            else None
        )
        try:
            sink = RasterSink(dst, pdst, k)
            with open_uncertainty(st.unc_stage, profile) as udst:
                unc = UncertaintySink(sink, udst, k)
                split = predictor.channels > k or udst is not None
                run_sink: Sink = unc if split else sink
                source = RasterSource(sc.scene.dataset, sc.bands, sc.ref.name)
                predictor.run(source, run_sink, progress)
                if udst is not None:
                    finish_uncertainty(udst, members_of(loaded), unc)
            if pdst is not None:
                describe_probabilities(pdst, loaded.contract)
        finally:
            if pdst is not None:
                pdst.close()
    return sink.counts, unc


def _finish_rasters(
    sc: _Opened, st: _Stages, counts: np.ndarray, loaded: InferenceModel, opts: PredictOptions
) -> tuple[dict[str, float], int]:
    """Buffer, tag and (with ``--cog``) convert the written rasters; the cover percentages and
    the count of valid pixels."""
    contract = loaded.contract
    if opts.buffer:
        counts = buffer_raster(
            st.raw_mask, st.mask_stage, opts.buffer, contract.num_classes, sc.profile
        )
    valid_px = int(counts.sum())
    if valid_px == 0:
        sc.notes.append(no_valid_pixel_warning(sc.ref.name))
        log.warning(sc.notes[-1])
    cover = {
        name: round(100.0 * float(c) / valid_px, 4) if valid_px else 0.0
        for name, c in zip(contract.classes, counts, strict=True)
    }
    finish_mask(st.mask_stage, contract, cover, loaded, opts.buffer, sc.scene)
    if opts.cog:
        st.to_cog()
    return cover, valid_px


def _report(
    sc: _Opened,
    files: _Files,
    loaded: InferenceModel,
    predictor: Predictor,
    opts: PredictOptions,
    cover: dict[str, float],
    valid_px: int,
    seconds: float,
) -> dict[str, Any]:
    """The JSON report of one scene's prediction (``NAME.json`` beside the mask)."""
    src, gcps, gcp_crs = sc.scene.dataset, sc.gcps, sc.gcp_crs
    return {
        "scene": sc.ref.name,
        "product_id": sc.scene.product_id,
        "source": sc.scene.record,
        "mask": str(files.mask),
        "probabilities": str(files.proba) if files.proba is not None else None,
        "model": str(loaded.path),
        "iteration": loaded.iteration,
        "classes": list(loaded.contract.classes),
        "cover_percent": cover,
        "valid_pixels": valid_px,
        "nodata_pixels": int(src.width * src.height - valid_px),
        "crs": src.crs.to_string() if src.crs else None,
        "transform": None if gcps else list(src.transform)[:6],
        "gcps": len(gcps) or None,
        "gcp_crs": gcp_crs.to_string() if gcps and gcp_crs else None,
        "width": src.width,
        "height": src.height,
        "bands": sc.bands,
        "tile_size": predictor.tile,
        "overlap": predictor.overlap,
        **describe(loaded),
        "cog": opts.cog,
        "tta": opts.tta,
        "buffer": opts.buffer,
        "scale": predictor.scale,
        "offset": predictor.offset,
        "warnings": sc.notes,
        "seconds": round(seconds, 3),
        "cloudcps_version": __version__,
    }


def _write_report(tmp: Path, final: Path, report: dict[str, Any]) -> None:
    try:
        tmp.write_text(json.dumps(report, indent=2) + "\n")
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        raise InputError(
            f"could not write {final}: no space left on the disk; free some space or "
            "choose another --out"
        ) from None


def predict_scene(
    scene: str | os.PathLike[str] | SceneRef,
    model: ModelLike,
    out: str | os.PathLike[str],
    options: PredictOptions | None = None,
    device: DeviceLike = None,
    progress: bool = False,
) -> PredictResult:
    """Predict one scene into a georeferenced mask GeoTIFF (plus probabilities and a JSON report).

    The mask has the scene's CRS, transform, width and height; it is uint8 class ids, 255 where
    the scene is nodata, tiled and deflate-compressed, with a colour table, the class names in its
    tags and band description, and per-class cover percentages in its tags and in ``NAME.json``.
    Everything is written under temporary names and renamed when complete.
    """
    opts = options or PredictOptions()
    loaded = as_inference(model, device)
    ref = as_ref(scene)
    files = _Files.of(Path(out), opts)
    for p in prediction_outputs(files.mask, opts.probabilities, opts.uncertainty):
        check_output_file(p, opts.overwrite, ref.inputs)
    t0 = time.perf_counter()
    predictor = Predictor(
        loaded,
        None,
        opts.tile_size,
        opts.overlap,
        opts.batch_size,
        opts.tta,
        opts.scale,
        opts.offset,
    )
    quiet_libtiff()
    with rasterio.Env(**gdal_env()), ref.open(opts.bands) as opened:
        sc = _inspect(ref, opened, loaded.contract, predictor, opts.bands)
        with (
            atomic_file(files.mask, opts.overwrite) as tmp_mask,
            atomic_file(files.report, opts.overwrite) as tmp_json,
            maybe_atomic(files.proba, opts.overwrite) as tmp_proba,
            maybe_atomic(files.unc, opts.overwrite) as tmp_unc,
        ):
            st = _Stages.of(tmp_mask, tmp_proba, tmp_unc, opts)
            try:
                with writing(files.mask, "mask"):
                    counts, unc = _write_rasters(sc, predictor, loaded, st, progress)
                    cover, valid_px = _finish_rasters(sc, st, counts, loaded, opts)
            finally:
                st.remove_intermediate()
            seconds = time.perf_counter() - t0
            report = _report(sc, files, loaded, predictor, opts, cover, valid_px, seconds)
            if files.unc is not None:
                report["uncertainty"] = uncertainty_report(files.unc, members_of(loaded), unc)
            _write_report(tmp_json, files.report, report)
    return PredictResult(
        scene=ref.path,
        mask=files.mask,
        probabilities=files.proba,
        stats=files.report,
        cover_percent=cover,
        valid_pixels=valid_px,
        seconds=seconds,
        extra={"uncertainty": files.unc} if files.unc is not None else {},
    )
