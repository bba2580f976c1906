"""Shared fixtures: small GeoTIFFs with a real CRS and transform, and the shared data folder."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
from affine import Affine

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a stray hub call fails at once instead of hanging
os.environ.setdefault("OMP_NUM_THREADS", "2")
# exported ONNX graphs of the tests' checkpoints go to a throw-away cache, not the user's
os.environ.setdefault("CLOUDCPS_CACHE", tempfile.mkdtemp(prefix="cloudcps-test-cache-"))

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def shared_data(*parts: str) -> Path:
    """A path under ../shared/data, or skip the test when that folder is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real data {path} is absent (../shared/data is not beside the checkout)")
    return path


def write_raster(
    path: Path,
    data: np.ndarray,
    *,
    crs: str | None = "EPSG:32633",
    transform: Affine | None = None,
    nodata: float | None = None,
) -> Path:
    """Write ``data`` (bands, H, W) or (H, W) as a GeoTIFF."""
    if data.ndim == 2:
        data = data[None]
    path.parent.mkdir(parents=True, exist_ok=True)
    profile = {
        "driver": "GTiff",
        "width": data.shape[2],
        "height": data.shape[1],
        "count": data.shape[0],
        "dtype": data.dtype.name,
        "transform": transform or Affine(30.0, 0.0, 500000.0, 0.0, -30.0, 5000000.0),
        "nodata": nodata,
    }
    if crs is not None:
        profile["crs"] = crs
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return path


SceneFactory = Callable[..., tuple[Path, Path]]


