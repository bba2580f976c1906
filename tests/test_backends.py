"""Prediction backends (ONNX Runtime, PyTorch), the fast input path, archives of scenes."""

from __future__ import annotations

import itertools
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner

from cloudcps.cli.main import cli
from cloudcps.contract import DataContract, Stretch
from cloudcps.errors import InputError, OutputExistsError
from cloudcps.io import _HOST, atomic_file, remove_stale_temps
from cloudcps.modelfiles import default_model_path
from cloudcps.predict import (
    InputTransform,
    argmax_classes,
    axis_windows,
    predict_array,
)
from cloudcps.predict.backends import InferenceModel, choose_backend, load_model
from cloudcps.predict.graphs import file_sha256, onnx_graph
from cloudcps.predict.outputs import WriteBehind as _WriteBehind
from cloudcps.predict.sources import prefetch as _prefetch
from tests.conftest import scene_pair, shared_data

ROOT = Path(__file__).resolve().parents[1]


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "cloudcps.cli.main", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def _no_temps(folder: Path) -> None:
    left = [p.name for p in folder.rglob(".*tmp-*")]
    assert not left, left


# --------------------------------------------------------------------------------------------
# Backends agree
# --------------------------------------------------------------------------------------------


def test_onnx_and_torch_agree_on_a_real_scene() -> None:
    s2 = shared_data("scenes", "s2_l1c_nocloud_rgbn.tif")
    with rasterio.open(s2) as src:
        data = src.read(window=rasterio.windows.Window(600, 500, 700, 600))
    onnx = load_model("default", backend="onnx")
    torch_ = load_model("default", backend="torch", device="cpu")
    assert (onnx.backend, torch_.backend) == ("onnx", "torch")
    assert onnx.contract == torch_.contract
    c1, p1 = predict_array(data, onnx, tile_size=512, overlap=64)
    c2, p2 = predict_array(data, torch_, tile_size=512, overlap=64)
    assert np.abs(p1 - p2).max() <= 1e-3
    assert np.mean(c1 != c2) < 1e-3


def test_onnx_export_of_a_run_agrees_and_is_cached(tiny_run: Path, tmp_path: Path) -> None:
    os.environ["CLOUDCPS_CACHE"] = str(tmp_path / "cache")
    try:
        rng = np.random.default_rng(3)
        data = rng.integers(0, 4000, (4, 150, 170)).astype(np.uint16)
        for nets in ("1", "both"):
            onnx = load_model(tiny_run, nets=nets, backend="onnx")
            torch_ = load_model(tiny_run, nets=nets, backend="torch", device="cpu")
            _, p1 = predict_array(data, onnx, tile_size=64, overlap=16)
            _, p2 = predict_array(data, torch_, tile_size=64, overlap=16)
            assert np.abs(p1 - p2).max() <= 1e-3
        graphs = sorted((tmp_path / "cache" / "onnx").glob("*.onnx"))
        assert len(graphs) == 2  # one per choice of networks
        stamp = [g.stat().st_mtime_ns for g in graphs]
        load_model(tiny_run, nets="both", backend="onnx")  # cached: not exported again
        assert [g.stat().st_mtime_ns for g in graphs] == stamp
        meta = load_model(tiny_run, nets="both", backend="onnx").runner
        assert isinstance(meta.meta, dict)
        assert meta.meta["checkpoint_sha256"] == file_sha256(tiny_run / "best.pt")
        assert meta.meta["nets"] == "1,2"
    finally:
        os.environ.pop("CLOUDCPS_CACHE")


def test_shipped_graph_belongs_to_the_shipped_checkpoint() -> None:
    ckpt = default_model_path()
    graph = onnx_graph(ckpt, "1")
    assert graph == ckpt.with_suffix(".onnx")  # shipped, not exported
    model = load_model("default")
    assert isinstance(model, InferenceModel) and model.backend == "onnx"
    assert model.contract.classes == ("clear", "thick cloud", "thin cloud", "cloud shadow")
    assert model.iteration > 0


