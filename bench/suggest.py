"""Simulated labelling rounds on L8 Biome: does ``cloudcps suggest`` pick better tiles than chance?

    python bench/suggest.py run [--seeds 0,1] [--rounds 3] [--start 4] [--add 4]
                                [--strategies suggest,random,entropy] [--iters 1000]
                                [--batch-size 8] [--crop 128] [--mode cps] [--init-previous]
                                [--threads N] [--work bench/out/suggest]
    python bench/suggest.py table [--work bench/out/suggest]

The pool is the 23 L8 Biome train patches (256 px, each its own scene), tiled once with every
label (``--labeled-fraction 1``); the 8 val patches are the validation scenes. Per seed, ``--start``
pool tiles are drawn at random as the first labelled set (the same for every strategy); the other
pool tiles are the unlabelled split. Each round trains a model on the tile folder (the starter's
CPU recipe cut to ``--iters``: batch 8 of 128 px crops, lr 0.005, ``--class-weights auto``,
``--bn-recalibrate 50``; from ImageNet every round, or from the previous round's model with
``--init-previous``, as the README's loop does), scores it on the val patches (4 classes, and 3
with thick + thin merged into cloud), and lets the strategy move ``--add`` unlabelled tiles to the
labelled split (the person's "correction" is the true label, already in the tile folder):

* ``suggest``: ``cloudcps suggest --count ADD`` (disagreement of the two CPS networks, or entropy
  for a supervised run; weighted toward rare classes; spread out);
* ``random``: a seeded random choice;
* ``entropy``: the tiles of highest mean normalised entropy of network 1, nothing else.

Each round's numbers are appended to ``WORK/results.json`` as soon as they exist, so a stopped
run resumes where it was (a round whose training did not finish is trained again). ``table``
prints the mean over seeds per strategy and round, with the labelled pixels.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
L8 = SHARED / "l8biome"
LABEL_MAP = "128:0,255:1,192:2,64:3"
TILE_ARGS = ["--stretch", "0:12000", "--gamma", "2", "--tile-size", "256", "--format", "png"]
STRATEGIES = ("suggest", "random", "entropy")
CLASSES4 = ("clear", "thick cloud", "thin cloud", "cloud shadow")


def cloudcps(*args: str, threads: int | None = None) -> None:
    exe = Path(sys.executable).with_name("cloudcps")
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    subprocess.run([str(exe), "-q", *map(str, args)], check=True, env=env)


def prepare(work: Path) -> Path:
    """Tile the pool and the val patches once (every label kept)."""
    tiles = work / "tiles"
    if (tiles / "manifest.json").is_file():
        return tiles
    if not L8.is_dir():
        raise SystemExit(f"{L8} is absent: the benchmark needs ../shared/data/l8biome")
    train = sorted((L8 / "train" / "images").glob("*.tif"))
    val = sorted((L8 / "val" / "images").glob("*.tif"))
    args: list[str] = [*map(str, train), *map(str, val)]
    args += ["--label-dir", str(L8 / "train" / "masks"), "--label-dir", str(L8 / "val" / "masks")]
    for v in val:
        args += ["--val", str(v)]
    args += ["--label-map", LABEL_MAP, *TILE_ARGS, "--labeled-fraction", "1"]
    cloudcps("tile", *args, "--out", str(tiles))
    return tiles


def load_results(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    data = json.loads(path.read_text())
    return list(data.get("rounds", []))


def save_results(path: Path, rounds: list[dict[str, Any]], settings: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"settings": settings, "rounds": rounds}, indent=1) + "\n")
    os.replace(tmp, path)


def round_folder(tiles: Path, dest: Path, labeled: list[str], unlabeled: list[str]) -> Path:
    """A copy of the tile folder whose labelled and unlabelled splits are the round's."""
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(tiles, dest)
    (dest / "splits" / "labeled.txt").write_text("".join(f"{t}\n" for t in labeled))
    (dest / "splits" / "unlabeled.txt").write_text("".join(f"{t}\n" for t in unlabeled))
    return dest


