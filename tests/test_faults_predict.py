"""Hostile and careless input against ``cloudcps predict`` (issue 17): ownership of what
--skip-existing replaces, graphs that must come from their checkpoint, band names, GCPs, real
system failures, early checks, and windows without a valid pixel.

Every case runs the real command line and checks exit status, one line with the expected words,
and that inputs and unrelated files are byte-identical afterwards.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import rasterio
import torch
from affine import Affine
from onnx import numpy_helper
from rasterio.control import GroundControlPoint

from tests.conftest import cli_in_small_fs, scene_pair, write_raster
from tests.test_faults import ROOT, fails, run, snapshot

HEAD = "nets.0.segmentation_head.0.weight"


def _ok(*args: Any) -> str:
    r = run(*args)
    assert r.exit_code == 0, r.output
    return r.output


# --------------------------------------------------------------------------------------------
# 1. --skip-existing replaces only cloudcps's own files; its advice works
# --------------------------------------------------------------------------------------------


def test_skip_existing_never_replaces_a_users_report(tiny_run: Path, tmp_path: Path) -> None:
    a = scene_pair(tmp_path, "a", 60, 60)[0]
    out = tmp_path / "D"
    out.mkdir()
    (out / "a_mask.json").write_text('{"my": "notes"}\n')
    args = ["predict", a, "--model", tiny_run, "--out", out, "--skip-existing"]
    msg = fails(tmp_path, args, "was not written by cloudcps")
    assert "a_mask.json" in msg


def test_skip_existing_never_replaces_a_users_probabilities(tiny_run: Path, tmp_path: Path) -> None:
    a = scene_pair(tmp_path, "a", 60, 60)[0]
    out = tmp_path / "D"
    write_raster(out / "a_mask_proba.tif", np.ones((4, 60, 60), np.uint8))
    args = ["predict", a, "--model", tiny_run, "--out", out, "--skip-existing", "--probabilities"]
    msg = fails(tmp_path, args, "was not written by cloudcps")
    assert "a_mask_proba.tif" in msg


def test_skip_existing_with_a_lost_report_gives_advice_that_works(
    tiny_run: Path, tmp_path: Path
) -> None:
    a = scene_pair(tmp_path, "a", 60, 60)[0]
    out = tmp_path / "D"
    _ok("predict", a, "--model", tiny_run, "--out", out)
    (out / "a_mask.json").unlink()
    args = ["predict", a, "--model", tiny_run, "--out", out]
    msg = fails(tmp_path, [*args, "--skip-existing"], "a_mask.json")
    assert "without --skip-existing" in msg and "--overwrite" in msg
    _ok(*args, "--overwrite")  # what the message advises works
    assert (out / "a_mask.json").is_file()


# --------------------------------------------------------------------------------------------
# 3. A graph is used only when it provably comes from the checkpoint
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def own_graph(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bytes]:
    """A copy of the tiny run's best.pt and the bytes of the graph cloudcps exports for it."""
    from cloudcps.predict.graphs import onnx_graph

    root = tmp_path_factory.mktemp("graph")
    ckpt = root / "m.pt"
    shutil.copyfile(tiny_run / "best.pt", ckpt)
    old = os.environ.get("CLOUDCPS_CACHE")
    os.environ["CLOUDCPS_CACHE"] = str(root / "cache")
    try:
        graph = onnx_graph(ckpt, "1").read_bytes()
    finally:
        if old is not None:
            os.environ["CLOUDCPS_CACHE"] = old
    return ckpt, graph


def _foreign(graph: bytes) -> bytes:
    """Another network with the same metadata (the hash of the checkpoint copied)."""
    m = onnx.load_from_string(graph)
    for init in m.graph.initializer:
        if init.name == HEAD:
            init.CopyFrom(numpy_helper.from_array(-numpy_helper.to_array(init), HEAD))
    return bytes(m.SerializeToString())


def _head(graph: Path) -> np.ndarray:
    m = onnx.load(str(graph))
    return next(numpy_helper.to_array(i) for i in m.graph.initializer if i.name == HEAD)