def test_onnx_prediction_never_imports_torch(tmp_path: Path) -> None:
    code = (
        "import sys, numpy as np\n"
        "from cloudcps.predict.backends import load_model\n"
        "from cloudcps.predict import predict_array\n"
        "m = load_model('default')\n"
        "c, p = predict_array(np.full((4, 100, 120), 1500, np.uint16), m)\n"
        "assert c.shape == (100, 120) and abs(p.sum(0) - 1).max() < 1e-4\n"
        "print('torch' in sys.modules, m.backend)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CLOUDCPS_CACHE": str(tmp_path)}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["False", "onnx"]


def test_backend_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    import cloudcps.predict.backends as b

    monkeypatch.setattr(b, "gpu_may_exist", lambda: False)
    assert choose_backend("auto", None) == ("onnx", "cpu")
    assert choose_backend("auto", "cpu") == ("onnx", "cpu")
    assert choose_backend("torch", None) == ("torch", "cpu")
    with pytest.raises(InputError, match="--backend onnx runs on the CPU"):
        choose_backend("onnx", "cuda")
    with pytest.raises(InputError, match="--backend"):
        choose_backend("tensorrt", None)


def test_a_broken_graph_is_a_clear_error(tiny_run: Path, tmp_path: Path) -> None:
    from cloudcps.predict.backends import OnnxRunner

    bad = tmp_path / "x.onnx"
    bad.write_bytes(b"not a graph")
    with pytest.raises(InputError, match="not a usable ONNX graph"):
        OnnxRunner(bad)


# --------------------------------------------------------------------------------------------
# The engine's fast paths
# --------------------------------------------------------------------------------------------


def _contract(gamma: float = 2.0) -> DataContract:
    return DataContract(
        ("clear", "thick cloud", "thin cloud", "cloud shadow"),
        (1, 2, 3, 4),
        Stretch("fixed", (0.0, 100.0, 50.0, 0.0), (12000.0, 9000.0, 10000.0, 1.0), gamma=gamma),
        1024,
    )


