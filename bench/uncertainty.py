"""What ``predict --uncertainty`` adds to prediction time, on a generated scene.

    python bench/uncertainty.py [--size 2048] [--repeat 3] [--model default] [--threads N]
                                [--both] [--work /tmp/cloudcps-bench]

One process, the model loaded once (its ONNX graph exported before the first timing); runs
alternate without and with the layer so that both see the same machine load; each number is
the median of ``--repeat`` runs of :func:`cloudcps.predict.predict_scene` (reading, the
network, writing the mask and report, and the layer). ``--both`` also times ``--nets both``
(mean of the two networks) against the layer's disagreement (both networks kept apart).
Results go to ``bench/out/uncertainty.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ROOT, machine, median, write_big_scene


def _time(scene: Path, model: object, out: Path, uncertainty: bool) -> float:
    from cloudcps.predict import PredictOptions, predict_scene

    t0 = time.perf_counter()
    predict_scene(scene, model, out, PredictOptions(uncertainty=uncertainty, overwrite=True))  # type: ignore[arg-type]
    return time.perf_counter() - t0


def compare(
    scene: Path, plain: object, layered: object, work: Path, repeat: int
) -> dict[str, float]:
    off: list[float] = []
    on: list[float] = []
    _time(scene, plain, work / "warm.tif", False)  # first-run costs (graph load, caches) out
    for _ in range(repeat):
        off.append(_time(scene, plain, work / "off.tif", False))
        on.append(_time(scene, layered, work / "on.tif", True))
    m_off, m_on = median(off), median(on)
    return {
        "without_s": round(m_off, 3),
        "with_s": round(m_on, 3),
        "overhead_percent": round(100.0 * (m_on - m_off) / m_off, 1),
        "runs_without": [round(x, 3) for x in off],
        "runs_with": [round(x, 3) for x in on],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--model", default="default")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--both", action="store_true", help="also time --nets both")
    ap.add_argument("--work", type=Path, default=Path("/tmp/cloudcps-bench"))
    args = ap.parse_args()

    from cloudcps.predict.backends import load_model
    from cloudcps.predict.uncertainty import load_for_uncertainty

    args.work.mkdir(parents=True, exist_ok=True)
    scene = write_big_scene(args.work / f"scene_{args.size}.tif", args.size)
    one = load_model(args.model, nets="1", threads=args.threads)
    results: dict[str, object] = {
        "machine": machine(),
        "scene": f"{args.size}x{args.size} generated (bench/common.py)",
        "model": str(one.path),
        "threads": args.threads,
        "repeat": args.repeat,
        "one_network_entropy": compare(scene, one, one, args.work, args.repeat),
    }
    if args.both:
        both = load_model(args.model, nets="both", threads=args.threads)
        pair = load_for_uncertainty(args.model, nets="both", threads=args.threads)
        results["two_networks_disagreement"] = compare(scene, both, pair, args.work, args.repeat)
    out = ROOT / "bench" / "out" / "uncertainty.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
