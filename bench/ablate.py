"""Why the starter lost to a brightness rule: one change at a time on short schedules.

    python bench/ablate.py run NAME [--set key=value ...] [--data l8ocn|l8|v4|v5|...] [--seed 0]
        [--curve-every N]          # score every val set and the clear ground every N iterations
    python bench/ablate.py adjust RUN --seed S [--tau 1] [--only "thin cloud"]
    python bench/ablate.py table [--names a,b,c]
    python bench/ablate.py levers [--names a,b,c]    # issue 22's table (clear ground, window)
    python bench/ablate.py heldout                   # the leave-the-Barren-patches-out pair
    python bench/ablate.py patches v4-base-s0,ukis   # docs/img/clear_ground_patches.png
    python bench/ablate.py curves v4-paste-long-s0   # docs/img/curves_v4-paste-long-s0.png

Each run trains (supervised unless ``--set mode=cps``) on the tiles of ``bench/starter.py
prepare`` with the overrides given, then scores its final checkpoint on every real val set
(L8 Biome 4 and 3 classes, On Cloud N, CloudSEN12 scribbles) beside the brightness rule and
ukis-csmask, and keeps the in-training L8 val curve (learning curve, best vs final). Results:
``bench/out/ablate/results.json``; the table goes into docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import evalsets  # noqa: E402
from common import bench_threads  # noqa: E402

WORK = ROOT / "bench" / "out" / "ablate"
STARTER_TILES = ROOT / "bench" / "out" / "starter" / "tiles"
# the short reference schedule: today's starter recipe, 600 iterations
BASE: dict[str, Any] = {
    "mode": "supervised",
    "iters": 600,
    "batch_size": 2,
    "crop": 256,
    "lr": 0.005,
    "class_weights": "auto",
    "bn_recalibrate": 0,  # the trainer's default before this ablation
}


def data_variant(name: str) -> Path:
    """A view of the starter tiles with other split lists (symlinked images, own splits)."""
    if name == "l8ocn":
        return STARTER_TILES
    # v2: + cloud-free L8 scenes (--clear), + Betsiboka unlabelled; v3: + On Cloud N labels
    # screened; v4: + the desert tile's west half as clear ground; v5: + ukis-csmask teacher
    # labels; v6: v4 + the cloud-free Sentinel-2 L1C scene's north half as clear ground
    if name in ("v2", "v3", "v4", "v5", "v6"):
        from starter import WORK as STARTER_WORK
        from starter import prepare

        return prepare(STARTER_WORK, name)
    if name in REPEATS:
        return repeated_variant(name)
    out = WORK / f"tiles-{name}"
    if (out / "manifest.json").exists():
        return out
    manifest = json.loads((STARTER_TILES / "manifest.json").read_text())
    labeled = (STARTER_TILES / "splits" / "labeled.txt").read_text().split()
    scenes = {s["id"]: s for s in manifest["scenes"]}

    def is_l8(tile_id: str) -> bool:
        scene = manifest_tiles[tile_id]["scene"]
        return "l8biome" in str(scenes[scene]["path"])

    manifest_tiles = {t["id"]: t for t in manifest["tiles"]}
    if name == "l8":
        keep = [t for t in labeled if is_l8(t)]
    elif name == "l8ocn-screened":  # On Cloud N chips whose labels contradict their image out
        from starter import SHARED as STARTER_SHARED
        from starter import WORK as STARTER_WORK
        from starter import screen_coarse_labels

        chips = sorted((STARTER_SHARED / "oncloudn_train" / "images").glob("*.tif"))
        screen = screen_coarse_labels(chips, STARTER_SHARED / "oncloudn_train" / "labels")
        (STARTER_WORK / "ocn_screen.json").write_text(json.dumps(screen, indent=1))
        keep = [t for t in labeled if is_l8(t) or screen[manifest_tiles[t]["scene"]]["keep"]]
    else:
        raise SystemExit(f"unknown data variant {name}")
    (out / "splits").mkdir(parents=True, exist_ok=True)
    for sub in ("images", "labels", "valid"):
        link = out / sub
        if not link.exists():
            link.symlink_to(STARTER_TILES / sub)
    for split in ("unlabeled", "val"):
        (out / "splits" / f"{split}.txt").write_text(
            (STARTER_TILES / "splits" / f"{split}.txt").read_text()
        )
    (out / "splits" / "labeled.txt").write_text("\n".join(keep) + "\n")
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


# sampling levers: protocol v4's tiles with some labelled tiles listed several times (the
# trainer draws list entries uniformly, so a tile listed k times is drawn k times as often)
REPEATS: dict[str, tuple[str, int]] = {
    "v4-l8x4": ("l8biome", 4),  # the real L8 Biome train patches: 12 % of draws -> 35 %
    "v4-hard": ("hard", 4),  # tiles whose labelled clear ground v4-base seed 0 calls cloud
    "v4-nobarren": ("holdout", 0),  # the mostly clear Barren train patches held out
    "v6-l8x4": ("l8biome", 4),  # as v4-l8x4, on protocol v6's tiles
    "v6-l8x4-nobarren": ("l8biome-holdout", 4),  # starter v3's data, the Barren patches out
}
# the mostly clear Barren patches of L8 Biome train (100 %, 84 %, 100 % clear); no Shrubland
# train patch is mostly clear (37 % and 44 %; the all-clear Shrubland_01 is a val patch)
HOLDOUT = ("Barren_00_0214", "Barren_03_0207", "Barren_08_0207")
HARD_MODEL = WORK / "runs" / "v4-base-s0" / "latest.pt"
HARD_SHARE = 5.0  # % of a tile's labelled clear pixels called cloud that makes it "hard"


def tile_false_cloud(tiles: Path, model: Path) -> dict[str, float]:
    """Per labelled tile, the % of its labelled clear pixels that ``model`` calls cloud (thick
    or thin), predicted on the tile's scene as ``cloudcps predict`` would (cached)."""
    import numpy as np
    from PIL import Image

    cache = WORK / f"false_cloud-{tiles.name}-{model.parent.name}.json"
    if cache.exists():
        cached: dict[str, float] = json.loads(cache.read_text())
        return cached
    manifest = json.loads((tiles / "manifest.json").read_text())
    scenes = {s["id"]: s for s in manifest["scenes"]}
    labeled = set((tiles / "splits" / "labeled.txt").read_text().split())
    fn = evalsets.model_predictor(model)
    preds: dict[str, np.ndarray] = {}
    out: dict[str, float] = {}
    for t in manifest["tiles"]:
        if t["id"] not in labeled or not t.get("label"):
            continue
        if t["scene"] not in preds:
            preds[t["scene"]] = fn(Path(scenes[t["scene"]]["path"]))
        w = t["window"]
        p = preds[t["scene"]][
            w["row_off"] : w["row_off"] + w["height"], w["col_off"] : w["col_off"] + w["width"]
        ]
        lab = np.asarray(Image.open(tiles / t["label"]))[: p.shape[0], : p.shape[1]]
        clear = lab == 0
        if clear.sum() >= 1000:
            out[t["id"]] = round(100 * float(np.isin(p[clear], (1, 2)).mean()), 2)
    cache.write_text(json.dumps(out, indent=1))
    return out