def _ckpt_head(ckpt: Path | bytes) -> np.ndarray:
    import io

    src = io.BytesIO(ckpt) if isinstance(ckpt, bytes) else ckpt
    state = torch.load(src, weights_only=True)
    return np.asarray(state["nets"][0]["segmentation_head.0.weight"].float().numpy())


def _model_copy(own_graph: tuple[Path, bytes], tmp_path: Path) -> Path:
    ckpt = tmp_path / "model" / "m.pt"
    ckpt.parent.mkdir()
    shutil.copyfile(own_graph[0], ckpt)
    return ckpt


def test_a_graph_beside_the_checkpoint_with_a_copied_hash_is_not_run(
    own_graph: tuple[Path, bytes],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv("CLOUDCPS_CACHE", str(tmp_path / "cache"))
    ckpt = _model_copy(own_graph, tmp_path)
    ckpt.with_suffix(".onnx").write_bytes(_foreign(own_graph[1]))
    scene = scene_pair(tmp_path, "s", 60, 60)[0]
    before = snapshot(ckpt.parent)
    _ok("predict", scene, "--model", ckpt, "--out", tmp_path / "m.tif")
    report = json.loads((tmp_path / "m.json").read_text())
    assert report["graph"] != str(ckpt.with_suffix(".onnx")), report["graph"]
    assert np.array_equal(_head(Path(report["graph"])), _ckpt_head(ckpt))
    assert "ignoring" in caplog.text and "differs from the checkpoint" in caplog.text
    assert snapshot(ckpt.parent) == before


def test_a_cached_graph_with_a_copied_hash_is_re_exported(
    own_graph: tuple[Path, bytes], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CLOUDCPS_CACHE", str(tmp_path / "cache"))
    ckpt = _model_copy(own_graph, tmp_path)
    digest = hashlib.sha256(ckpt.read_bytes()).hexdigest()
    cached = tmp_path / "cache" / "onnx" / f"{digest[:24]}-nets1-g1.onnx"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(_foreign(own_graph[1]))
    scene = scene_pair(tmp_path, "s", 60, 60)[0]
    _ok("predict", scene, "--model", ckpt, "--out", tmp_path / "m.tif")
    report = json.loads((tmp_path / "m.json").read_text())
    assert report["graph"] == str(cached)
    assert np.array_equal(_head(cached), _ckpt_head(ckpt))  # re-exported, not run as found


def test_a_checkpoint_replaced_during_export_is_not_cached_under_its_old_hash(
    own_graph: tuple[Path, bytes], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import cloudcps.models as models

    monkeypatch.setenv("CLOUDCPS_CACHE", str(tmp_path / "cache"))
    ckpt = _model_copy(own_graph, tmp_path)
    original = ckpt.read_bytes()
    state = torch.load(ckpt, weights_only=True)
    state["nets"][0]["segmentation_head.0.weight"] *= -1
    other = tmp_path / "other.pt"
    torch.save(state, other)
    real_load = models.load_checkpoint

    def swap_then_load(path: Any, *a: Any, **k: Any) -> Any:
        shutil.copyfile(other, ckpt)  # the checkpoint is replaced while cloudcps exports it
        return real_load(path, *a, **k)

    monkeypatch.setattr(models, "load_checkpoint", swap_then_load)
    scene = scene_pair(tmp_path, "s", 60, 60)[0]
    _ok("predict", scene, "--model", ckpt, "--out", tmp_path / "m.tif")
    digest = hashlib.sha256(original).hexdigest()
    cached = tmp_path / "cache" / "onnx" / f"{digest[:24]}-nets1-g1.onnx"
    assert cached.is_file()
    assert np.array_equal(_head(cached), _ckpt_head(original))


def test_an_unwritable_cache_leaves_no_graph_behind(tiny_run: Path, tmp_path: Path) -> None:
    scene = scene_pair(tmp_path, "s", 60, 60)[0]
    not_a_folder = tmp_path / "cache"
    not_a_folder.write_text("a file: no cache can be made under it")
    tmp = tmp_path / "tmpdir"
    tmp.mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CLOUDCPS_CACHE": str(not_a_folder)}
    env["TMPDIR"] = str(tmp)
    args = ["-q", "predict", str(scene), "--model", str(tiny_run), "--out", str(tmp_path / "m.tif")]
    p = subprocess.run(
        [sys.executable, "-m", "cloudcps.cli.main", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert p.returncode == 0, p.stderr
    assert "not writable" in p.stderr
    left = [p for p in tmp.rglob("*") if "cloudcps" in p.name or p.suffix == ".onnx"]
    assert left == []  # (other libraries may leave their own small files there)


# --------------------------------------------------------------------------------------------
# 4. Band names, GCPs, and a true "no valid pixel"
# --------------------------------------------------------------------------------------------

S2_NAMES = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11",
            "B12"]  # fmt: skip


def _stack(path: Path, names: list[str] | None, size: int = 60) -> Path:
    rng = np.random.default_rng(0)
    data = rng.integers(300, 4000, (13, size, size)).astype(np.uint16)
    write_raster(path, data)
    if names:
        with rasterio.open(path, "r+") as dst:
            for i, n in enumerate(names):
                dst.set_band_description(i + 1, n)
    return path


def test_a_13_band_sentinel2_stack_is_read_by_its_band_names(
    tiny_run: Path, tmp_path: Path
) -> None:
    s2 = _stack(tmp_path / "s2.tif", S2_NAMES)
    _ok("predict", s2, "--model", tiny_run, "--out", tmp_path / "m.tif")
    assert json.loads((tmp_path / "m.json").read_text())["bands"] == [4, 3, 2]


def test_a_13_band_stack_without_band_names_needs_bands(tiny_run: Path, tmp_path: Path) -> None:
    stack = _stack(tmp_path / "x.tif", None)
    args = ["predict", stack, "--model", tiny_run, "--out", tmp_path / "m.tif"]
    msg = fails(tmp_path, args, "--bands")
    assert "13 bands" in msg
    _ok(*args, "--bands", "4,3,2,8")


def test_tile_reads_a_named_sentinel2_stack_by_its_band_names(tmp_path: Path) -> None:
    s2 = _stack(tmp_path / "s2.tif", S2_NAMES, 64)
    args = ["tile", s2, "--tile-size", "32", "--labeled-fraction", "0", "--format", "png"]
    _ok(*args, "--out", tmp_path / "t")
    _ok(*args, "--out", tmp_path / "u", "--bands", "4,3,2,8")
    manifest = json.loads((tmp_path / "t" / "manifest.json").read_text())
    assert manifest["scenes"][0]["bands"] == [4, 3, 2, 8]  # picked by the names
    assert manifest["bands"]["input"] == [1, 2, 3, 4]  # what predict reads unnamed files as
    for tile in manifest["tiles"]:  # the same pixels as with --bands 4,3,2,8
        a = (tmp_path / "t" / tile["image"]).read_bytes()
        assert a == (tmp_path / "u" / tile["image"]).read_bytes()


def test_gcps_of_a_scene_are_carried_to_its_mask(tiny_run: Path, tmp_path: Path) -> None:
    gcps = [
        GroundControlPoint(0, 0, 500000.0, 5000000.0),
        GroundControlPoint(0, 60, 501800.0, 5000000.0),
        GroundControlPoint(60, 0, 500000.0, 4998200.0),
        GroundControlPoint(60, 60, 501800.0, 4998200.0),
    ]
    data = np.random.default_rng(0).integers(300, 4000, (4, 60, 60)).astype(np.uint16)
    scene = tmp_path / "gcp.tif"
    with rasterio.open(scene, "w", driver="GTiff", width=60, height=60, count=4, dtype="uint16",
                       gcps=gcps, crs="EPSG:32633") as dst:  # fmt: skip
        dst.write(data)
    _ok("predict", scene, "--model", tiny_run, "--out", tmp_path / "m.tif", "--probabilities")
    for name in ("m.tif", "m_proba.tif"):
        with rasterio.open(tmp_path / name) as m:
            got, crs = m.gcps
            assert [(g.row, g.col, g.x, g.y) for g in got] == [
                (g.row, g.col, g.x, g.y) for g in gcps
            ]
            assert crs is not None and crs.to_epsg() == 32633
    assert json.loads((tmp_path / "m.json").read_text())["gcps"] == 4


def test_valid_pixels_between_the_samples_give_no_false_no_valid_warning(
    tiny_run: Path, tmp_path: Path
) -> None:
    data = np.zeros((4, 800, 800), np.uint16)
    data[:, :40] = 1500  # valid only in the top rows, which the 6 x 6 value sample misses
    scene = write_raster(tmp_path / "s.tif", data, nodata=0)
    _ok("predict", scene, "--model", tiny_run, "--out", tmp_path / "m.tif",
        "--tile-size", "256")  # fmt: skip
    report = json.loads((tmp_path / "m.json").read_text())
    assert report["valid_pixels"] == 40 * 800
    assert not any("no valid pixel" in w for w in report["warnings"]), report["warnings"]


# --------------------------------------------------------------------------------------------
# 7. Real system failures: a full disk, memory, /proc, a dangling link
# --------------------------------------------------------------------------------------------


def _one_error_line(stderr: str, *words: str) -> str:
    lines = [ln for ln in stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), stderr
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize("extra", [["--cog", "--probabilities"], ["--buffer", "3"]])
def test_a_real_full_disk_during_predict_is_one_line(tmp_path: Path, extra: list[str]) -> None:
    scene = scene_pair(tmp_path, "s", 600, 600)[0]
    before = snapshot(tmp_path)
    small = tmp_path / "small"
    fill = f"head -c 60k /dev/zero > {small}/filler"  # one 4 KiB page is left
    rc, out, err = cli_in_small_fs(
        small, 64, ["-q", "predict", str(scene), "--out", str(small), *extra], setup=fill
    )
    assert rc == 1, (out, err)
    _one_error_line(err, "s_mask.tif", "free some space")
    assert out.split("--- left:")[1].split() == [f"{small}:", "filler"]
    assert snapshot(tmp_path) == before


def _ort_oom(*a: Any, **k: Any) -> Any:
    from onnxruntime.capi.onnxruntime_pybind11_state import Fail

    raise Fail(
        "[ONNXRuntimeError] : 1 : FAIL : Non-zero status code returned while running Conv node. "
        "Name:'/nets.0/encoder/model/blocks.1/blocks.1.0/bn1/act/Clip_output_0_nchwc' Status "
        "Message: /onnxruntime_src/onnxruntime/core/framework/bfc_arena.cc:360 void* "
        "onnxruntime::BFCArena::AllocateRawInternal(size_t, bool, onnxruntime::Stream*) Failed "
        "to allocate memory for requested buffer of size 1610612736\n"
    )


def _torch_oom(*a: Any, **k: Any) -> Any:
    raise RuntimeError(
        "[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: not enough memory: you "
        "tried to allocate 1610612736 bytes."
    )


@pytest.mark.parametrize("backend", ["onnx", "torch"])
def test_out_of_memory_in_the_network_is_one_line(
    tiny_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, backend: str
) -> None:
    from cloudcps.predict.backends import OnnxRunner, TorchRunner

    runner, boom = (OnnxRunner, _ort_oom) if backend == "onnx" else (TorchRunner, _torch_oom)
    monkeypatch.setattr(runner, "__call__", boom)
    scene = scene_pair(tmp_path, "s", 60, 60)[0]
    args = [
        "predict",
        scene,
        "--model",
        tiny_run,
        "--backend",
        backend,
        "--out",
        tmp_path / "m.tif",
    ]
    msg = fails(tmp_path, args, "out of memory")
    assert "--batch-size" in msg and "--tile-size" in msg


@pytest.mark.parametrize("out", ["/proc/m.tif", "/sys/m.tif", "/proc/self/masks"])
def test_out_under_proc_or_sys_is_refused_before_any_work(
    tiny_run: Path, tmp_path: Path, out: str
) -> None:
    scene = scene_pair(tmp_path, "s", 60, 60)[0]
    fails(tmp_path, ["predict", scene, "--model", tiny_run, "--out", out], "choose another --out")


def test_a_dangling_symlink_out_is_refused_before_any_work(tiny_run: Path, tmp_path: Path) -> None:
    scene = scene_pair(tmp_path, "s", 60, 60)[0]
    link = tmp_path / "m.tif"
    link.symlink_to(tmp_path / "nowhere" / "m.tif")
    fails(tmp_path, ["predict", scene, "--model", tiny_run, "--out", link], "symbolic link")
    assert not (tmp_path / "m.json").exists()


# --------------------------------------------------------------------------------------------
# 8. Every input and option value is checked before any work
# --------------------------------------------------------------------------------------------


def test_a_missing_scene_is_found_before_any_mask_is_written(
    tiny_run: Path, tmp_path: Path
) -> None:
    a = scene_pair(tmp_path, "a", 60, 60)[0]
    missing = tmp_path / "scenes" / "typo.tif"
    args = ["predict", a, missing, "--model", tiny_run, "--out", tmp_path / "D"]
    fails(tmp_path, args, "typo.tif does not exist")


def test_options_after_a_double_dash_are_scenes(
    tiny_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    scene_pair(tmp_path, "-dash", 60, 60)
    monkeypatch.chdir(tmp_path / "scenes")
    args = ["predict", "--model", tiny_run, "--", "-dash.tif", "--out", tmp_path / "X"]
    msg = fails(tmp_path, args, "scene --out does not exist")
    assert "before --" in msg


def test_predicts_own_masks_are_never_taken_as_scenes(tiny_run: Path, tmp_path: Path) -> None:
    a = scene_pair(tmp_path, "a", 60, 60)[0]
    _ok("predict", a, "--model", tiny_run, "--probabilities")  # a_mask.tif beside the scene
    folder = a.parent
    again = sorted(folder.glob("*.tif"))  # what dir/*.tif gives now
    assert [p.name for p in again] == ["a.tif", "a_mask.tif", "a_mask_proba.tif"]
    before = snapshot(tmp_path)
    out = _ok("predict", *again, "--model", tiny_run, "--skip-existing", "--probabilities")
    assert "skipping 2 file(s) that cloudcps wrote" in out
    assert snapshot(tmp_path) == before
    fails(tmp_path, ["predict", folder / "a_mask.tif", "--model", tiny_run], "not a scene")


@pytest.mark.parametrize(
    ("extra", "expect"),
    [(["--tile-size", "0"], "--tile-size 0 must be a multiple of 32, at least 32 and at most"),
     (["--batch-size", "-5"], "--batch-size -5 must be between 1 and"),
     (["--bands", "4,3,2,9"], "--bands 4,3,2,9")],
)  # fmt: skip
def test_out_of_range_options_are_refused(
    tiny_run: Path, tmp_path: Path, extra: list[str], expect: str
) -> None:
    scene = scene_pair(tmp_path, "s", 60, 60)[0]
    fails(
        tmp_path, ["predict", scene, "--model", tiny_run, "--out", tmp_path / "D", *extra], expect
    )


def test_bands_are_checked_against_every_scene_before_any_work(
    tiny_run: Path, tmp_path: Path
) -> None:
    a = scene_pair(tmp_path, "a", 60, 60)[0]
    b = scene_pair(tmp_path, "b", 60, 60, bands=3)[0]
    args = ["predict", a, b, "--model", tiny_run, "--out", tmp_path / "D", "--bands", "1,2,3,4"]
    msg = fails(tmp_path, args, "no band 4")
    assert "b.tif" in msg


def test_an_onnx_model_is_refused_with_what_model_takes(tmp_path: Path) -> None:
    from cloudcps.modelfiles import default_model_path

    graph = tmp_path / "x.onnx"
    shutil.copyfile(default_model_path().with_suffix(".onnx"), graph)
    scene = scene_pair(tmp_path, "s", 60, 60)[0]
    args = ["predict", scene, "--model", graph, "--out", tmp_path / "m.tif"]
    msg = fails(tmp_path, args, "is an ONNX graph")
    assert "weights_only" not in msg and "run folder" in msg


def test_an_out_with_another_suffix_is_refused(tiny_run: Path, tmp_path: Path) -> None:
    scene = scene_pair(tmp_path, "s", 60, 60)[0]
    msg = fails(tmp_path, ["predict", scene, "--model", tiny_run, "--out", tmp_path / "m.png"],
                "NAME.tif")  # fmt: skip
    assert "folder" in msg
    assert not (tmp_path / "m.png").exists()


# --------------------------------------------------------------------------------------------
# 9. Windows without a valid pixel cost nothing
# --------------------------------------------------------------------------------------------


def test_windows_without_a_valid_pixel_skip_the_network(
    tiny_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cloudcps.predict.backends import OnnxRunner

    calls: list[int] = []
    real_call = OnnxRunner.__call__

    def counting(self: OnnxRunner, x: np.ndarray) -> np.ndarray:
        calls.append(int(x.shape[0]))
        return real_call(self, x)

    monkeypatch.setattr(OnnxRunner, "__call__", counting)
    rng = np.random.default_rng(0)
    data = rng.integers(300, 4000, (4, 512, 512)).astype(np.uint16)
    data[:, 128:] = 0  # three quarters nodata
    tf = Affine(30.0, 0.0, 500000.0, 0.0, -30.0, 5000000.0)
    full = write_raster(tmp_path / "full.tif", data, transform=tf)  # no nodata: every window
    holes = write_raster(tmp_path / "holes.tif", data, transform=tf, nodata=0)
    common = ["--model", tiny_run, "--tile-size", "64", "--overlap", "16", "--batch-size", "4"]
    _ok("predict", full, "--out", tmp_path / "full_mask.tif", *common)
    every = sum(calls)
    calls.clear()
    _ok("predict", holes, "--out", tmp_path / "holes_mask.tif", *common)
    assert sum(calls) < every / 2, (sum(calls), every)
    with (
        rasterio.open(tmp_path / "full_mask.tif") as f,
        rasterio.open(tmp_path / "holes_mask.tif") as h,
    ):
        a, b = f.read(1), h.read(1)
    valid = data[0] != 0
    assert np.array_equal(a[valid], b[valid])
    assert (b[~valid] == 255).all()


def test_a_graph_beside_the_checkpoint_with_other_fused_weights_is_not_run(
    own_graph: tuple[Path, bytes],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Weights the export fused (Conv + BatchNorm, renamed onnx::Conv_*) cannot be compared with
    the checkpoint's: a graph beside it runs only when the checkpoint names its SHA-256."""
    from cloudcps.predict.graphs import graph_for, vouch_for_graph

    monkeypatch.setenv("CLOUDCPS_CACHE", str(tmp_path / "cache"))
    ckpt = _model_copy(own_graph, tmp_path)
    m = onnx.load_from_string(own_graph[1])
    fused = next(i for i in m.graph.initializer if not i.name.startswith("nets."))
    fused.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(fused) * 2, fused.name))
    beside = ckpt.with_suffix(".onnx")
    beside.write_bytes(m.SerializeToString())
    assert graph_for(ckpt, "1")[0] != beside
    assert "does not name this graph" in caplog.text
    beside.write_bytes(own_graph[1])  # the graph exported from it, named by the checkpoint
    vouch_for_graph(ckpt, beside)
    assert graph_for(ckpt, "1")[0] == beside
