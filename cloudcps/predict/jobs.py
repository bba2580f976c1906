"""A batch of scenes predicted as ``cloudcps predict`` asks: which scenes, where their masks go,
what may be replaced, skipped or resumed, and which rank of a torchrun job predicts which scene.

Everything is checked before any work: every scene exists and opens (its bands too), every
output can be written and is not an input or a file cloudcps did not write; only then is the
model loaded and the first mask written.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cloudcps.errors import InputError
from cloudcps.io import check_output_file, remove_stale_temps, written_by_cloudcps
from cloudcps.predict.backends import InferenceModel, load_model
from cloudcps.predict.checks import scene_bands
from cloudcps.predict.engine import check_window_options
from cloudcps.predict.scene import PredictOptions, predict_scene, prediction_outputs
from cloudcps.predict.uncertainty import load_for_uncertainty
from cloudcps.scenes import SceneRef, output_paths, scene_ref
from cloudcps.scenes.missing import check_scenes_exist

MAX_BUFFER = 250  # scikit-image's disk decomposition stops at radius 251

Say = Callable[[str], None] | None  # where notices go (None: quiet)


@dataclass
class PredictJob:
    """What ``cloudcps predict`` asks for: scenes (files, products, STAC items, or
    ``band_files``), the model and how it runs, where the masks go and the prediction options."""

    scenes: tuple[Path, ...]
    band_files: tuple[tuple[Path, ...], ...]
    model: Path
    out: Path | None
    options: PredictOptions
    nets: str = "1"
    backend: str = "auto"
    device: str | None = None
    threads: int | None = None
    skip_existing: bool = False

    def check(self) -> None:
        """Refuse options out of range or that exclude each other, and a job without scenes."""
        opts = self.options
        if not 0 <= opts.buffer <= MAX_BUFFER:
            raise InputError(f"--buffer {opts.buffer} must be between 0 and {MAX_BUFFER} pixels")
        if self.skip_existing and opts.overwrite:
            raise InputError("--skip-existing and --overwrite exclude each other; give one")
        check_window_options(opts.tile_size, opts.overlap, opts.batch_size)
        if not self.scenes and not self.band_files:
            raise InputError(
                "no scene given; give scene files, product folders or archives (SAFE, Landsat), "
                "STAC items, or --band-files R,G,B[,NIR]"
            )

    @property
    def label(self) -> str:
        """How the outputs are named in messages."""
        return "--out" if self.out is not None else "mask"


@dataclass
class _Plan:
    """This rank's share of the scenes, once every output of it is checked."""

    mine: list[tuple[SceneRef, Path]] = field(default_factory=list)  # (scene, mask) to predict
    stale: list[Path] = field(default_factory=list)  # own sidecars of a run stopped before its mask
    skipped: int = 0  # scenes whose outputs all exist (--skip-existing)


def predict_scenes(job: PredictJob, say: Say = None, progress: bool = False) -> int:
    """Predict every scene of ``job`` this rank owns (all of them when run alone), each into
    its mask, after checking everything; notices and one line per scene go to ``say``. The
    number of masks this rank wrote.

    Under torchrun (or any launcher that sets RANK and WORLD_SIZE) the scenes are shared among
    the ranks, each mask written by exactly one of them.
    """
    job.check()
    refs = tuple(select_scenes(job.scenes, job.band_files, job.options.bands, say))
    check_out(job.out, len(refs))
    masks = output_paths(refs, job.out)
    rank, world = shard()
    plan = _plan_outputs(job, refs, masks, rank, world)
    if plan.skipped and say:
        say(f"skipping {plan.skipped} scene(s) whose mask exists (--skip-existing)")
    if plan.mine:
        _predict_planned(job, plan, masks, say, progress)
    if world > 1:
        done = gather_counts(len(plan.mine))
        if rank == 0 and say:
            say(f"{world} ranks wrote {sum(done)} mask(s): {done} per rank")
    return len(plan.mine)


def _load(job: PredictJob) -> InferenceModel:
    if job.options.uncertainty:
        return load_for_uncertainty(job.model, job.nets, job.backend, job.device, job.threads)
    return load_model(
        job.model, nets=job.nets, backend=job.backend, device=job.device, threads=job.threads
    )