def repeated_variant(name: str) -> Path:
    """A protocol's tiles (hard-linked; the protocol is the name's prefix, ``v4-l8x4`` -> v4)
    with a labelled list that repeats some tiles."""
    from starter import WORK as STARTER_WORK
    from starter import l8_tile_ids, prepare, repeat_tiles

    base = prepare(STARTER_WORK, name.split("-")[0])
    out = WORK / f"tiles-{name}"
    if (out / "manifest.json").exists():
        return out
    which, times = REPEATS[name]
    manifest = json.loads((base / "manifest.json").read_text())
    tile_scene = {t["id"]: t["scene"] for t in manifest["tiles"]}
    labeled = (base / "splits" / "labeled.txt").read_text().split()
    held = frozenset(t for t in labeled if tile_scene[t] in HOLDOUT)
    if which in ("l8biome", "l8biome-holdout"):
        pick = l8_tile_ids(base)
    elif which == "holdout":
        pick = set(held)
    else:
        shares = tile_false_cloud(base, HARD_MODEL)
        pick = {t for t, v in shares.items() if v >= HARD_SHARE}
    drop = held if which == "l8biome-holdout" else frozenset()
    print(f"{name}: {len(pick)} tiles listed {times}x, {len(drop)} held out", flush=True)
    return repeat_tiles(base, out, pick, times, drop)


def parse_value(v: str) -> Any:
    for conv in (int, float):
        try:
            return conv(v)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(v, v)


