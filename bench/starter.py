"""The starter cloud model that ships with cloudcps: rebuild it, score it, compare it.

    python bench/starter.py prepare                 # tile every real label of ../shared/data
    python bench/starter.py train --mode cps --seed 0 [--iters 2000] [--device cuda]
    python bench/starter.py train --mode supervised --seed 0
    python bench/starter.py score                   # every finished run + ukis-csmask, same files
    python bench/starter.py table                   # the model card's tables (markdown)
    python bench/starter.py package RUN             # cloudcps/weights/starter.pt (fp16) + .onnx
    python bench/starter.py finetune --seeds 0,1    # --init default vs ImageNet on the L8 split
    python bench/starter.py figures                 # docs/img/*.png: masks on the real scenes
    python bench/starter.py v3 --seed 0             # both stages of recipe v3 for one seed
    python bench/starter.py all                     # rebuild the shipped model (starter v3:
                                                    # recipe v3, seed 1) and package it; resumes

The ``train`` runs are the second starter's (protocol v3, one stage); the shipped third starter
is recipe v3 (``train_v3``): protocol v6 with the L8 Biome train patches drawn 4x, then a second
stage on 256 px crops (docs/model.md, docs/benchmarks.md "Toward starter v3").

Data (everything labelled in ../shared/data; see docs/model.md):
- L8 Biome train (23 Landsat 8 patches, 4 classes; codes 128/255/192/64),
- On Cloud N train (32 Sentinel-2 L2A chips, cloud / not cloud: partial labels
  ``0 -> clear|shadow``, ``1 -> thick|thin``),
- unlabelled: the Sentinel-2 L1C scene and the Landsat 8 scene (DN converted to TOA reflectance x
  10000); with ``--pool-labeled`` the labelled images join the unlabelled pool of CPS,
- validation: L8 Biome val (8 patches, 4 classes and 3 merged), On Cloud N val (5 chips, binary).

All tiles share one fixed stretch (reflectance x 10000, 0..12000, gamma 2), so the model reads any
product delivered as reflectance x 10000 the same way. Runs are resumable: a killed ``train``
continues from its latest.pt when started again with the same arguments.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
WORK = ROOT / "bench" / "out" / "starter"
sys.path.insert(0, str(ROOT / "bench"))

import evalsets  # noqa: E402
from common import bench_threads  # noqa: E402

LABEL_MAP = "128:0,255:1,192:2,64:3,0:0|3,1:1|2"
STRETCH = "0:12000"
GAMMA = "2"
TILE = 256
CLASSES = evalsets.CLASSES
# one schedule for both modes: what differs between CPS and supervised is only the CPS term
CPU_SCHEDULE: dict[str, Any] = {
    "iters": 1000,
    "batch_size": 8,
    "crop": 128,
    "lr": 0.005,
    "class_weights": "auto",
    "bn_recalibrate": 50,
}
GPU_SCHEDULE = {**CPU_SCHEDULE, "iters": 8000, "batch_size": 16, "crop": 256, "lr": 0.01}
STARTER_SYNTHETIC = 0.5  # share of labelled samples with synthetic clouds (see docs/model.md)
CLEAR_SCENES = ("LC08_224077_20200518_clear_rgb_toa.tif", "LC08_224078_20200518_clear_rgb_toa.tif")


def cloudcps(*args: str) -> None:
    exe = Path(sys.executable).with_name("cloudcps")
    env = dict(os.environ)
    if "CLOUDCPS_THREADS" in env:  # several runs side by side on a small machine
        env["OMP_NUM_THREADS"] = env["CLOUDCPS_THREADS"]
    subprocess.run([str(exe), *args], check=True, env=env)


def _need_shared() -> None:
    if not SHARED.is_dir():
        raise SystemExit(f"{SHARED} is absent: the starter model is built from ../shared/data")


def _auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """Probability that a random ``pos`` value exceeds a random ``neg`` one (ties half)."""
    x = np.concatenate([pos, neg])
    ranks = np.argsort(np.argsort(x, kind="stable"), kind="stable") + 1.0
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def screen_coarse_labels(images: list[Path], label_dir: Path) -> dict[str, dict[str, Any]]:
    """Which cloud / not-cloud label rasters agree with their own image.

    On Cloud N's train chips come with labels of which many do not line up with their image
    (cloud drawn over dark water, clear over a cloud field, polygons shifted off the clouds).
    A label is kept when its cloud pixels are brighter (mean R, G, B) than its not-cloud pixels
    in the image (AUC >= 0.75, both classes on >= 2 % of the chip), or, for a chip of one
    class, when an all-cloud chip is not dark (median >= 1000) and an all-clear chip is not
    cloud-bright (median <= 3000). Rejected chips stay in the unlabelled pool.
    """
    import rasterio

    out: dict[str, dict[str, Any]] = {}
    for img in images:
        with rasterio.open(img) as s:
            b = s.read([1, 2, 3]).astype(np.float32).mean(0)[::4, ::4].ravel()
            valid = np.all(s.read([1, 2, 3]) > 0, axis=0)[::4, ::4].ravel()
        with rasterio.open(label_dir / img.name) as m:
            cloud = (m.read(1) == 1)[::4, ::4].ravel()
        b, cloud = b[valid], cloud[valid]
        share = float(cloud.mean()) if cloud.size else 0.0
        rec: dict[str, Any] = {"cloud_share": round(share, 3)}
        if 0.02 < share < 0.98:
            rec["auc"] = round(_auc(b[cloud], b[~cloud]), 3)
            rec["keep"] = rec["auc"] >= 0.75
        elif share >= 0.98:
            rec["median_cloud"] = float(np.median(b[cloud]))
            rec["keep"] = rec["median_cloud"] >= 1000
        else:
            rec["median_clear"] = float(np.median(b[~cloud])) if (~cloud).any() else 0.0
            rec["keep"] = rec["median_clear"] <= 3000
        out[img.stem] = rec
    return out


def desert_clear_part(work: Path) -> Path:
    """The west half of the desert tile (100 m, EPSG:32629), known clear: bright ground that is
    not cloud. ESA's scene classification (SCL.tif) marks none of it cloud or shadow and 0.1 %
    "cirrus" (bright pans; none visible); the tile's cloud is in its north-east corner, and its
    east half stays held out for the false-cloud score (bench/evalsets.py)."""
    cols = evalsets.DESERT_TRAIN_COLS
    return _top_left_part(evalsets.DESERT, work / "desert_west_clear.tif", 1.0, cols)


def s2_clear_part(work: Path) -> Path:
    """The north half of the cloud-free Sentinel-2 L1C scene (10 m, EPSG:32618), known clear:
    hazy, bluish top-of-atmosphere ground (sea, lagoon, marsh, beaches, fields, a town) of the
    kind the network calls thin cloud. Its south half stays held out for the false-cloud score
    (bench/evalsets.py ``s2 clear south``)."""
    rows = evalsets.S2_CLEAR_TRAIN_ROWS
    return _top_left_part(evalsets.S2_CLEAR, work / "s2_clear_north.tif", rows, 1.0)


def _top_left_part(src_path: Path, out: Path, rows: float, cols: float) -> Path:
    """A georeferenced copy of the top-left ``rows`` x ``cols`` share of ``src_path`` (written
    once, then reused)."""
    import rasterio
    from rasterio.windows import Window

    if out.exists():
        return out
    with rasterio.open(src_path) as src:
        height, width = int(rows * src.height), int(cols * src.width)
        win = Window(0, 0, width, height)
        profile = {
            **src.profile,
            "width": width,
            "height": height,
            "transform": src.window_transform(win),
        }
        profile.pop("blockxsize", None)
        profile.pop("blockysize", None)
        profile["tiled"] = False
        data = src.read(window=win)
    out.parent.mkdir(parents=True, exist_ok=True)
    part = out.with_suffix(".part.tif")
    with rasterio.open(part, "w", **profile) as dst:
        dst.write(data)
    part.rename(out)
    return out


UKIS_CODES = {0: 128, 1: 1, 2: 64}  # ukis clear / cloud / shadow -> LABEL_MAP's clear, 1|2, 3
UKIS_NODATA = 250


def teacher_labels(work: Path, scenes: list[Path]) -> Path:
    """ukis-csmask's masks of 4-band scenes as label rasters on their grids (issue 22's teacher
    that sees NIR): clear -> clear, cloud -> the partial label "thick or thin", shadow ->
    shadow, nodata -> ignored. ukis-csmask (Apache-2.0) is no oracle; never used on a val set."""
    import rasterio
    from peers import ukis_file

    out = work / "ukis_labels"
    out.mkdir(parents=True, exist_ok=True)
    for scene in scenes:
        dst = out / f"{scene.stem}.tif"
        if dst.exists():
            continue
        csm = ukis_file(scene)
        with rasterio.open(scene) as src:
            profile = {
                "driver": "GTiff",
                "width": src.width,
                "height": src.height,
                "count": 1,
                "dtype": "uint8",
                "crs": src.crs,
                "transform": src.transform,
                "nodata": UKIS_NODATA,
            }
        lab = np.full(csm.shape, UKIS_NODATA, np.uint8)
        for k, v in UKIS_CODES.items():
            lab[csm == k] = v
        with rasterio.open(dst.with_suffix(".part"), "w", **profile) as d:
            d.write(lab, 1)
        dst.with_suffix(".part").rename(dst)
    return out


def prepare(work: Path, protocol: str = "v3") -> Path:
    """Tile every labelled patch/chip, the unlabelled scenes and the L8 Biome val patches (val).

    ``v1`` is the protocol of the first starter (L8 Biome + On Cloud N labels, two unlabelled
    scenes); ``v2`` adds the two cloud-free Landsat 8 scenes as free clear labels
    (``tile --clear``) and the cloudy Betsiboka scene to the unlabelled pool, and reads R, G, B
    only (the clear scenes have no NIR; the tiles never had it); ``v3`` also drops the On Cloud
    N labels that contradict their own image (:func:`screen_coarse_labels`; the chips stay as
    unlabelled images); ``v4`` adds the desert tile's west half as known-clear ground; ``v5``
    labels the unlabelled 4-band scenes and the rejected chips with ukis-csmask (a teacher that
    sees NIR; cloud becomes the partial label "thick or thin").
    """
    from accuracy import _l8_toa

    _need_shared()
    tiles = work / ("tiles" if protocol == "v1" else f"tiles-{protocol}")
    if (tiles / "manifest.json").exists():
        return tiles
    work.mkdir(parents=True, exist_ok=True)
    l8_train = sorted((SHARED / "l8biome" / "train" / "images").glob("*.tif"))
    l8_val = sorted((SHARED / "l8biome" / "val" / "images").glob("*.tif"))
    ocn = sorted((SHARED / "oncloudn_train" / "images").glob("*.tif"))
    scenes = [
        *([] if protocol == "v6" else [evalsets.S2_CLEAR]),
        _l8_toa(SHARED / "scenes" / "l8_cloudy_rgbn.tif", work / "l8_cloudy_toa.tif"),
    ]
    args = []
    ocn_labels = SHARED / "oncloudn_train" / "labels"
    if protocol in ("v3", "v4", "v5", "v6"):
        screen = screen_coarse_labels(ocn, ocn_labels)
        (work / "ocn_screen.json").write_text(json.dumps(screen, indent=1))
        ocn_labels = work / "ocn_labels_kept"
        ocn_labels.mkdir(exist_ok=True)
        for name, rec in screen.items():
            link = ocn_labels / f"{name}.tif"
            if rec["keep"] and not link.exists():
                link.symlink_to(SHARED / "oncloudn_train" / "labels" / f"{name}.tif")
    if protocol in ("v2", "v3", "v4", "v5", "v6"):
        scenes.append(SHARED / "scenes" / "s2_l1c_cloudy_betsiboka_rgbn.tif")
        for name in CLEAR_SCENES:
            args += ["--clear", str(SHARED / "scenes" / name)]
    if protocol in ("v4", "v5", "v6"):  # hard ground: bright desert known to be clear
        args += ["--clear", str(desert_clear_part(work))]
        args += ["--bands", "1,2,3"]
    if protocol == "v6":  # hazy, bluish ground known to be clear
        args += ["--clear", str(s2_clear_part(work))]
    if protocol == "v5":  # + ukis-csmask's masks of the 4-band unlabelled scenes and chips
        rejected = [c for c in ocn if not screen[c.stem]["keep"]]
        args += ["--label-dir", str(teacher_labels(work, rejected + scenes))]
    args += [str(p) for p in l8_train + l8_val + ocn + scenes]
    for d in ("l8biome/train/masks", "l8biome/val/masks"):
        args += ["--label-dir", str(SHARED / d)]
    args += ["--label-dir", str(ocn_labels)]
    for v in l8_val:
        args += ["--val", v.name]
    args += ["--label-map", LABEL_MAP, "--stretch", STRETCH, "--gamma", GAMMA]
    args += ["--tile-size", str(TILE), "--labeled-fraction", "1", "--format", "png"]
    cloudcps("-q", "tile", *args, "--out", str(tiles))
    return tiles


def repeat_tiles(
    base: Path, out: Path, pick: set[str], times: int, drop: frozenset[str] = frozenset()
) -> Path:
    """``base``'s tiles (hard links: the trainer refuses symlinks that leave the folder) with a
    labelled list that lists the tiles in ``pick`` ``times`` times (0: not at all), so the
    sampler draws them that much more often, and those in ``drop`` not at all; unlabelled and
    val lists unchanged."""
    if (out / "manifest.json").exists():
        return out
    labeled = (base / "splits" / "labeled.txt").read_text().split()
    (out / "splits").mkdir(parents=True, exist_ok=True)
    for sub in ("images", "labels", "valid"):
        for f in sorted((base / sub).glob("*")) if (base / sub).is_dir() else []:
            (out / sub).mkdir(exist_ok=True)
            if not (out / sub / f.name).exists():
                os.link(f.resolve(), out / sub / f.name)
    for split in ("unlabeled", "val"):
        (out / "splits" / f"{split}.txt").write_text((base / "splits" / f"{split}.txt").read_text())
    rows = [t for t in labeled for _ in range(0 if t in drop else times if t in pick else 1)]
    (out / "splits" / "labeled.txt").write_text("\n".join(rows) + "\n")
    (out / "manifest.json").write_text((base / "manifest.json").read_text())
    return out


def l8_tile_ids(tiles: Path) -> set[str]:
    """The labelled tiles cut from the real L8 Biome train patches."""
    manifest = json.loads((tiles / "manifest.json").read_text())
    scene_path = {sc["id"]: str(sc["path"]) for sc in manifest["scenes"]}
    tile_scene = {t["id"]: t["scene"] for t in manifest["tiles"]}
    labeled = (tiles / "splits" / "labeled.txt").read_text().split()
    return {t for t in labeled if "/l8biome/" in scene_path[tile_scene[t]]}


# Starter v3 (issue 22): supervised, in two stages. Stage 1 is the v2 schedule on protocol v6
# (v4 + the cloud-free Sentinel-2 scene's north half as clear ground) with the 23 real L8 Biome
# train patches drawn 4x as often; stage 2 goes on from stage 1's final weights on 256 px crops,
# so the deep stages see real ground around a crop instead of padding (docs/benchmarks.md).
V3_PROTOCOL = "v6"
V3_L8_REPEAT = 4
V3_STAGE2: dict[str, Any] = {"iters": 250, "crop": 256, "lr": 0.002}
V3_SEED = 1  # the seed that shipped (docs/model.md: every seed's numbers, and why this one)


def train_v3(work: Path, seed: int, device: str) -> Path:
    """Train (or resume) both stages of the v3 recipe for one seed; the stage-2 run folder."""
    base = prepare(work, V3_PROTOCOL)
    tiles = repeat_tiles(
        base, work / f"tiles-{V3_PROTOCOL}-l8x{V3_L8_REPEAT}", l8_tile_ids(base), V3_L8_REPEAT
    )
    first = work / "runs" / f"v3-stage1-s{seed}"
    final = work / "runs" / f"v3-s{seed}"
    for out, schedule, init in (
        (first, CPU_SCHEDULE, None),
        (final, {**CPU_SCHEDULE, **V3_STAGE2}, first / "latest.pt"),
    ):
        every = max(1, int(schedule["iters"]) // 4)
        syn = STARTER_SYNTHETIC
        train_run(tiles, out, "supervised", seed, schedule, device, syn, every, [], init)
    return final


def run_dir(work: Path, mode: str, seed: int, iters: int, synthetic: float = 0.0) -> Path:
    syn = f"-syn{synthetic:g}" if synthetic else ""
    return work / "runs" / f"{mode}{syn}-s{seed}-i{iters}"


def train(
    work: Path,
    mode: str,
    seed: int,
    schedule: dict[str, Any],
    device: str,
    synthetic: float = 0.0,
    protocol: str = "v3",
) -> Path:
    """Train (or resume) one run of the starter protocol."""
    tiles = prepare(work, protocol)
    out = run_dir(work, mode, seed, schedule["iters"], synthetic)
    extra = ["--pool-labeled"] if mode == "cps" else []
    train_run(tiles, out, mode, seed, schedule, device, synthetic, 250, extra)
    return out


def train_run(
    tiles: Path,
    out: Path,
    mode: str,
    seed: int,
    schedule: dict[str, Any],
    device: str,
    synthetic: float,
    eval_every: int,
    extra: list[str],
    init: Path | None = None,
) -> None:
    """One ``cloudcps train`` run of the starter (CLI, one worker): resumed when ``out`` holds
    an unfinished run, skipped when it holds a finished one; ``extra``: more options; ``init``:
    the weights a new run starts from."""
    args = ["train", "--data", str(tiles), "--out", str(out), "--mode", mode, "--seed", str(seed)]
    for k, v in schedule.items():
        args += [f"--{k.replace('_', '-')}", str(v)]
    args += ["--synthetic-clouds", str(synthetic)]
    args += ["--device", device, "--workers", "1", "--eval-every", str(eval_every)]
    args += ["--log-every", "25"]
    if (out / "latest.pt").exists():
        from cloudcps.models import load_checkpoint

        if int(load_checkpoint(out / "latest.pt")["iteration"]) >= int(schedule["iters"]):
            return
        args += ["--resume"]
    elif init is not None:
        args += ["--init", str(init)]
    cloudcps("-q", *args, *extra)


# --------------------------------------------------------------------------------------------
# Scoring: our runs, the brightness rule and ukis-csmask on the same files, by the same code
# --------------------------------------------------------------------------------------------


def score(work: Path) -> dict[str, Any]:
    """Score every finished run (final iteration; net 1, and the ensemble for CPS)."""
    _need_shared()
    results_path = work / "scores.json"
    results: dict[str, Any] = json.loads(results_path.read_text()) if results_path.exists() else {}
    from cloudcps.models import load_checkpoint

    for run in sorted((work / "runs").glob("*-s*-i*")):
        latest = run / "latest.pt"
        if not latest.exists():
            continue
        state = load_checkpoint(latest)
        iters = int(state["config"]["iters"])
        if int(state["iteration"]) < iters:
            continue  # unfinished: scored when it ends
        variants = ["1", "both"] if len(state["nets"]) > 1 else ["1"]
        for nets in variants:
            key = f"{run.name}:{'ensemble' if nets == 'both' else 'net1'}"
            if key in results:
                continue
            t0 = time.perf_counter()
            results[key] = {
                "scores": evalsets.score_model(latest, nets),
                "seconds": time.perf_counter() - t0,
                "mode": state["config"]["mode"],
                "seed": state["config"]["seed"],
                "iters": iters,
                "synthetic_clouds": state["config"].get("synthetic_clouds", 0.0),
            }
            print(f"scored {key}", flush=True)
    # the shipped model as users get it: its own windows (1024 px, 64 px overlap), and --tta
    from cloudcps.modelfiles import default_model_path

    shipped = default_model_path()
    digest = shipped_digest()
    for tta in (False, True):
        key = f"shipped-{digest}:{'tta' if tta else 'default'}"
        if key not in results:
            t0 = time.perf_counter()
            results[key] = {
                "scores": evalsets.score_model(shipped, "1", tta),
                "seconds": time.perf_counter() - t0,
            }
            print(f"scored {key}", flush=True)
    results_path.write_text(json.dumps(results, indent=1))
    return results


def shipped_digest() -> str:
    """The first 16 hex digits of the packaged starter.pt's sha256: what names its scores."""
    from cloudcps.modelfiles import default_model_path

    return hashlib.sha256(default_model_path().read_bytes()).hexdigest()[:16]


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}"


