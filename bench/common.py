"""Helpers shared by the benchmarks: big generated scenes, timing and peak memory of a child."""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_IN_CHILD = False


def bench_threads() -> int:
    """CPU threads of a benchmark process: ``CLOUDCPS_THREADS``, else ``OMP_NUM_THREADS``, else 2.

    ``torch.set_num_threads`` overrides ``OMP_NUM_THREADS``; reading it here keeps the usual way
    of running two trainings side by side (``OMP_NUM_THREADS=1`` each) from being raised to two
    threads each, which slows both about 4x on 2 cores (measured: 5.2 s instead of 1.3 s an
    iteration of DeepLabV3+ Lite2 on 8 x 128 px crops).
    """
    for var in ("CLOUDCPS_THREADS", "OMP_NUM_THREADS"):
        value = os.environ.get(var, "").strip()
        if value:
            return max(1, int(value))
    return 2


def write_big_scene(path: Path, size: int, seed: int = 0, nodata_border: int = 0) -> Path:
    """Write a ``size`` x ``size`` 4-band uint16 GeoTIFF strip by strip (never whole in memory).

    The content is smooth noise with bright blobs (cloud-like) so that encoders see texture;
    the values are reflectance x 10000 as in Sentinel-2 L1C.
    """
    if path.exists():
        return path
    if not _IN_CHILD:
        # Generate in a child so this (measuring) process stays small: a forked child's peak
        # RSS starts from its parent's.
        subprocess.run(
            [sys.executable, __file__, str(path), str(size), str(seed), str(nodata_border)],
            check=True,
        )
        return path
    import numpy as np
    import rasterio
    from affine import Affine
    from rasterio.windows import Window

    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    coarse = rng.random((4, size // 64 + 2, size // 64 + 2)).astype(np.float32)
    clouds = rng.random((size // 256 + 2, size // 256 + 2)).astype(np.float32)
    profile = {
        "driver": "GTiff",
        "width": size,
        "height": size,
        "count": 4,
        "dtype": "uint16",
        "crs": "EPSG:32633",
        "transform": Affine(10.0, 0, 300000.0, 0, -10.0, 5000000.0),
        "nodata": 0,
        "tiled": True,
        "blockxsize": 512,
        "blockysize": 512,
        "compress": "deflate",
        "predictor": 2,
        "zlevel": 1,
    }
    tmp = path.with_suffix(".part.tif")
    strip = 512
    cols = np.arange(size) / 64.0
    with rasterio.open(tmp, "w", **profile) as dst:
        for r0 in range(0, size, strip):
            h = min(strip, size - r0)
            rows = (np.arange(r0, r0 + h) / 64.0)[:, None]
            ri, ci = rows.astype(int), cols.astype(int)[None, :]
            base = coarse[:, ri, ci] * 2500 + 500
            cl = clouds[(rows / 4).astype(int), (cols / 4).astype(int)[None, :]]
            bright = np.clip((cl - 0.7) * 20000, 0, 6000)
            noise = rng.integers(0, 200, size=(4, h, size))
            data = (base + bright + noise).astype(np.uint16)
            if nodata_border:
                data[:, :, :nodata_border] = 0
            dst.write(data, window=Window(0, r0, size, h))
    tmp.rename(path)
    return path


def run_measured(
    cmd: list[str], env: dict[str, str] | None = None, allow_failure: bool = False
) -> tuple[float, float]:
    """Run ``cmd``; return (wall seconds, peak RSS of the child in MB).

    With ``allow_failure`` a failed command (e.g. killed for memory) gives wall = NaN.
    """
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env={**os.environ, **(env or {})})
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        if not allow_failure:
            raise SystemExit(f"command failed ({code}): {' '.join(cmd)}")
        print(f"command failed with exit code {code}: {' '.join(cmd[:4])} ...", flush=True)
        return float("nan"), usage.ru_maxrss / 1024.0
    return wall, usage.ru_maxrss / 1024.0


def median(xs: list[float]) -> float:
    return float(statistics.median(xs))


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    py = sys.version.split()[0]
    return f"{cpu}, {os.cpu_count()} cores, {gpu}, Python {py}, torch {torch.__version__}"


if __name__ == "__main__":
    _IN_CHILD = True
    write_big_scene(Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