def run(
    name: str, overrides: dict[str, Any], data: str, seed: int, curve_every: int = 0
) -> dict[str, Any]:
    from cloudcps.train import Trainer
    from cloudcps.train.config import TrainConfig, config_from_dict

    results_path = WORK / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    key = f"{name}-s{seed}"
    if key in results:
        return dict(results[key])
    tiles = data_variant(data)
    settings = {**BASE, **overrides}
    iters = int(settings["iters"])
    cfg = config_from_dict(
        {
            **settings,
            "data": str(tiles),
            "out": str(WORK / "runs" / key),
            "seed": seed,
            "device": "cpu",
            "workers": 1,
            "eval_every": max(1, iters // 6),
            "log_every": 25,
        },
        TrainConfig(),
    )
    from cloudcps.models import load_checkpoint

    latest = Path(cfg.out) / "latest.pt"
    t0 = time.perf_counter()
    # with a curve: train in chunks (resumed, same schedule) and score every val set and the
    # clear ground at the end of each; without: one stretch
    stops = list(range(curve_every, iters, curve_every)) if curve_every else []
    curve_path = Path(cfg.out) / "curve.json"
    points: list[dict[str, Any]] = json.loads(curve_path.read_text()) if curve_path.exists() else []
    best_iter = None
    for stop in [*stops, iters]:
        resume = load_checkpoint(latest) if latest.exists() else None
        if resume is not None and int(resume["iteration"]) >= stop:
            continue
        trainer = Trainer(cfg, resume_state=resume, overwrite=resume is None)
        best_iter = trainer.fit(stop_at=stop).best_iteration
        if curve_every and stop < iters:
            points.append({"iter": stop, **curve_point(latest)})
            curve_path.write_text(json.dumps(points, indent=1))
    seconds = time.perf_counter() - t0
    curve = learning_curve(Path(cfg.out))
    s_final = evalsets.score_model(latest)
    out: dict[str, Any] = {
        "settings": {**settings, "data": data},
        "seed": seed,
        "seconds": seconds,
        "curve_l8_val4": curve,
        "final": evalsets.headline(s_final),
        "final_scores": s_final,
    }
    out.update(extras(latest))
    if REPEATS.get(data, ("", 1))[0] in ("holdout", "l8biome-holdout"):
        out["held_out"] = held_out_clear(evalsets.model_predictor(latest))
    if curve_every:
        final_point = {"final": out["final"], "clear": out["clear"]}
        out["curve"] = [*points, {"iter": iters, **final_point}]
    best = Path(cfg.out) / "best.pt"
    if best.exists():
        out["best"] = evalsets.headline(evalsets.score_model(best))
        out["best_iter"] = best_iter
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    results[key] = out
    results_path.write_text(json.dumps(results, indent=1))
    return out


def recalibrated(src: str, name: str) -> dict[str, Any]:
    """Run ``src`` (a results key) with its BatchNorm statistics recalibrated on real crops,
    scored as ``NAME-sSEED``: the weights are the source's, the statistics what a run of the
    same settings gives today (``bn_recalibrate_synthetic`` off, the same calibration stream: the
    run's seed and final iteration), so no training is repeated."""
    import shutil

    from cloudcps.train import Trainer, resolve_config

    results = json.loads((WORK / "results.json").read_text())
    settings = dict(results[src]["settings"])
    seed = int(results[src]["seed"])
    out = WORK / "runs" / f"{name}-s{seed}"
    if not (out / "latest.pt").exists():
        tmp = out.with_name(out.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(WORK / "runs" / src, tmp)
        (tmp / "best.pt").unlink(missing_ok=True)  # chosen on the old statistics
        overrides = {"out": str(tmp), "bn_recalibrate_synthetic": False}
        cfg, state = resolve_config(overrides, None, resume=True)
        assert state is not None and int(state["iteration"]) == cfg.iters, src
        trainer = Trainer(cfg, resume_state=state)
        try:
            trainer.recalibrate_norm()
            trainer.save("latest.pt")
        finally:
            trainer.close()
        tmp.rename(out)
    data = str(settings.pop("data"))
    return run(name, {**settings, "bn_recalibrate_synthetic": False}, data, seed)


def held_out_clear(fn: evalsets.Predict, kind: str = "4") -> dict[str, Any]:
    """Per held-out Barren train patch, its clear pixels and the % of them called cloud."""
    cloud_codes = {"4": (1, 2), "3": (1,), "2": (1,)}[kind]
    out: dict[str, Any] = {}
    for name in HOLDOUT:
        img = evalsets.SHARED / "l8biome" / "train" / "images" / f"{name}.tif"
        ref = evalsets.l8_classes(img.parent.parent / "masks" / img.name)
        out[name] = evalsets.patch_false_cloud(fn(img), ref, cloud_codes)
    return out


def held_out_floors() -> dict[str, Any]:
    """The floors on the held-out Barren patches (cached)."""
    path = WORK / "held_out_floors.json"
    if path.exists() and "far_pixels" in path.read_text():
        cached: dict[str, Any] = json.loads(path.read_text())
        return cached
    from peers import ukis_file

    out = {
        "rule t=2000": held_out_clear(evalsets.rule_predictor(2000.0), "2"),
        "ukis-csmask": held_out_clear(ukis_file, "3"),
    }
    path.write_text(json.dumps(out, indent=1))
    return out


def curve_point(model: Path) -> dict[str, Any]:
    """One point of a long run's learning curve: every val set's headline and the clear
    ground (the window checks only at the end: they cost as much as the rest)."""
    return {
        "final": evalsets.headline(evalsets.score_model(model)),
        "clear": evalsets.clear_ground(evalsets.model_predictor(model)),
    }


def learning_curve(run: Path) -> list[tuple[int, float]]:
    """The in-training L8 Biome val mIoU (net 1) of every check, from ``metrics.jsonl`` (so a
    resumed or re-scored run keeps its whole curve)."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line]
    return [
        (int(r["iter"]), round(100 * r["miou_net1"], 1))
        for r in rows
        if r.get("event") == "val" and r.get("miou_net1") is not None
    ]


def extras(model: str | Path) -> dict[str, Any]:
    """False cloud on clear ground and the window checks of one model (evalsets)."""
    return {
        "clear": evalsets.clear_ground(evalsets.model_predictor(model)),
        "window": evalsets.window_checks(model),
    }


def floors_clear() -> dict[str, Any]:
    """The floors' false cloud on clear ground (cached): the rule at both thresholds and
    ukis-csmask (4 bands: L1C for L8 Biome, L2A for the desert)."""
    path = WORK / "floors_clear.json"
    if path.exists():
        cached: dict[str, Any] = json.loads(path.read_text())
        return cached
    fl = evalsets.floors(WORK)
    out = {
        f"rule t={t:g}": evalsets.clear_ground(evalsets.rule_predictor(t), "2")
        for t in (fl["rule"]["threshold"], 2000.0)
    }
    from peers import ukis_file

    out["ukis-csmask"] = evalsets.clear_ground(lambda p: ukis_file(p, threads=2), "3")
    path.write_text(json.dumps(out, indent=1))
    return out


def model_of(key: str) -> Path:
    """The checkpoint behind a results key: a run's final model, or an adjusted copy."""
    run = WORK / "runs" / key / "latest.pt"
    return run if run.exists() else WORK / "probe" / f"{key}.pt"


def _has_far(patches: dict[str, Any]) -> bool:
    """Whether per-patch false-cloud records (``patch_false_cloud``) have the far column."""
    return "far_pixels" in next(iter(patches.values()), {})


def _clear_complete(clear: dict[str, Any]) -> bool:
    """Whether a clear-ground record (``evalsets.clear_ground``) has every column of today."""
    return _has_far(clear.get("l8 val clear patches", {})) and "s2 clear south" in clear


def reclear(prefix: str = "") -> None:
    """Score the clear ground again (after a new column) for every result whose key starts with
    ``prefix`` and lacks it, the shipped model and the floors; each result is re-read before its
    write (runs may finish meanwhile)."""
    results_path = WORK / "results.json"
    for key, r in json.loads(results_path.read_text()).items():
        if not key.startswith(prefix):
            continue
        redo: dict[str, Any] = {}
        if "held_out" in r and not _has_far(r["held_out"]):
            redo["held_out"] = held_out_clear(evalsets.model_predictor(model_of(key)))
        if not _clear_complete(r.get("clear", {})):
            redo["clear"] = evalsets.clear_ground(evalsets.model_predictor(model_of(key)))
        if redo:
            results = json.loads(results_path.read_text())
            results[key].update(redo)
            results_path.write_text(json.dumps(results, indent=1))
            print("rescored", key, *redo, flush=True)
    shipped_record()
    if not all(_clear_complete(v) for v in floors_clear().values()):
        (WORK / "floors_clear.json").unlink()
        floors_clear()


def shipped_record() -> dict[str, Any]:
    """The packaged starter at its defaults (``shipped.json``): its val scores, clear ground and
    window checks, and the sha256 of the file they were measured on. Measured again whenever
    the package holds another file than the record names (a new starter ships) or a clear-ground
    column is missing, so a record never mixes two models."""
    from starter import shipped_digest

    from cloudcps.modelfiles import default_model_path

    model = default_model_path()
    digest = shipped_digest()
    path = WORK / "shipped.json"
    rec: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    if rec.get("sha256") == digest and _clear_complete(rec.get("clear", {})):
        return rec
    rec = {
        "sha256": digest,
        "label": f"shipped starter {digest[:8]}",
        "final": evalsets.headline(evalsets.score_model(model)),
        **extras(model),
    }
    path.write_text(json.dumps(rec, indent=1))
    return rec


def add_extras() -> None:
    """Fill in the clear-ground and window numbers of finished runs scored before they existed,
    and of the shipped model (``shipped_record``)."""
    results_path = WORK / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    for key, r in results.items():
        if "clear" not in r:
            r.update(extras(WORK / "runs" / key / "latest.pt"))
            results_path.write_text(json.dumps(results, indent=1))
            print("extras", key, flush=True)
    shipped_record()
    floors_clear()


def by_run(
    results: dict[str, dict[str, Any]], names: list[str] | None = None
) -> dict[str, list[dict[str, Any]]]:
    """Results grouped by run name (the seeds of one setting together), optionally only
    ``names``."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for key, r in results.items():
        name = key.rsplit("-s", 1)[0]
        if not names or name in names:
            groups.setdefault(name, []).append(r)
    return groups


COLS = ["l8-4 mIoU", "l8-3 mIoU", "l8 cloud", "ocn cloud", "scr-4 mIoU", "scr thin", "scr shadow"]


def table(names: list[str] | None = None) -> str:
    import statistics

    results = json.loads((WORK / "results.json").read_text())
    fl = evalsets.floors(WORK)
    lines = [
        "| run | change | seeds | " + " | ".join(COLS) + " | s/it | L8-4 val every 100 it |",
        "|---|---|---|" + "---|" * (len(COLS) + 2),
    ]
    for label, f in (
        (f"brightness rule (t = {fl['rule']['threshold']:g}, fitted on train)", fl["rule"]),
        ("brightness rule (t = 2000)", fl["rule-2000"]),
        ("ukis-csmask 1.0.0 (4 bands)", fl.get("ukis-csmask")),
    ):
        if f is None:
            continue
        h = evalsets.headline(f["scores"])
        cells = ["-" if h[c] is None else f"{h[c]:.1f}" for c in COLS]
        lines.append(f"| {label} | | | " + " | ".join(cells) + " | | |")
    for name, rs in by_run(results, names).items():
        change = ", ".join(
            f"{k}={v}" for k, v in rs[0]["settings"].items() if BASE.get(k) != v and k != "data"
        )
        if rs[0]["settings"].get("data", "l8ocn") != "l8ocn":
            change = f"data={rs[0]['settings']['data']}" + (f", {change}" if change else "")
        cells = []
        for c in COLS:
            v = [r["final"][c] for r in rs if r["final"][c] is not None]
            cells.append(
                "-"
                if not v
                else f"{statistics.mean(v):.1f}"
                + (f" ± {statistics.stdev(v):.1f}" if len(v) > 1 else "")
            )
        spi = statistics.mean(r["seconds"] / r["settings"]["iters"] for r in rs)
        curve = " ".join(f"{v:.0f}" for _, v in rs[0]["curve_l8_val4"])
        lines.append(
            f"| {name} | {change or 'today'} | {len(rs)} | "
            + " | ".join(cells)
            + f" | {spi:.2f} | {curve} |"
        )
    return "\n".join(lines)


LEVER_COLS = [
    "l8-4 mIoU", "l8-3 mIoU", "l8 cloud", "l8 shadow", "ocn cloud", "ocn @256", "agree",
    "scr-4 mIoU", "scr thin", "scr shadow", "desert", "desert east", "s2 clear S",
]  # fmt: skip
PATCHES = (
    "GrassCrops_01_0413",
    "Urban_03_0619",
    "Water_11_0728",
    "Forest_00_1008",
    "Shrubland_01_0508",
)  # fmt: skip  (L8 Biome val patches with >= 10,000 clear pixels)


FAR_PATCHES = PATCHES[:3]  # the three over the bar; "far": > 10 px from labelled cloud


def _lever_cells(final: dict[str, Any] | None, r: dict[str, Any]) -> dict[str, float | None]:
    w, c = r.get("window", {}), r.get("clear", {})
    cells: dict[str, float | None] = dict(final or {})
    cells.update(
        {
            "ocn @256": w.get("ocn cloud @256"),
            "agree": w.get("betsiboka agree 256/1024"),
            "desert": c.get("desert outside"),
            "desert east": c.get("desert east"),
            "s2 clear S": c.get("s2 clear south"),
        }
    )
    if final is not None and "ocn cloud @1024" in w:
        cells["ocn cloud"] = w["ocn cloud @1024"]
    for p in PATCHES:
        cells[p] = c.get("l8 val clear patches", {}).get(p, {}).get("false_cloud")
        cells[f"far {p}"] = c.get("l8 val clear patches", {}).get(p, {}).get("false_cloud_far")
    return cells


def lever_table(names: list[str] | None = None) -> str:
    """Issue 22's table: every val set, the window checks and false cloud on clear ground
    (desert tile outside its corner; per L8 Biome val patch, % of clear pixels called cloud)."""
    import statistics

    results = json.loads((WORK / "results.json").read_text())
    fl, flc = evalsets.floors(WORK), floors_clear()
    cols = (
        LEVER_COLS
        + [f"fc {p.split('_')[0]}" for p in PATCHES]
        + [f"far {p.split('_')[0]}" for p in FAR_PATCHES]
    )
    lines = [
        "| model | seeds | " + " | ".join(cols) + " |",
        "|---|---|" + "---|" * len(cols),
    ]

    def row(label: str, recs: list[dict[str, float | None]]) -> str:
        out = []
        for key in LEVER_COLS + list(PATCHES) + [f"far {p}" for p in FAR_PATCHES]:
            v = [r[key] for r in recs if r.get(key) is not None]
            if not v:
                out.append("-")
                continue
            m = statistics.mean(v)  # type: ignore[type-var]
            sd = f" ± {statistics.stdev(v):.1f}" if len(v) > 1 else ""  # type: ignore[type-var]
            out.append(f"{m:.1f}{sd}")
        return f"| {label} | {len(recs)} | " + " | ".join(out) + " |"

    t = fl["rule"]["threshold"]
    for label, key, ckey in (
        (f"rule t = {t:g} (fitted)", "rule", f"rule t={t:g}"),
        ("rule t = 2000", "rule-2000", "rule t=2000"),
        ("ukis-csmask (4 bands)", "ukis-csmask", "ukis-csmask"),
    ):
        if key in fl:
            lines.append(
                row(
                    label,
                    [_lever_cells(evalsets.headline(fl[key]["scores"]), {"clear": flc[ckey]})],
                )
            )
    rec = shipped_record()
    lines.append(row(f"**{rec['label']}** (defaults)", [_lever_cells(rec["final"], rec)]))
    for name, rs in by_run(results, names).items():
        if not all("clear" in r for r in rs):
            continue
        lines.append(row(name, [_lever_cells(r["final"], r) for r in rs]))
    return "\n".join(lines)


def adjust(name: str, seed: int, tau: float, only: str | None) -> dict[str, Any]:
    """Post-hoc logit adjustment of a finished run: subtract ``tau * log(w_c / w_clear)`` from
    the head's bias, where ``w`` are the balanced class weights the run trained with (counted
    from the shares in its first metrics row), so the network's scores lean back toward the
    unweighted posterior; ``only``: adjust that class alone (e.g. ``thin cloud``). The bias
    commutes with the upsampling, so this is exactly a per-class shift of the logits. Scored
    like a run, under the key ``NAME-adjTAU[-ONLY]-sSEED``."""
    import torch

    from cloudcps.train.pseudo import balanced_class_weights

    run_dir = WORK / "runs" / f"{name}-s{seed}"
    state = torch.load(run_dir / "latest.pt", weights_only=True, map_location="cpu")
    first = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[0])
    classes = list(first["classes"])
    w = balanced_class_weights(torch.tensor(first["labeled_share"]))
    shift = tau * torch.log(w / w[0])
    if only is not None:
        shift = shift * torch.tensor([float(c == only) for c in classes])
    for net in state["nets"]:
        net["segmentation_head.0.bias"] = net["segmentation_head.0.bias"] - shift
    tag = f"adj{tau:g}" + (f"-{only.split()[0]}" if only else "")
    model = WORK / "probe" / f"{name}-{tag}-s{seed}.pt"
    model.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, model)
    out: dict[str, Any] = {
        "settings": {"adjusted": name, "tau": tau, "only": only, "shift": shift.tolist()},
        "seed": seed,
        "final": evalsets.headline(evalsets.score_model(model)),
        **extras(model),
    }
    results_path = WORK / "results.json"
    results = json.loads(results_path.read_text())
    results[f"{name}-{tag}-s{seed}"] = out
    results_path.write_text(json.dumps(results, indent=1))
    return out


def ensemble(keys: list[str], name: str) -> dict[str, Any]:
    """Two (or more) finished supervised runs as one model: their networks in one checkpoint,
    which ``cloudcps predict`` averages (softmax mean, as for a CPS pair's ``--nets both``), at
    the cost of one forward pass per network. Scored like a run, under the key ``NAME``."""
    import torch

    states = [torch.load(model_of(k), weights_only=True, map_location="cpu") for k in keys]
    specs = {json.dumps(st["model"], sort_keys=True) for st in states}
    if len(specs) != 1:
        raise SystemExit(f"ensemble: {', '.join(keys)} are not the same network")
    first = states[0]
    skip = ("nets", "train_nets", "optimizer", "scheduler", "scaler", "rng", "policy")  # training
    state = {k: v for k, v in first.items() if k not in skip}
    state["nets"] = [net for st in states for net in st["nets"]]
    model = WORK / "probe" / f"{name}.pt"
    model.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, model)
    out: dict[str, Any] = {
        "settings": {"ensemble": keys},
        "final": evalsets.headline(evalsets.score_model(model, nets="both")),
        "clear": evalsets.clear_ground(evalsets.model_predictor(model, nets="both")),
        "window": evalsets.window_checks(model, nets="both"),
    }
    results_path = WORK / "results.json"
    results = json.loads(results_path.read_text())
    results[name] = out
    results_path.write_text(json.dumps(results, indent=1))
    return out


def patch_pictures(models: list[str], out: Path, patches: tuple[str, ...] = FAR_PATCHES) -> None:
    """The L8 Biome val patches over the clear-ground bar: image, label, and each model's mask
    (results keys, or ``ukis``), with the labelled cloud's 10 px margin outlined."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    import rasterio
    from peers import ukis_file

    # clear, thick, thin, shadow, and grey for unlabelled
    colours = np.array([[0.2, 0.6, 0.2], [1, 1, 1], [0.6, 0.8, 1], [0.3, 0, 0.5], [0.5, 0.5, 0.5]])

    def ukis(img: Path) -> Any:
        u = ukis_file(img)
        return np.select([u == 1, u == 2], [1, 3], 0)

    fns = {m: ukis if m == "ukis" else evalsets.model_predictor(model_of(m)) for m in models}
    n = len(patches)
    fig, ax = plt.subplots(n, 2 + len(models), figsize=(2.6 * (2 + len(models)), 2.7 * n))
    ax = np.atleast_2d(ax)
    for i, name in enumerate(patches):
        img = evalsets.SHARED / "l8biome" / "val" / "images" / f"{name}.tif"
        if not img.exists():
            img = evalsets.SHARED / "l8biome" / "train" / "images" / f"{name}.tif"
        with rasterio.open(img) as src:
            rgb = np.clip((np.moveaxis(src.read([1, 2, 3]), 0, -1) / 12000.0) ** 0.5, 0, 1)
        ref = evalsets.l8_classes(img.parent.parent / "masks" / img.name)
        margin = ~evalsets.far_from_cloud(ref) & (ref == 0)
        panels = [rgb, colours[np.where(ref > 3, 4, ref)]]
        for fn in fns.values():
            pred = fn(img)
            panels.append(colours[np.where(pred > 3, 4, pred)])
        titles = [name, "label", *models]
        for j, (pic, title) in enumerate(zip(panels, titles, strict=True)):
            ax[i, j].imshow(pic)
            if j >= 1:
                ax[i, j].contour(margin, levels=[0.5], colors="red", linewidths=0.6)
            ax[i, j].set_title(title, fontsize=8)
            ax[i, j].axis("off")
    fig.suptitle(
        "green clear, white thick, light blue thin, purple shadow; red: clear within 10 px "
        "(300 m) of labelled cloud",
        fontsize=8,
    )
    fig.tight_layout()
    fig.savefig(out, dpi=70)


def curve_pictures(key: str, out: Path) -> None:
    """A long run's learning curves (``--curve-every``): every val set's headline, and the
    false cloud on clear ground (per val patch, all and far from labelled cloud; the desert)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curve = json.loads((WORK / "results.json").read_text())[key]["curve"]
    its = [p["iter"] for p in curve]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for col in ("l8-4 mIoU", "l8-3 mIoU", "l8 shadow", "ocn cloud", "scr-4 mIoU", "scr thin"):
        a.plot(its, [p["final"][col] for p in curve], marker="o", label=col)
    a.set_xlabel("iteration")
    a.set_ylabel("IoU %")
    a.set_title(f"{key}: val sets (ocn cloud at the 256 px contract window)", fontsize=9)
    a.legend(fontsize=7)
    for patch in FAR_PATCHES:
        short = patch.split("_")[0]
        rows = [p["clear"]["l8 val clear patches"][patch] for p in curve]
        (line,) = b.plot(its, [r["false_cloud"] for r in rows], marker="o", label=short)
        far = [r.get("false_cloud_far") for r in rows]
        if all(v is not None for v in far):
            b.plot(its, far, ls="--", color=line.get_color(), label=f"{short}, > 10 px")
    b.plot(its, [p["clear"]["desert outside"] for p in curve], marker="s", label="desert")
    b.axhline(10, color="grey", lw=0.5)
    b.set_xlabel("iteration")
    b.set_ylabel("% of clear pixels called cloud")
    b.set_title("false cloud on clear ground (bar: 10 %)", fontsize=9)
    b.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=80)


def held_out_table() -> str:
    """The leave-them-out pair: % of each held-out Barren patch's clear pixels called cloud (in
    brackets: of those > 10 px from labelled cloud), the floors beside (``ablate.py heldout``)."""
    import statistics

    results = json.loads((WORK / "results.json").read_text())
    lines = [
        "| model | seeds | " + " | ".join(HOLDOUT) + " |",
        "|---|---|" + "---|" * len(HOLDOUT),
    ]
    for label, rec in held_out_floors().items():
        cells = [f"{rec[p]['false_cloud']:.1f} ({rec[p]['false_cloud_far']:.1f})" for p in HOLDOUT]
        lines.append(f"| {label} | 1 | " + " | ".join(cells) + " |")
    for name, rs in by_run(results).items():
        rs = [r for r in rs if "held_out" in r]
        if not rs:
            continue
        cells = []
        for p in HOLDOUT:
            v = [r["held_out"][p]["false_cloud"] for r in rs]
            sd = f" ± {statistics.stdev(v):.1f}" if len(v) > 1 else ""
            far = [r["held_out"][p].get("false_cloud_far") for r in rs]
            far_cell = f" ({statistics.mean(far):.1f})" if None not in far else ""
            cells.append(f"{statistics.mean(v):.1f}{sd}{far_cell}")
        lines.append(f"| {name} | {len(rs)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# the shipping gate (issue 22: never worse than the shipped model on a shared val set or on
# clear ground), at the shipped model's 1024 px window
GATE_HIGHER = ("l8-4 mIoU", "l8-3 mIoU", "ocn cloud", "scr-4 mIoU", "scr-3 mIoU")
GATE_LOWER = ("desert outside", "s2 clear", *PATCHES)
INFO = ("l8 cloud", "l8 shadow", "scr thin", "scr shadow")  # per class: reported, not gated


def at_shipped_window(key: str) -> dict[str, Any]:
    """A result's model scored as it would ship: every val set and the clear ground at 1024 px
    windows (cached in the result as ``at1024``)."""
    results = json.loads((WORK / "results.json").read_text())
    if "at1024" in results.get(key, {}):
        return dict(results[key]["at1024"])
    model = model_of(key)
    nets = "both" if "ensemble" in results.get(key, {}).get("settings", {}) else "1"
    rec = {
        "final": evalsets.headline(evalsets.score_model(model, nets, tile_size=1024)),
        "clear": evalsets.clear_ground(evalsets.model_predictor(model, nets, tile_size=1024)),
    }
    results = json.loads((WORK / "results.json").read_text())  # runs may have finished
    results.setdefault(key, {})["at1024"] = rec
    (WORK / "results.json").write_text(json.dumps(results, indent=1))
    return rec


def _gate_values(rec: dict[str, Any]) -> dict[str, float | None]:
    c = rec["clear"]
    out: dict[str, float | None] = dict(rec["final"])
    out["desert outside"] = c.get("desert outside")
    out["s2 clear"] = c.get("s2 clear")
    for p in PATCHES:
        out[p] = c["l8 val clear patches"].get(p, {}).get("false_cloud")
    return out


def ship_check(keys: list[str]) -> str:
    """Each candidate against the shipped model, column by column at 1024 px windows: the
    columns that decide (val sets' mIoU and On Cloud N's cloud IoU may not fall; false cloud on
    clear ground may not rise) and the per-class ones beside them."""
    shipped = shipped_record()
    base = _gate_values(shipped)
    cols = [*GATE_HIGHER, *GATE_LOWER, *INFO]
    names = [c if c not in PATCHES else f"fc {c.split('_')[0]}" for c in cols]
    lines = [
        "| model | " + " | ".join(names) + " | ships? |",
        "|---|" + "---|" * (len(cols) + 1),
        f"| {shipped['label']} | " + " | ".join(_fmt(base[c]) for c in cols) + " | (today) |",
    ]
    for key in keys:
        v = _gate_values(at_shipped_window(key))
        worse = [
            c
            for c in cols
            if v[c] is not None
            and base[c] is not None
            and ((c in GATE_HIGHER and v[c] < base[c]) or (c in GATE_LOWER and v[c] > base[c]))  # type: ignore[operator]
        ]
        cells = [_fmt(v[c]) + (" **x**" if c in worse else "") for c in cols]
        verdict = "yes" if not worse else "no"
        lines.append(f"| {key} | " + " | ".join(cells) + f" | {verdict} |")
    return "\n".join(lines)


def stroke_table(keys: list[str], min_px: int = 1000) -> str:
    """Where the CloudSEN12 scribbles' strokes go, per image and labelled class (at least
    ``min_px`` pixels): the share predicted as each class at 1024 px windows. Each key is a
    results key (its run's latest.pt) or ``shipped`` (the packaged starter). The scribbles'
    per-class columns rest on a few strokes (thin cloud: one image), so this says whose verdict
    a column is."""
    import numpy as np

    from cloudcps.modelfiles import default_model_path

    refs = evalsets.references()["scr"]
    pairs = evalsets.val_sets()["scr"]
    classes = evalsets.CLASSES
    lines = [
        "| model | image | labelled | pixels | " + " / ".join(classes) + " |",
        "|---|---|---|---|---|",
    ]
    for key in keys:
        model = default_model_path() if key == "shipped" else WORK / "runs" / key / "latest.pt"
        predict = evalsets.model_predictor(model, tile_size=1024)
        for (img, _), ref in zip(pairs, refs, strict=True):
            pred = predict(img)
            for c, name in enumerate(classes):
                m = ref == c
                n = int(m.sum())
                if n < min_px:
                    continue
                share = np.bincount(pred[m], minlength=len(classes)) / n
                cells = " / ".join(f"{x:.2f}" for x in share)
                lines.append(f"| {key} | {img.stem} | {name} | {n} | {cells} |")
    return "\n".join(lines)


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    what = ["run", "adjust", "table", "levers", "heldout", "floors", "extras", "reclear"]
    what += ["patches", "curves", "shipcheck", "ensemble", "recal", "strokes"]
    ap.add_argument("what", choices=what)
    ap.add_argument("name", nargs="?")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--data", default="l8ocn")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--names")
    ap.add_argument("--tau", type=float, default=1.0, help="adjust: the logit shift's scale")
    ap.add_argument("--only", help="adjust: shift this class alone (e.g. 'thin cloud')")
    ap.add_argument(
        "--curve-every", type=int, default=0, help="score every val set every N iterations"
    )
    args = ap.parse_args()
    import torch

    torch.set_num_threads(bench_threads())
    if args.what == "run":
        overrides = dict(kv.split("=", 1) for kv in args.set)
        out = run(
            args.name,
            {k: parse_value(v) for k, v in overrides.items()},
            args.data,
            args.seed,
            args.curve_every,
        )
        print(args.name, json.dumps(out["final"]), "curve", out["curve_l8_val4"], flush=True)
    elif args.what == "levers":
        print(lever_table(args.names.split(",") if args.names else None))
    elif args.what == "adjust":
        out = adjust(args.name, args.seed, args.tau, args.only)
        print(args.name, json.dumps(out["final"]), json.dumps(out["clear"]), flush=True)
    elif args.what == "heldout":
        print(held_out_table())
    elif args.what == "patches":  # NAME: comma-separated results keys (or ukis)
        if args.names:  # other L8 Biome patches, e.g. the held-out Barren ones
            patch_pictures(
                args.name.split(","),
                ROOT / "docs" / "img" / "held_out_patches.png",
                tuple(args.names.split(",")),
            )
        else:
            patch_pictures(args.name.split(","), ROOT / "docs" / "img" / "clear_ground_patches.png")
    elif args.what == "curves":  # NAME: a results key, e.g. v4-paste-long-s0
        curve_pictures(args.name, ROOT / "docs" / "img" / f"curves_{args.name}.png")
    elif args.what == "recal":  # NAME: a results key; --names: the new run's name
        out = recalibrated(args.name, args.names)
        print(args.names, json.dumps(out["final"]), flush=True)
    elif args.what == "reclear":
        reclear(args.name or "")
    elif args.what == "ensemble":  # NAME: comma-separated results keys; --names: its key
        out = ensemble(args.name.split(","), args.names)
        print(args.names, json.dumps(out["final"]), flush=True)
    elif args.what == "shipcheck":  # NAME: comma-separated results keys
        print(ship_check(args.name.split(",")))
    elif args.what == "strokes":  # NAME: comma-separated results keys (or shipped)
        print(stroke_table(args.name.split(",")))
    elif args.what == "extras":
        add_extras()
    elif args.what == "floors":
        print(
            json.dumps(
                {k: evalsets.headline(v["scores"]) for k, v in evalsets.floors(WORK).items()}
            )
        )
    else:
        print(table(args.names.split(",") if args.names else None))


if __name__ == "__main__":
    main()