def _predict_planned(
    job: PredictJob, plan: _Plan, masks: Sequence[Path], say: Say, progress: bool
) -> None:
    """Load the model, check every scene's bands, then predict the scenes one by one."""
    loaded = _load(job)
    bands = job.options.bands
    for scene, _ in plan.mine:  # every scene's bands, before any work
        scene_bands(scene, loaded.contract, bands)
    out = job.out
    if out is not None and not (len(masks) == 1 and masks[0] == out):
        out.mkdir(parents=True, exist_ok=True)
    for p in plan.stale:
        p.unlink(missing_ok=True)
    for scene, mask in plan.mine:
        res = predict_scene(scene, loaded, mask, job.options, progress=progress)
        if say:
            cover = ", ".join(f"{k} {v:.1f}%" for k, v in res.cover_percent.items())
            say(f"{scene.name} -> {res.mask} ({res.seconds:.1f} s): {cover}")


def _plan_outputs(
    job: PredictJob, refs: Sequence[SceneRef], masks: Sequence[Path], rank: int, world: int
) -> _Plan:
    """Shard by position in the argument list (the same on every rank whatever is on disk),
    then check only this rank's scenes' outputs."""
    opts, label = job.options, job.label
    scene_inputs = [p for r in refs for p in r.inputs]
    inputs = [*scene_inputs, job.model] if Path(job.model).exists() else scene_inputs
    plan = _Plan()
    for scene, m in list(zip(refs, masks, strict=True))[rank::world]:
        outputs = prediction_outputs(m, opts.probabilities, opts.uncertainty)
        for p in outputs:
            if p.is_symlink() and not p.exists():
                raise InputError(
                    f"{label} {p} is a symbolic link to {os.readlink(p)}, which does not exist; "
                    "give a real path"
                )
        if job.skip_existing and all(p.exists() for p in outputs):
            plan.skipped += 1
            continue
        remove_stale_temps(outputs)
        for p in outputs:
            if job.skip_existing and p.exists():
                _check_resumable(p, m, outputs, scene, label)
                plan.stale.append(p)
                continue
            check_output_file(p, opts.overwrite, inputs, label)
        if job.out is None and not os.access(m.parent, os.W_OK):
            raise InputError(
                f"cannot write {m.name} beside the scene: {m.parent} is not writable; give "
                "--out FILE_OR_FOLDER"
            )
        plan.mine.append((scene, m))
    for folder in sorted({m.parent for _, m in plan.mine}):
        check_writable_folder(folder, label, job.out)
    return plan


def _check_resumable(p: Path, m: Path, outputs: list[Path], scene: SceneRef, label: str) -> None:
    """With ``--skip-existing``, output ``p`` of mask ``m`` exists but not all of ``outputs``:
    refuse unless ``p`` is cloudcps's own sidecar of a run stopped before its mask."""
    if m.exists() and not written_by_cloudcps(m):
        raise InputError(
            f"--skip-existing: {m} exists and is not a mask cloudcps wrote, so it is "
            f"kept as it is; give another {label} for the mask of {scene.name}"
        )
    if m.exists():  # a mask without its report (or probabilities)
        lost = next(q for q in outputs if not q.exists())
        raise InputError(
            f"--skip-existing: {m} exists without its {lost.name}; delete {m} to "
            f"predict {scene.name} again, or run without --skip-existing and with "
            "--overwrite"
        )
    if not written_by_cloudcps(p):
        raise InputError(
            f"--skip-existing: {p} exists and was not written by cloudcps, which "
            f"never replaces it: move it away or choose another {label}"
        )