def scene_pair(
    root: Path,
    name: str = "scene",
    height: int = 300,
    width: int = 340,
    seed: int = 0,
    bands: int = 4,
    nodata_border: int = 0,
    crs: str | None = "EPSG:32633",
    x0: float = 500000.0,
) -> tuple[Path, Path]:
    """Write ``root/scenes/NAME.tif`` (4-band uint16) and ``root/labels/NAME.tif``.

    The label is coded like L8 Biome (128 clear, 255 thick, 192 thin, 64 shadow) in bands of
    rows, so every class is present, and the image is brighter where clouds are.
    """
    rng = np.random.default_rng(seed)
    codes = np.full((height, width), 128, np.uint8)
    codes[: height // 4] = 255
    codes[height // 4 : height // 3] = 192
    codes[height // 3 : height // 2, : width // 2] = 64
    base = rng.integers(300, 1500, size=(bands, height, width)).astype(np.uint16)
    base[:, codes == 255] += 5000
    base[:, codes == 192] += 2000
    base[:, codes == 64] //= 3
    nodata = None
    if nodata_border:
        base[:, :nodata_border] = 0
        base[:, :, :nodata_border] = 0
        nodata = 0
    tf = Affine(30.0, 0.0, x0, 0.0, -30.0, 5000000.0)
    img = write_raster(root / "scenes" / f"{name}.tif", base, crs=crs, transform=tf, nodata=nodata)
    lab = write_raster(root / "labels" / f"{name}.tif", codes, crs=crs, transform=tf)
    return img, lab


@pytest.fixture
def make_scene(tmp_path: Path) -> SceneFactory:
    """Write a scene and its L8-Biome-coded label raster under tmp_path (see scene_pair)."""

    def factory(name: str = "scene", **kwargs: object) -> tuple[Path, Path]:
        return scene_pair(tmp_path, name, **kwargs)  # type: ignore[arg-type]

    return factory


L8_MAP = {128: 0, 255: 1, 192: 2, 64: 3}


@pytest.fixture(scope="session")
def tiny_tiles(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small tile folder: 3 scenes of 128x128 in 64 px tiles, one scene held out for val."""
    from cloudcps.tiling import TileOptions, tile_scenes

    root = tmp_path_factory.mktemp("tiny")
    scenes = [
        scene_pair(root, f"s{i}", 128, 128, seed=i, x0=500000.0 + 1e4 * i)[0] for i in range(3)
    ]
    opts = TileOptions(
        tile_size=64,
        label_dirs=(root / "labels",),
        label_map=L8_MAP,
        labeled_fraction=0.5,
        val=("s2",),
        image_format="png",
    )
    tile_scenes(scenes, root / "tiles", opts)
    return root / "tiles"


@pytest.fixture(scope="session")
def tiny_run(tiny_tiles: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CPS run of 2 iterations on ``tiny_tiles`` with a small random encoder."""
    from cloudcps.train import Trainer
    from cloudcps.train.config import TrainConfig

    out = tmp_path_factory.mktemp("run") / "R"
    cfg = TrainConfig(
        data=str(tiny_tiles),
        out=str(out),
        iters=2,
        eval_every=2,
        encoder="resnet18",
        encoder_weights="none",
        crop=64,
        batch_size=2,
        device="cpu",
        workers=0,
    )
    Trainer(cfg).fit()
    return out


def cli_in_small_fs(
    mount: Path, size_kb: int, args: list[str], setup: str = "", timeout: float = 300
) -> tuple[int, str, str]:
    """Run ``cloudcps ARGS`` in a private mount namespace where ``mount`` is a tmpfs of
    ``size_kb`` KiB, so a write there fails with a real ENOSPC from the kernel (not an injected
    errno). ``setup`` is shell run first inside the namespace (e.g. ``cp scene.tif MOUNT/``).
    After the command, stdout ends with a line ``--- left:`` and the listing of ``mount`` (hidden
    files included), since the tmpfs vanishes with the namespace. Skips where the machine allows
    no private mounts. Returns (exit code, stdout, stderr)."""
    import shlex
    import shutil
    import subprocess
    import sys

    if shutil.which("unshare") is None:
        pytest.skip("unshare is not installed: cannot make a small file system to fill up")
    probe = subprocess.run(
        ["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /tmp"],
        capture_output=True,
        text=True,
    )
    if probe.returncode != 0:
        pytest.skip(f"no private tmpfs mounts here ({probe.stderr.strip()[:80]})")
    mount.mkdir(parents=True, exist_ok=True)
    cmd = " ".join(shlex.quote(str(a)) for a in [sys.executable, "-m", "cloudcps.cli.main", *args])
    m = shlex.quote(str(mount))
    script = (
        f"mount -t tmpfs -o size={size_kb}k tmpfs {m} || exit 99\n{setup}\n{cmd}\nrc=$?\n"
        f"echo '--- left:'; ls -A1R {m}\nexit $rc\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    p = subprocess.run(
        ["unshare", "-rm", "sh", "-c", script],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )
    if p.returncode == 99:
        pytest.skip(f"could not mount a tmpfs at {mount}: {p.stderr.strip()[:80]}")
    return p.returncode, p.stdout, p.stderr


LMAP = ",".join(f"{k}:{v}" for k, v in L8_MAP.items())


def run(*args: Any) -> Any:
    """Run the real command line in-process; the click Result."""
    from click.testing import CliRunner

    from cloudcps.cli.main import cli

    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture
def scenes(tmp_path: Path) -> Path:
    """tmp/data/scenes/{a,b}.tif and tmp/data/labels/{a,b}.tif (L8 Biome codes)."""
    scene_pair(tmp_path / "data", "a", 96, 96)
    scene_pair(tmp_path / "data", "b", 96, 96, seed=1, x0=600000.0)
    return tmp_path / "data"


def tile_args(data: Path, out: Path, *extra: str) -> list[Any]:
    return [
        "tile",
        data / "scenes" / "a.tif",
        data / "scenes" / "b.tif",
        "--label-dir",
        data / "labels",
        "--label-map",
        LMAP,
        "--tile-size",
        "64",
        "--workers",
        "1",
        "--out",
        out,
        *extra,
    ]


@pytest.fixture
def tiles(scenes: Path, tmp_path: Path) -> Path:
    out = tmp_path / "tiles"
    r = run(*tile_args(scenes, out, "--val", "b"))
    assert r.exit_code == 0, r.output
    return out