def train(data: Path, run: Path, args: argparse.Namespace, seed: int, init: Path | None) -> None:
    if (run / "done").is_file():
        return
    if run.exists():
        shutil.rmtree(run)
    cmd = ["train", "--data", data, "--out", run, "--mode", args.mode, "--iters", args.iters]
    cmd += ["--batch-size", args.batch_size, "--crop", args.crop, "--lr", "0.005"]
    cmd += ["--class-weights", "auto", "--bn-recalibrate", "50", "--seed", seed]
    cmd += ["--eval-every", args.iters, "--device", "cpu"]
    if init is not None:
        cmd += ["--init", init]
    cloudcps(*map(str, cmd), threads=args.threads)
    (run / "done").write_text("")


def evaluate(run: Path, data: Path, out: Path, threads: int | None) -> dict[str, Any]:
    scores: dict[str, Any] = {}
    for name, merge in (("4", []), ("3", ["--merge", "1,2:1", "--merge", "3:2"])):
        rep = out / f"eval{name}"
        if not (rep / "report.json").is_file():
            cloudcps("evaluate", "--model", run, "--data", data, "--split", "val", *merge,
                     "--out", rep, "--overwrite", threads=threads)  # fmt: skip
        res = next(iter(json.loads((rep / "report.json").read_text())["results"].values()))
        scores[f"miou{name}"] = res["miou"]
        scores[f"iou{name}"] = dict(zip(res["classes"], res["iou"], strict=True))
    return scores


def entropy_pick(
    run: Path, data: Path, ids: list[str], count: int, threads: int | None
) -> list[str]:
    """The ``count`` tiles of highest mean normalised entropy of network 1 (no weights, no
    spread): the plain baseline."""
    from cloudcps.predict.backends import load_model
    from cloudcps.suggest import predict_tile, read_tile, tile_predictor
    from cloudcps.train.data import TileFolder

    folder = TileFolder(data)
    predictor = tile_predictor(
        load_model(run, nets="1", threads=threads), folder.contract.tile_size
    )
    scored = []
    for tid in ids:
        s = predict_tile(predictor, *read_tile(folder, tid))
        u = s.uncertainty[s.valid].mean() / 255.0 if s.valid.any() else 0.0
        scored.append((-round(float(u), 9), tid))
    return [tid for _, tid in sorted(scored)[:count]]


def choose(
    strategy: str,
    run: Path,
    data: Path,
    unlabeled: list[str],
    args: argparse.Namespace,
    key: int,
    out: Path,
) -> list[str]:
    if strategy == "random":
        return random.Random(key).sample(sorted(unlabeled), min(args.add, len(unlabeled)))
    if strategy == "entropy":
        return entropy_pick(run, data, unlabeled, args.add, args.threads)
    if out.exists():
        shutil.rmtree(out)
    extra = ["--threads", str(args.threads)] if args.threads else []
    cloudcps("suggest", "--model", run, "--data", data, "--count", args.add, "--out", out, *extra)
    with (out / "suggestions.csv").open() as f:
        return [row["tile"] for row in csv.DictReader(f)]


def labelled_pixels(tiles: dict[str, Any], ids: list[str]) -> int:
    return int(sum(sum(tiles[t]["class_counts"] or []) for t in ids))


def run_all(args: argparse.Namespace) -> None:
    work: Path = args.work
    work.mkdir(parents=True, exist_ok=True)
    tiles = prepare(work)
    manifest = json.loads((tiles / "manifest.json").read_text())
    by_id = {t["id"]: t for t in manifest["tiles"]}
    pool = sorted((tiles / "splits" / "labeled.txt").read_text().split())  # all train tiles
    results_path = work / "results.json"
    rounds = load_results(results_path)
    done = {(r["seed"], r["strategy"], r["round"]): r for r in rounds}
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    settings.pop("func", None)
    for seed in args.seeds:
        start = sorted(random.Random(seed).sample(pool, args.start))
        for strategy in args.strategies:
            labeled = list(start)
            prev: Path | None = None
            for r in range(args.rounds + 1):
                base = work / f"seed{seed}" / strategy / f"round{r}"
                # round 0 is the same for every strategy of a seed: trained once
                shared = work / f"seed{seed}" / "round0" if r == 0 else base
                unlabeled = [t for t in pool if t not in labeled]
                run = shared / "run"
                record = done.get((seed, strategy, r))
                if record is None:
                    data = shared / "tiles"
                    if not (run / "done").is_file():
                        round_folder(tiles, data, labeled, unlabeled)
                    init = prev if args.init_previous else None
                    train(data, run, args, seed, init)
                    record = {
                        "seed": seed,
                        "strategy": strategy,
                        "round": r,
                        "labeled_tiles": len(labeled),
                        "labeled_pixels": labelled_pixels(by_id, labeled),
                        "labeled": list(labeled),
                        **evaluate(run, data, shared, args.threads),
                    }
                    if r < args.rounds:
                        key = seed * 1000 + r
                        out = base / "suggest"
                        record["added"] = choose(strategy, run, data, unlabeled, args, key, out)
                    rounds.append(record)
                    done[(seed, strategy, r)] = record
                    save_results(results_path, rounds, settings)
                    print(f"seed {seed} {strategy} round {r}: mIoU4 {record['miou4']:.3f} "
                          f"mIoU3 {record['miou3']:.3f}", flush=True)  # fmt: skip
                labeled = sorted(set(labeled) | set(record.get("added", [])))
                prev = run


