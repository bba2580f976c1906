"""CPS at its defaults on the demo's recipe: does it keep the weak classes?

    python bench/demo_cps.py run --seeds 0,1 [--set pseudo_labels=aligned ...] [--name NAME]
    python bench/demo_cps.py table

Each seed generates the demo's scenes (``cloudcps demo``: 16 scenes of 1024 px, 1/16 labelled,
260 iterations of 4+4 crops of 256 px), trains the supervised baseline and CPS with the same
budget and the overrides given, and scores both on the held-out scene (per class IoU). Results:
``bench/out/demo_cps/results.json``; the table goes into docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "bench" / "out" / "demo_cps"
sys.path.insert(0, str(ROOT / "bench"))

from ablate import parse_value  # noqa: E402
from common import bench_threads  # noqa: E402


def run(name: str, seeds: list[int], overrides: dict[str, Any]) -> None:
    from cloudcps.demo import run_demo

    path = WORK / "results.json"
    for seed in seeds:
        results = json.loads(path.read_text()) if path.exists() else {}
        key = f"{name}-s{seed}"
        if key in results:
            continue
        t0 = time.perf_counter()
        res = run_demo(WORK / "runs" / key, seed=seed, overwrite=True, train_overrides=overrides)
        results = json.loads(path.read_text()) if path.exists() else {}
        results[key] = {
            "overrides": overrides,
            "seed": seed,
            "iou": res.iou,
            "seconds": time.perf_counter() - t0,
        }
        WORK.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(results, indent=1))
        print(key, json.dumps(res.iou), flush=True)


def table() -> str:
    results = json.loads((WORK / "results.json").read_text())
    groups: dict[str, list[dict[str, Any]]] = {}
    for key, r in results.items():
        groups.setdefault(key.rsplit("-s", 1)[0], []).append(r)
    cols = ["clear", "thick cloud", "thin cloud", "cloud shadow", "mIoU"]
    lines = [
        "| policy run | model | seeds | " + " | ".join(cols) + " |",
        "|---|---|---|" + "---|" * len(cols),
    ]
    for name, rs in groups.items():
        for mode in ("supervised", "cps"):
            cells = []
            for c in cols:
                v = [100 * r["iou"][mode][c] for r in rs if r["iou"][mode][c] is not None]
                m = statistics.mean(v) if v else float("nan")
                sd = f" ± {statistics.stdev(v):.1f}" if len(v) > 1 else ""
                cells.append(f"{m:.1f}{sd}")
            change = ", ".join(f"{k}={v}" for k, v in rs[0]["overrides"].items()) or "defaults"
            lines.append(f"| {name} ({change}) | {mode} | {len(rs)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=["run", "table"])
    ap.add_argument("--name", default="defaults")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(bench_threads())
    if args.what == "run":
        overrides = {k: parse_value(v) for k, v in (kv.split("=", 1) for kv in args.set)}
        run(args.name, [int(s) for s in args.seeds.split(",")], overrides)
    print(table())


if __name__ == "__main__":
    main()