def select_scenes(
    scenes: tuple[Path, ...],
    band_files: tuple[tuple[Path, ...], ...],
    bands: tuple[int, ...] | None,
    say: Say = None,
) -> list[SceneRef]:
    """The scenes to predict: every one must exist and open (products are read and checked,
    before any work); files that cloudcps wrote (masks, probabilities of an earlier run, e.g.
    picked up again by ``dir/*.tif``) are skipped with a notice, and refused when they are all
    there is."""
    check_scenes_exist(scenes, "predict")
    kept: list[SceneRef] = []
    own: list[Path] = []
    for scene in scenes:
        if scene.is_file() and written_by_cloudcps(scene):  # a mask, its JSON, probabilities
            own.append(scene)
            continue
        kept.append(scene_ref(scene, bands=bands))
    kept += [scene_ref(files[0], band_files=files) for files in band_files]
    if own and not kept:
        raise InputError(
            f"{own[0]} is a mask or probability raster that cloudcps wrote, not a scene"
            + (f" (and so are the other {len(own) - 1} files given)" if len(own) > 1 else "")
            + "; give the scenes themselves"
        )
    if own and say:
        say(
            f"skipping {len(own)} file(s) that cloudcps wrote (masks or probabilities, not "
            f"scenes): {', '.join(str(p) for p in own[:3])}{' ...' if len(own) > 3 else ''}"
        )
    return kept


def check_out(out: Path | None, n_scenes: int) -> None:
    """Refuse an ``--out`` that is a dangling symbolic link, or that names a file other than a
    GeoTIFF for one scene (``--out mask.png`` would silently become a folder)."""
    if out is None:
        return
    if out.is_symlink() and not out.exists():
        raise InputError(
            f"--out {out} is a symbolic link to {os.readlink(out)}, which does not exist; give "
            "a real path"
        )
    suffix = out.suffix.lower()
    if n_scenes == 1 and suffix and suffix not in (".tif", ".tiff") and not out.is_dir():
        raise InputError(
            f"--out {out}: a mask is a GeoTIFF; give NAME.tif for the mask of one scene, or a "
            "folder (without a suffix) for NAME_mask.tif files"
        )


def check_writable_folder(folder: Path, option: str, shown: Path | None = None) -> None:
    """Refuse, before any work, an output folder where no file can be made (read-only, not a
    folder, or a kernel file system such as /proc or /sys); ``shown``: the path the user gave."""
    given = shown or folder

    probe_in = folder
    while not probe_in.exists():
        if probe_in.is_symlink():
            raise InputError(
                f"{option} {given}: {probe_in} is a symbolic link to {os.readlink(probe_in)}, "
                "which does not exist; give a real path"
            )
        if probe_in.parent == probe_in:
            break
        probe_in = probe_in.parent
    if not probe_in.is_dir():
        raise InputError(f"{option} {given}: {probe_in} is a file, not a folder")
    real = probe_in.resolve()
    kernel = next((k for k in ("/proc", "/sys") if real.as_posix().startswith(k + "/")
                   or real.as_posix() == k), None)  # fmt: skip
    if kernel is not None:
        raise InputError(
            f"{option} {given} is in {kernel}, the kernel's view of the system, where no "
            f"mask can be written; choose another {option}"
        )
    try:
        fd, name = tempfile.mkstemp(prefix=".cloudcps-probe-", dir=probe_in)
    except OSError as exc:
        raise InputError(
            f"{option} {given}: cannot write in {probe_in} ({exc.strerror}); choose another "
            f"{option}"
        ) from None
    os.close(fd)
    os.unlink(name)


def shard() -> tuple[int, int]:
    """(rank, world size) from torchrun's environment; (0, 1) when run alone."""
    try:
        rank = int(os.environ.get("RANK", "0"))
        world = int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise InputError("RANK and WORLD_SIZE must be integers (as torchrun sets them)") from None
    if world < 1 or not 0 <= rank < world:
        raise InputError(f"RANK {rank} is not within WORLD_SIZE {world}")
    return rank, world


def gather_counts(count: int) -> list[int]:
    """Every rank's count of written masks (gloo; the ranks also wait for each other here)."""
    import torch.distributed as dist

    own = not dist.is_initialized()
    if own:
        dist.init_process_group("gloo")
    try:
        counts: list[int] = [0] * dist.get_world_size()
        dist.all_gather_object(counts, count)
    finally:
        if own:
            dist.destroy_process_group()
    return counts