def _mean(xs: list[float | None]) -> float | None:
    vals = [x for x in xs if x is not None]
    return sum(vals) / len(vals) if vals else None


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def table(args: argparse.Namespace) -> None:
    data = json.loads((args.work / "results.json").read_text())
    rounds = data["rounds"]
    seeds = sorted({r["seed"] for r in rounds})
    print(f"settings: {json.dumps(data['settings'])}")
    print(f"seeds: {seeds} (mean over seeds; IoU in %)\n")
    head = "| strategy | round | labelled tiles | labelled px | mIoU 4 | mIoU 3 | "
    head += " | ".join(f"{c}" for c in CLASSES4) + " | seeds |"
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for r in rounds:
        groups.setdefault((r["strategy"], r["round"]), []).append(r)
    for (strategy, rnd), rs in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1])):
        cells = [
            strategy,
            str(rnd),
            f"{_mean([r['labeled_tiles'] for r in rs]):.0f}",
            f"{_mean([r['labeled_pixels'] for r in rs]):.0f}",
            _pct(_mean([r["miou4"] for r in rs])),
            _pct(_mean([r["miou3"] for r in rs])),
            *(_pct(_mean([r["iou4"].get(c) for r in rs])) for c in CLASSES4),
            str(len(rs)),
        ]
        print("| " + " | ".join(cells) + " |")
    last = max(r["round"] for r in rounds)
    fin = {s: _mean([r["miou4"] for r in rounds if r["strategy"] == s and r["round"] == last])
           for s in STRATEGIES}  # fmt: skip
    if fin.get("suggest") is not None and fin.get("random") is not None:
        gap = 100 * (fin["suggest"] - fin["random"])  # type: ignore[operator]
        print(f"\nafter round {last}: suggest - random = {gap:+.1f} mIoU (4 classes; goal >= +3)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run (or resume) the simulated rounds")
    r.add_argument("--seeds", default="0,1", type=lambda s: [int(x) for x in s.split(",")])
    r.add_argument("--rounds", type=int, default=3)
    r.add_argument("--start", type=int, default=4)
    r.add_argument("--add", type=int, default=4)
    r.add_argument("--strategies", default=",".join(STRATEGIES), type=lambda s: s.split(","))
    r.add_argument("--iters", type=int, default=1000)
    r.add_argument("--batch-size", type=int, default=8)
    r.add_argument("--crop", type=int, default=128)
    r.add_argument("--mode", choices=["cps", "supervised"], default="cps")
    r.add_argument("--init-previous", action="store_true")
    r.add_argument("--threads", type=int, default=None)
    r.add_argument("--work", type=Path, default=ROOT / "bench" / "out" / "suggest")
    t = sub.add_parser("table", help="print the results as a Markdown table")
    t.add_argument("--work", type=Path, default=ROOT / "bench" / "out" / "suggest")
    args = ap.parse_args()
    bad = [s for s in getattr(args, "strategies", []) if s not in STRATEGIES]
    if bad:
        raise SystemExit(f"--strategies: unknown {bad}; choose from {', '.join(STRATEGIES)}")
    if args.cmd == "run":
        run_all(args)
    else:
        table(args)


if __name__ == "__main__":
    main()