def _reference_input(contract: DataContract, data: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """What training saw: the tiler's 8-bit stretch, then /255 and the normalisation."""
    img = contract.stretch.apply(data.astype(np.float32))
    img[:, ~valid] = 0
    x = img.astype(np.float32) / np.float32(255.0)
    mean = np.asarray(contract.mean, np.float32)[:, None, None]
    std = np.asarray(contract.std, np.float32)[:, None, None]
    return (x - mean) / std


@pytest.mark.parametrize("dtype", ["uint16", "uint8", "int16", "float32"])
@pytest.mark.parametrize("gamma", [1.0, 2.0])
def test_table_lookup_equals_the_training_stretch(dtype: str, gamma: float) -> None:
    contract = _contract(gamma)
    rng = np.random.default_rng(0)
    hi = 255 if dtype == "uint8" else 13000
    data = rng.integers(0, hi, (3, 40, 50)).astype(dtype)
    valid = rng.random((40, 50)) > 0.1
    got = InputTransform(contract)(data, valid)
    assert got.dtype == np.float32
    assert np.array_equal(got, _reference_input(contract, data, valid))


def test_table_lookup_with_scale_and_offset() -> None:
    contract = _contract()
    data = np.random.default_rng(1).integers(0, 1300, (3, 30, 30)).astype(np.uint16)
    valid = np.ones((30, 30), bool)
    got = InputTransform(contract, scale=10.0, offset=-50.0)(data, valid)
    scaled = data.astype(np.float32) * np.float32(10.0) + np.float32(-50.0)
    assert np.array_equal(got, _reference_input(contract, scaled, valid))


@pytest.mark.parametrize("length", [1, 31, 64, 500, 1000, 1025, 1100, 2048, 5490, 10980])
@pytest.mark.parametrize(("tile", "overlap"), [(1024, 64), (1024, 256), (256, 128), (512, 0)])
def test_windows_cover_the_axis_evenly(length: int, tile: int, overlap: int) -> None:
    size, ov, starts = axis_windows(length, tile, overlap)
    assert size % 32 == 0 and size <= max(tile, 32) and ov <= size // 2
    assert starts[0] == 0 and starts[-1] + size >= length
    n = len(starts)
    assert all(b - a == size - ov for a, b in itertools.pairwise(starts))
    # the fewest windows of at most ``tile`` px with the overlap asked for ...
    full = min(tile, 32 * math.ceil(length / 32))
    want = min(overlap, full // 2)
    assert n == max(1, math.ceil((length - want) / (full - want)))
    # ... each as small as covering allows: less than 32 px per window run past the end
    assert starts[-1] + size - length < 32 * n
    if n > 1:
        assert ov == min(overlap, size // 2)


def test_argmax_classes_matches_numpy_and_keeps_the_first_of_ties() -> None:
    rng = np.random.default_rng(2)
    p = rng.random((4, 33, 47)).astype(np.float32)
    p[:, :5] = 0.25  # ties everywhere: class 0
    p[2, 5:8] = p[1, 5:8] = 0.9  # tie between 1 and 2: class 1
    assert np.array_equal(argmax_classes(p), p.argmax(0).astype(np.uint8))


def test_prefetch_keeps_order_and_passes_errors_on() -> None:
    assert [r for _, r in _prefetch(lambda i: i * i, list(range(20)), 2)] == [
        i * i for i in range(20)
    ]

    def boom(i: int) -> int:
        if i == 3:
            raise ValueError("bad window")
        return i

    with pytest.raises(ValueError, match="bad window"):
        list(_prefetch(boom, list(range(10)), 2))
    gen = _prefetch(lambda i: i, list(range(100)), 2)
    next(gen)
    gen.close()  # a consumer that stops early does not leave the thread waiting


def test_write_behind_reports_a_failed_write() -> None:
    class Failing:
        def write(self, *a: object) -> None:
            raise OSError("No space left on device")

    wb = _WriteBehind(Failing())
    wb.write(0, 0, np.zeros((2, 2, 2)), np.ones((2, 2), bool))
    with pytest.raises(OSError, match="No space"):
        wb.close()


# --------------------------------------------------------------------------------------------
# Safe publishing
# --------------------------------------------------------------------------------------------


def test_publishing_never_clobbers_a_file_that_appeared_meanwhile(tmp_path: Path) -> None:
    out = tmp_path / "mask.tif"
    with pytest.raises(OutputExistsError, match="another run"), atomic_file(out) as tmp:
        tmp.write_text("mine")
        out.write_text("theirs")  # another run finished first
    assert out.read_text() == "theirs"
    _no_temps(tmp_path)
    with atomic_file(out, overwrite=True) as tmp:
        tmp.write_text("mine")
    assert out.read_text() == "mine"


def test_stale_temporary_files_of_dead_processes_are_removed(tmp_path: Path) -> None:
    out = tmp_path / "a_mask.tif"
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    pid = int(dead.stdout)
    stale = tmp_path / f".a_mask.tif.tmp-{_HOST}-{pid}-0123abcd"
    stale.write_text("half")
    (tmp_path / f".a_mask.tif.tmp-{_HOST}-{pid}-0123abcd.stage").write_text("half")
    alive = tmp_path / f".a_mask.tif.tmp-{_HOST}-{os.getpid()}-0123abcd"
    alive.write_text("being written")
    other_host = tmp_path / f".a_mask.tif.tmp-elsewhere-{pid}-0123abcd"
    other_host.write_text("another machine's")
    assert remove_stale_temps([out]) == 2
    assert not stale.exists() and alive.exists() and other_host.exists()


# --------------------------------------------------------------------------------------------
# Archives: --skip-existing, a killed batch, --cog, torchrun
# --------------------------------------------------------------------------------------------


def test_a_killed_batch_resumes_with_skip_existing(tiny_run: Path, tmp_path: Path) -> None:
    a = scene_pair(tmp_path, "a", 90, 100)[0]
    big = scene_pair(tmp_path, "big", 1400, 1400, seed=1)[0]
    c = scene_pair(tmp_path, "c", 90, 100, seed=2)[0]
    out = tmp_path / "masks"
    args = [
        "-q",
        "predict",
        str(a),
        str(big),
        str(c),
        "--model",
        str(tiny_run),
        "--out",
        str(out),
        "--tile-size",
        "64",
        "--overlap",
        "16",
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "cloudcps.cli.main", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if (out / "a_mask.tif").exists() and list(out.glob(".big_mask.tif.tmp-*")):
            break
        time.sleep(0.01)
    assert proc.poll() is None, "the batch ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (out / "a_mask.tif").exists() and not (out / "big_mask.tif").exists()
    assert list(out.glob(".big_mask.tif.tmp-*"))  # what a kill leaves
    first = (out / "a_mask.tif").stat()
    r = _cli(*args)
    assert r.returncode == 1 and "already exists" in r.stderr  # no silent rewrite
    r = _cli(*args, "--skip-existing")
    assert r.returncode == 0, r.stderr
    again = (out / "a_mask.tif").stat()
    assert (again.st_ino, again.st_mtime_ns) == (first.st_ino, first.st_mtime_ns)
    for name in ("a", "big", "c"):
        with rasterio.open(out / f"{name}_mask.tif") as m:
            assert m.read(1).max() < 4
        assert json.loads((out / f"{name}_mask.json").read_text())["backend"] == "onnx"
    _no_temps(out)
    r = _cli(*args, "--skip-existing", "--overwrite")
    assert r.returncode == 1 and "exclude each other" in r.stderr


def test_cog_output_is_a_cloud_optimized_geotiff(tiny_run: Path, tmp_path: Path) -> None:
    scene = scene_pair(tmp_path, "s", 700, 650)[0]
    plain, cog = tmp_path / "plain.tif", tmp_path / "cog.tif"
    base = ["predict", str(scene), "--model", str(tiny_run), "--tile-size", "128"]
    for path, extra in ((plain, []), (cog, ["--cog", "--probabilities"])):
        r = CliRunner().invoke(cli, [*base, "--out", str(path), *extra])
        assert r.exit_code == 0, r.output
    with rasterio.open(plain) as p, rasterio.open(cog) as c, rasterio.open(scene) as s:
        assert c.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        assert c.overviews(1)
        assert (c.crs, c.transform, c.shape) == (s.crs, s.transform, s.shape)
        assert np.array_equal(c.read(1), p.read(1))
        assert c.colormap(1)[1] == p.colormap(1)[1]
        assert c.tags()["CLASSES"] == p.tags()["CLASSES"]
    with rasterio.open(tmp_path / "cog_proba.tif") as q:
        assert q.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG" and q.count == 4
    _no_temps(tmp_path)


def test_torchrun_shares_scenes_among_ranks(tiny_run: Path, tmp_path: Path) -> None:
    scenes = [str(scene_pair(tmp_path, f"s{i}", 80, 90, seed=i)[0]) for i in range(5)]
    out = tmp_path / "masks"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "cloudcps.cli.main",
            "predict",
            *scenes,
            "--model",
            str(tiny_run),
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    written = [line for line in r.stdout.splitlines() if " -> " in line]
    assert sorted(written) == sorted(set(written)) and len(written) == 5  # each once
    assert "2 ranks wrote 5 mask(s): [3, 2] per rank" in r.stdout
    for i in range(5):
        assert (out / f"s{i}_mask.tif").exists() and (out / f"s{i}_mask.json").exists()
    _no_temps(out)