def _mean_sd(values: list[float | None]) -> str:
    v = [x for x in values if x is not None]
    if not v:
        return "-"
    m = 100 * statistics.mean(v)
    return f"{m:.1f} ± {100 * statistics.stdev(v):.1f}" if len(v) > 1 else f"{m:.1f}"


def floor_rows(work: Path) -> list[tuple[str, list[dict[str, Any]]]]:
    fl = evalsets.floors(work)
    rows = [
        (f"brightness rule, t = {fl['rule']['threshold']:g} (fitted on train)", [fl["rule"]]),
        ("brightness rule, t = 2000", [fl["rule-2000"]]),
    ]
    if "ukis-csmask" in fl:
        rows.append(("ukis-csmask 1.0.0 (4 bands)", [fl["ukis-csmask"]]))
    return rows


def table(work: Path, only: str | None = None) -> str:
    """Markdown tables: each model on each val set, seeds as mean ± sd, floors on top."""
    results = json.loads((work / "scores.json").read_text())
    current = shipped_digest()
    groups: dict[str, list[dict[str, Any]]] = {}
    for key, r in results.items():
        run, variant = key.split(":")
        if run.startswith("shipped-"):
            if run != f"shipped-{current}":
                continue  # an earlier starter.pt
            label = "shipped starter.pt" + (", --tta" if variant == "tta" else " (defaults)")
            groups.setdefault(f"**{label}**", []).append(r)
            continue
        if only and only not in run:
            continue
        name = run.rsplit("-s", 1)[0]
        it = run.rsplit("-i", 1)[1]
        groups.setdefault(f"cloudcps {name} ({variant}, {it} it)", []).append(r)
    lines = []
    for set_key, (title, names) in evalsets.SET_NAMES.items():
        lines += [f"**{title}** (IoU %)", ""]
        lines.append("| model | seeds | " + " | ".join(names) + " | mIoU |")
        lines.append("|---|---|" + "---|" * (len(names) + 1))
        for name, rs in [*floor_rows(work), *groups.items()]:
            if set_key not in rs[0]["scores"]:
                n = len(names) + 1
                lines.append(f"| {name} | {len(rs)} | " + " | ".join(["n/a"] * n) + " |")
                continue
            cells = [
                _mean_sd([r["scores"][set_key]["iou"][c] for r in rs]) for c in range(len(names))
            ]
            cells.append(_mean_sd([r["scores"][set_key]["miou"] for r in rs]))
            lines.append(f"| {name} | {len(rs)} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Packaging, fine-tuning, figures
# --------------------------------------------------------------------------------------------


def package(run: Path, dest: Path, note: str) -> Path:
    """The shipped checkpoint: fp16 weights of the final network 1 (what ``predict`` runs by
    default, also for a CPS pair), contract, spec."""
    from cloudcps.models import load_checkpoint, save_checkpoint

    state = load_checkpoint(run / "latest.pt" if run.is_dir() else run)
    contract = dict(state["contract"])
    contract["tile_size"] = 1024  # prediction window: the networks are fully convolutional
    contract["input"] = {
        "values": "reflectance x 10000 (Sentinel-2 L1C/L2A, Landsat 8/9 TOA), bands R,G,B,NIR",
        "typical_range": [0, 12000],
    }
    # weights in float16; BatchNorm statistics stay float32: channels whose recalibrated
    # variance is ~0 turn the rounding of their mean into noise (On Cloud N cloud IoU 66 -> 62)
    half = [
        {k: v.half() if v.is_floating_point() and "running_" not in k else v for k, v in sd.items()}
        for sd in state["nets"][:1]
    ]
    out = {
        "model": state["model"],
        "nets": half,
        "iteration": state["iteration"],
        "config": state["config"],
        "contract": contract,
        "best": state.get("best"),
        "val": None,
        "encoder_weights": state.get("encoder_weights"),
        "starter": {
            "source_run": run.name,
            "note": note,
            "dtype": "float16",  # weights; BatchNorm statistics float32
        },
    }
    dest.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(dest, out)
    from cloudcps.predict.graphs import export_onnx, vouch_for_graph

    export_onnx(dest, "both", dest.with_suffix(".onnx"))  # the graph CPU prediction runs
    vouch_for_graph(dest, dest.with_suffix(".onnx"))  # the checkpoint names it as its own
    return dest


def finetune(work: Path, seeds: list[int], iters: int, lr: float | None = None) -> dict[str, Any]:
    """Supervised fine-tuning on the 6-patch L8 split of docs/benchmarks.md: --init default vs
    ImageNet, same budget and settings as bench/accuracy.py's l8 benchmark."""
    from accuracy import SETTINGS, prepare_l8

    from cloudcps.train import Trainer
    from cloudcps.train.config import TrainConfig

    path = work / "finetune.json"
    results: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    for seed in seeds:
        # the starter's way of reading scenes for both inits (what a user fine-tuning would do)
        tiles = prepare_l8(ROOT / "bench" / "out", seed, STRETCH, float(GAMMA))
        for init in ("imagenet", "default"):
            key = f"{init}-s{seed}-i{iters}" + (f"-lr{lr:g}" if lr else "")
            if key in results:
                continue
            cfg = TrainConfig(
                data=str(tiles),
                out=str(work / "ft" / key),
                mode="supervised",
                seed=seed,
                device="cpu",
                workers=1,
                eval_every=iters,
                log_every=20,
                init="default" if init == "default" else None,
                **{**SETTINGS["l8"], "iters": iters, **({"lr": lr} if lr else {})},
            )
            t0 = time.perf_counter()
            res = Trainer(cfg, overwrite=True).fit()
            assert res.last_val is not None
            results[key] = {
                "init": init,
                "lr": cfg.lr,
                "seed": seed,
                "iters": iters,
                "net1": res.last_val["net1"],
                "seconds": time.perf_counter() - t0,
            }
            path.write_text(json.dumps(results, indent=1))
            print(f"{key}: mIoU {res.last_val['net1']['miou']:.4f}", flush=True)
    return results


def finetune_table(work: Path) -> str:
    results = json.loads((work / "finetune.json").read_text())
    lines = [
        "| init | lr | seeds | " + " | ".join(CLASSES) + " | mIoU |",
        "|---|---|---|" + "---|" * 5,
    ]
    lrs = sorted({r.get("lr", 0.01) for r in results.values()}, reverse=True)
    for lr in lrs:
        for init, label in (("imagenet", "ImageNet encoder"), ("default", "--init default")):
            rs = [r for r in results.values() if r["init"] == init and r.get("lr", 0.01) == lr]
            if not rs:
                continue
            cells = [_mean_sd([r["net1"]["iou"][c] for r in rs]) for c in range(4)]
            cells.append(_mean_sd([r["net1"]["miou"] for r in rs]))
            lines.append(f"| {label} | {lr:g} | {len(rs)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def figures(model: str, dest: Path) -> None:
    """RGB beside the default model's mask for the real scenes and a few val files."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import rasterio
    from matplotlib.colors import ListedColormap

    predict = evalsets.model_predictor(model)
    work = WORK
    cases = [
        (
            "Sentinel-2 L1C, Betsiboka: cumulus, thin cloud, shadows",
            SHARED / "scenes" / "s2_l1c_cloudy_betsiboka_rgbn.tif",
        ),
        ("Sentinel-2 L1C, cloud-free", SHARED / "scenes" / "s2_l1c_nocloud_rgbn.tif"),
        ("Landsat 8 (TOA), altocumulus", work / "l8_cloudy_toa.tif"),
        ("On Cloud N val chip_id_2", SHARED / "oncloudn" / "images" / "chip_id_2.tif"),
        ("On Cloud N val chip_id_4", SHARED / "oncloudn" / "images" / "chip_id_4.tif"),
    ]
    l8_val = sorted((SHARED / "l8biome" / "val" / "images").glob("*.tif"))
    cases += [(f"L8 Biome val {p.stem}", p) for p in l8_val[:4]]
    scr = SHARED / "cloudsen12_scribble" / "images"
    cases += [(f"CloudSEN12 {p}", scr / f"{p}.tif") for p in ("roi2507_cloudy",)]
    cases += [
        ("Sentinel-2 L2A desert, 100 m: cloud only in the NE corner", evalsets.DESERT),
        (
            "Landsat 8 TOA, Long Island, 120 m: cumulus, cirrus, a contrail",
            SHARED / "scenes" / "l8_toa_cumulus_rgbn.tif",
        ),
        (
            "L8 Biome train Barren_03_0207 (84 % clear; trained on)",
            SHARED / "l8biome" / "train" / "images" / "Barren_03_0207.tif",
        ),
    ]
    colours = ListedColormap(["#3a7d2c", "#ffffff", "#7fc8ff", "#3b2a80"])
    dest.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(len(cases), 2, figsize=(7, 3.4 * len(cases)))
    for (title, path), (a0, a1) in zip(cases, axes, strict=True):
        with rasterio.open(path) as src:
            rgb = src.read([1, 2, 3]).astype(np.float32)
        mask = predict(path)
        a0.imshow(np.clip((rgb / 3000.0) ** 0.7, 0, 1).transpose(1, 2, 0))
        a0.set_title(title, fontsize=9)
        shown = np.ma.masked_equal(mask, 255)
        a1.imshow(shown, cmap=colours, vmin=-0.5, vmax=3.5, interpolation="nearest")
        a1.set_title("default model: clear / thick / thin / shadow", fontsize=8)
        for a in (a0, a1):
            a.set_axis_off()
    fig.tight_layout()
    fig.savefig(dest / "starter_masks.png", dpi=70)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "what",
        choices=[
            "prepare",
            "train",
            "v3",
            "score",
            "table",
            "package",
            "finetune",
            "figures",
            "all",
        ],
    )
    ap.add_argument("run", nargs="?", type=Path)
    ap.add_argument("--mode", choices=["cps", "supervised"], default="cps")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--iters", type=int)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--synthetic", type=float, default=STARTER_SYNTHETIC)
    ap.add_argument("--protocol", choices=["v1", "v2", "v3", "v4", "v5", "v6"], default="v3")
    ap.add_argument("--only", help="table: only runs whose name holds this")
    ap.add_argument("--work", type=Path, default=WORK)
    ap.add_argument("--note", default="")
    ap.add_argument("--ft-iters", type=int, default=200)
    ap.add_argument("--ft-lr", type=float, help="fine-tuning lr [default: the l8 benchmark's]")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(bench_threads())
    schedule = dict(GPU_SCHEDULE if args.device == "cuda" else CPU_SCHEDULE)
    if args.iters:
        schedule["iters"] = args.iters
    seeds = [int(s) for s in args.seeds.split(",")]
    if args.what == "prepare":
        print(prepare(args.work, args.protocol))
    elif args.what == "train":
        out = train(
            args.work, args.mode, args.seed, schedule, args.device, args.synthetic, args.protocol
        )
        print(out)
    elif args.what == "v3":
        print(train_v3(args.work, args.seed, args.device))
    elif args.what == "score":
        score(args.work)
        print(table(args.work))
    elif args.what == "table":
        print(table(args.work, args.only))
        if (args.work / "finetune.json").exists():
            print(finetune_table(args.work))
    elif args.what == "package":
        if args.run is None:
            raise SystemExit("package needs the run folder to ship")
        print(package(args.run, ROOT / "cloudcps" / "weights" / "starter.pt", args.note))
    elif args.what == "finetune":
        finetune(args.work, seeds, args.ft_iters, args.ft_lr)
        print(finetune_table(args.work))
    elif args.what == "figures":
        figures(str(args.run or "default"), ROOT / "docs" / "img")
    else:  # all: rebuild the shipped model (starter v3) and package it
        t0 = time.perf_counter()
        run = train_v3(args.work, V3_SEED, args.device)
        note = f"starter v3: bench/starter.py all (recipe v3, seed {V3_SEED})"
        print(package(run, ROOT / "cloudcps" / "weights" / "starter.pt", args.note or note))
        print(f"rebuilt in {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
