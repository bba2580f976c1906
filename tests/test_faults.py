"""Fault injection: hostile and careless input against the real command line.

Every case runs the CLI and checks the promises of docs (README, "Failures"): exit status 1, one
line that names the file or option and the fix, no traceback, and every file that existed before
(inputs and earlier outputs) byte-identical afterwards, with nothing half-written left behind.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
import torch
import yaml
from PIL import Image

# the fixtures scenes and tiles are in conftest.py
from tests.conftest import LMAP, run, scene_pair, tile_args, write_raster

ROOT = Path(__file__).resolve().parents[1]


def snapshot(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def fails(root: Path, args: list[Any], expect: str) -> str:
    """Run the CLI; assert exit 1, one error line holding ``expect``, and no file changed."""
    before = snapshot(root)
    r = run(*args)
    assert r.exit_code == 1, r.output
    assert "Traceback" not in r.output, r.output
    assert "Error: " in r.output, r.output
    message = r.output.split("Error: ", 1)[1].strip()
    assert "\n" not in message, r.output
    assert expect in message, message
    assert snapshot(root) == before, "files changed or were left behind"
    return message


def _cli_proc(*args: str, **kw: Any) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-m", "cloudcps.cli.main", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )


# --------------------------------------------------------------------------------------------
# 1. --overwrite never deletes inputs or foreign files (each failed before this suite)
# --------------------------------------------------------------------------------------------


def test_tile_overwrite_refuses_the_folder_of_the_inputs(scenes: Path, tmp_path: Path) -> None:
    fails(tmp_path, tile_args(scenes, scenes, "--overwrite"), "holds the input")


def test_tile_overwrite_refuses_a_folder_of_foreign_files(scenes: Path, tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    (project / "notes.txt").write_text("mine")
    fails(tmp_path, tile_args(scenes, project, "--overwrite"), "cloudcps did not write")


def test_tile_overwrite_replaces_its_own_tiles(tiles: Path, scenes: Path) -> None:
    r = run(*tile_args(scenes, tiles, "--overwrite"))
    assert r.exit_code == 0, r.output
    assert (tiles / "manifest.json").is_file()


def test_evaluate_overwrite_refuses_a_folder_of_foreign_files(tiles: Path, tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    (project / "thesis.tex").write_text("years of work")
    ref = tiles.parent / "data" / "labels" / "a.tif"
    args = ["evaluate", "--pred", ref, "--ref", ref, "--label-map", LMAP, "--out", project]
    fails(tmp_path, [*args, "--overwrite"], "cloudcps did not write")


def test_evaluate_out_may_not_hold_its_inputs(tmp_path: Path) -> None:
    masks = tmp_path / "masks"
    ref = write_raster(masks / "a.tif", np.zeros((40, 40), np.uint8), crs="EPSG:32633")
    fails(tmp_path, ["evaluate", "--pred", ref, "--ref", ref, "--out", masks], "holds the input")


def test_predict_overwrite_never_replaces_the_input_scene(tiny_run: Path, tmp_path: Path) -> None:
    scene = scene_pair(tmp_path, "s", 80, 80)[0]
    fails(
        tmp_path,
        ["predict", scene, "--model", tiny_run, "--out", scene, "--overwrite"],
        "is the input",
    )


def test_predict_overwrite_refuses_a_file_cloudcps_did_not_write(
    tiny_run: Path, tmp_path: Path
) -> None:
    scene = scene_pair(tmp_path, "s", 80, 80)[0]
    other = scene_pair(tmp_path, "other", 80, 80, seed=3)[0]
    fails(
        tmp_path,
        ["predict", scene, "--model", tiny_run, "--out", other, "--overwrite"],
        "was not written by cloudcps",
    )


def test_predict_overwrite_replaces_its_own_mask(tiny_run: Path, tmp_path: Path) -> None:
    scene = scene_pair(tmp_path, "s", 80, 80)[0]
    out = tmp_path / "m.tif"
    for extra in ([], ["--overwrite"]):
        r = run("predict", scene, "--model", tiny_run, "--out", out, *extra)
        assert r.exit_code == 0, r.output


# --------------------------------------------------------------------------------------------
# 2. Concurrent runs: the later one fails instead of replacing the other's result
# --------------------------------------------------------------------------------------------


def test_two_predict_runs_to_one_out_never_both_succeed(tiny_run: Path, tmp_path: Path) -> None:
    scene = scene_pair(tmp_path, "big", 900, 900)[0]
    out = tmp_path / "m.tif"
    args = ["-q", "predict", str(scene), "--model", str(tiny_run), "--out", str(out)]
    args += ["--tile-size", "64", "--overlap", "16"]
    procs = [_cli_proc(*args) for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read() if p.stderr else "") for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 1], results
    err = next(e for code, e in results if code == 1)
    assert "Traceback" not in err and err.count("Error: ") == 1
    assert "another run" in err or "already exists" in err
    with rasterio.open(out) as m:
        assert m.read(1).max() < 4
    assert not list(tmp_path.glob(".*tmp-*"))


def test_two_tile_runs_to_one_out_never_both_succeed(tmp_path: Path) -> None:
    data = tmp_path / "data"
    for i in range(3):
        scene_pair(data, f"s{i}", 700, 700, seed=i, x0=500000.0 + 1e5 * i)
    out = tmp_path / "tiles"
    args = ["-q", "tile", *(str(data / "scenes" / f"s{i}.tif") for i in range(3))]
    args += ["--label-dir", str(data / "labels"), "--label-map", LMAP, "--tile-size", "128"]
    args += ["--workers", "1", "--out", str(out)]
    procs = [_cli_proc(*args) for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read() if p.stderr else "") for p in procs]
    assert sorted(code for code, _ in results) == [0, 1], results
    manifest = json.loads((out / "manifest.json").read_text())
    assert len(manifest["tiles"]) == len(list((out / "images").iterdir()))
    assert not list(tmp_path.glob(".*tmp-*"))


# --------------------------------------------------------------------------------------------
# 3. Silent wrong results are refused
# --------------------------------------------------------------------------------------------


def test_infinite_stretch_is_refused(scenes: Path, tmp_path: Path) -> None:
    fails(tmp_path, tile_args(scenes, tmp_path / "t", "--stretch", "0:inf"), "finite")


def test_duplicate_class_names_are_refused(scenes: Path, tmp_path: Path) -> None:
    args = tile_args(scenes, tmp_path / "t", "--classes", "clear,clear,thin,shadow")
    fails(tmp_path, args, "named twice")


def test_a_newline_in_a_scene_name_is_refused(tmp_path: Path) -> None:
    data = tmp_path / "data"
    scene = scene_pair(data, "a", 64, 64)[0]
    odd = scene.with_name("a\nb.tif")
    scene.rename(odd)
    fails(tmp_path, ["tile", odd, "--tile-size", "64", "--out", tmp_path / "t"], "control char")


def test_a_fractional_float_reference_is_refused(tmp_path: Path) -> None:
    pred = write_raster(tmp_path / "p.tif", np.zeros((40, 40), np.uint8))
    ref_data = np.zeros((40, 40), np.float32)
    ref_data[5, 5] = 0.7
    ref = write_raster(tmp_path / "r.tif", ref_data)
    fails(
        tmp_path,
        ["evaluate", "--pred", pred, "--ref", ref, "--out", tmp_path / "rep"],
        "non-integer",
    )


def test_a_negative_label_code_is_refused(tmp_path: Path) -> None:
    pred = write_raster(tmp_path / "p.tif", np.zeros((40, 40), np.uint8))
    args = ["evaluate", "--pred", pred, "--ref", pred, "--label-map", "-1:0"]
    fails(tmp_path, [*args, "--out", tmp_path / "rep"], "0..65535")


def test_nan_in_a_reference_is_no_reference(tmp_path: Path) -> None:
    pred = write_raster(tmp_path / "p.tif", np.zeros((40, 40), np.uint8))
    ref_data = np.zeros((40, 40), np.float32)
    ref_data[:10] = np.nan
    ref = write_raster(tmp_path / "r.tif", ref_data)
    r = run("evaluate", "--pred", pred, "--ref", ref, "--out", tmp_path / "rep")
    assert r.exit_code == 0, r.output
    report = json.loads((tmp_path / "rep" / "report.json").read_text())
    cm = np.asarray(next(iter(report["results"].values()))["confusion"])
    assert cm.sum() == 30 * 40  # the NaN rows are not counted


# --------------------------------------------------------------------------------------------
# 4. Checkpoints: a second Ctrl-C, a full disk, a torn metrics line
# --------------------------------------------------------------------------------------------


def _train_args(tiles: Path, out: Path, *extra: str) -> list[Any]:
    return [
        "train", "--data", tiles, "--out", out, "--iters", "2", "--encoder", "resnet18",
        "--encoder-weights", "none", "--crop", "64", "--batch-size", "2", "--workers", "0",
        "--device", "cpu", "--eval-every", "2", *extra,
    ]  # fmt: skip


def test_a_ctrl_c_during_a_checkpoint_save_still_leaves_a_whole_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cloudcps.models import load_checkpoint, save_checkpoint

    real_save = torch.save

    def interrupted_save(obj: Any, f: Any) -> None:
        os.kill(os.getpid(), signal.SIGINT)  # the second Ctrl-C, in the middle of the save
        time.sleep(0.05)
        real_save(obj, f)

    monkeypatch.setattr(torch, "save", interrupted_save)
    ckpt = tmp_path / "latest.pt"
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(ckpt, {"iteration": 7, "nets": []})
    assert load_checkpoint(ckpt)["iteration"] == 7
    assert not list(tmp_path.glob(".*tmp*"))


def test_a_full_disk_during_training_is_one_line(
    tiles: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(obj: Any, f: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(getattr(f, "name", f)))

    monkeypatch.setattr(torch, "save", full)
    out = tmp_path / "run"
    msg = fails(tmp_path / "run-parent-only", _train_args(tiles, out), "No space left on device")
    assert "free some space" in msg
    assert not list(out.glob(".*tmp*")) and not (out / "latest.pt").exists()
    # the stopped run is refused as a fresh start and as a resume, both naming the way out
    monkeypatch.undo()
    msg = fails(tmp_path / "run-parent-only", _train_args(tiles, out), "--overwrite")
    assert "first checkpoint" in msg
    fails(tmp_path / "run-parent-only", _train_args(tiles, out, "--resume"), "--overwrite")
    assert run(*_train_args(tiles, out, "--overwrite")).exit_code == 0


def test_a_torn_metrics_line_does_not_stop_a_resume(tiles: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert run(*_train_args(tiles, out)).exit_code == 0
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"iter": 3, "loss": 0.')  # what a kill during a write leaves
    r = run(*_train_args(tiles, out, "--resume", "--iters", "3"))
    assert r.exit_code == 0, r.output
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["iter"] == 3


# --------------------------------------------------------------------------------------------
# 5. Errors that used to be tracebacks
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "expect"),
    [
        (["--label-map", "128:-1"], "class ids are"),
        (["--label-map", "70000:1"], "0..65535"),
        (["--tile-size", "1000000"], "too large"),
        (["--stretch", "5:1"], "MAX > MIN"),
        (["--gamma", "0"], "--gamma"),
    ],
)
def test_tile_option_errors(scenes: Path, tmp_path: Path, extra: list[str], expect: str) -> None:
    fails(tmp_path, tile_args(scenes, tmp_path / "t", *extra), expect)


def test_tile_out_is_a_file(scenes: Path, tmp_path: Path) -> None:
    f = tmp_path / "file"
    f.write_text("x")
    fails(tmp_path, tile_args(scenes, f), "is a file")


def test_tile_out_under_a_file(scenes: Path, tmp_path: Path) -> None:
    f = tmp_path / "file"
    f.write_text("x")
    fails(tmp_path, tile_args(scenes, f / "tiles"), "is a file, not a folder")


def test_tile_out_is_the_current_folder(
    scenes: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(scenes)
    fails(tmp_path, tile_args(scenes, Path("."), "--overwrite"), "holds the input")


def test_a_corrupt_geotiff_after_a_good_header(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    good = tmp_path / "good.tif"
    with rasterio.open(
        good, "w", driver="GTiff", width=512, height=512, count=4, dtype="uint16",
        crs="EPSG:32633", transform=rasterio.transform.from_origin(5e5, 5e6, 30, 30),
        tiled=True, blockxsize=256, blockysize=256, compress="deflate",
    ) as dst:  # fmt: skip
        dst.write(rng.integers(0, 4000, (4, 512, 512)).astype(np.uint16))
    raw = bytearray(good.read_bytes())
    for i in range(len(raw) // 2, len(raw) - 64):
        raw[i] = (raw[i] * 7 + 13) % 256  # compressed blocks garbled, header intact
    bad = tmp_path / "bad.tif"
    bad.write_bytes(bytes(raw))
    good.unlink()
    fails(tmp_path, ["tile", bad, "--tile-size", "128", "--out", tmp_path / "t"], "bad.tif")


def test_nan_and_fractions_in_a_label_raster(tmp_path: Path) -> None:
    data = tmp_path / "data"
    scene = scene_pair(data, "a", 64, 64)[0]
    lab = np.zeros((64, 64), np.float32)
    lab[:8] = np.nan
    lab[9, 9] = 0.5
    write_raster(data / "labels" / "a.tif", lab)
    args = ["tile", scene, "--label-dir", data / "labels", "--tile-size", "64", "--out",
            tmp_path / "t"]  # fmt: skip
    fails(tmp_path, args, "non-integer")
    lab[9, 9] = 1
    write_raster(data / "labels" / "a.tif", lab)
    r = run(*args)  # NaN alone: no label there
    assert r.exit_code == 0, r.output


def test_predict_option_errors(tiny_run: Path, tmp_path: Path) -> None:
    scene = scene_pair(tmp_path, "s", 80, 80)[0]
    base = ["predict", scene, "--model", tiny_run]
    fails(tmp_path, [*base, "--buffer", "252", "--out", tmp_path / "m.tif"], "between 0 and 250")
    fails(tmp_path, [*base, "--tile-size", "1000000", "--out", tmp_path / "m.tif"], "at most")
    fails(tmp_path, [*base, "--skip-existing", "--overwrite"], "exclude each other")
    fails(
        tmp_path,
        [*base, "--backend", "onnx", "--device", "cuda", "--out", tmp_path / "m.tif"],
        "runs on the CPU",
    )


def test_predict_out_is_an_existing_file_for_several_scenes(tiny_run: Path, tmp_path: Path) -> None:
    a = scene_pair(tmp_path, "a", 60, 60)[0]
    b = scene_pair(tmp_path, "b", 60, 60, seed=1)[0]
    f = tmp_path / "masks"
    f.write_text("a file")
    fails(tmp_path, ["predict", a, b, "--model", tiny_run, "--out", f], "masks")


def test_predict_batch_checks_every_sidecar_first(tiny_run: Path, tmp_path: Path) -> None:
    a = scene_pair(tmp_path, "a", 60, 60)[0]
    b = scene_pair(tmp_path, "b", 60, 60, seed=1)[0]
    out = tmp_path / "masks"
    out.mkdir()
    (out / "b_mask.json").write_text("{}")  # only the report of b exists
    fails(tmp_path, ["predict", a, b, "--model", tiny_run, "--out", out], "b_mask.json")
    assert not (out / "a_mask.tif").exists()


def _checkpoint(path: Path, tiny_run: Path, change: str) -> Path:
    from cloudcps.models import load_checkpoint

    state = load_checkpoint(tiny_run / "best.pt")
    if change == "no model":
        del state["model"]
    elif change == "wrong shapes":
        sd = state["nets"][0]
        key = next(k for k, v in sd.items() if v.ndim == 4)
        sd[key] = torch.zeros(3, 3, 1, 1)
    elif change == "code":
        torch.save({"x": Path("/etc")}, path)  # a pickle of an arbitrary class
        return path
    torch.save(state, path)
    return path


@pytest.mark.parametrize(
    ("change", "expect"),
    [("no model", "lacks part of the model"), ("wrong shapes", "does not fit"),
     ("code", "not a readable checkpoint")],
)  # fmt: skip
def test_damaged_checkpoints(tiny_run: Path, tmp_path: Path, change: str, expect: str) -> None:
    ckpt = _checkpoint(tmp_path / "x.pt", tiny_run, change)
    scene = scene_pair(tmp_path, "s", 60, 60)[0]
    args = ["predict", scene, "--model", ckpt, "--backend", "torch", "--out", tmp_path / "m.tif"]
    fails(tmp_path, args, expect)


@pytest.mark.parametrize(
    ("manifest", "expect"),
    [
        ([1, 2], "not a cloudcps tile manifest"),
        ("no tiles", "damaged"),
        ("bad stretch", "damaged"),
    ],
)
def test_damaged_manifests(tiles: Path, tmp_path: Path, manifest: Any, expect: str) -> None:
    m = json.loads((tiles / "manifest.json").read_text())
    if manifest == "no tiles":
        del m["tiles"]
    elif manifest == "bad stretch":
        m["stretch"] = "linear"
    else:
        m = manifest
    (tiles / "manifest.json").write_text(json.dumps(m))
    fails(tmp_path, _train_args(tiles, tmp_path / "run"), expect)


@pytest.mark.parametrize(
    ("config", "expect"),
    [
        ({3: 1}, "not an option name"),
        ({"momentum": -1}, "momentum"),
        ({"scale_max": float("inf")}, "finite"),
        ({"iters": "many"}, "should be int"),
    ],
)
def test_bad_configs(tiles: Path, tmp_path: Path, config: dict[Any, Any], expect: str) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(config))
    fails(tmp_path, [*_train_args(tiles, tmp_path / "run"), "--config", cfg], expect)


def test_log_every_zero(tiles: Path, tmp_path: Path) -> None:
    fails(tmp_path, [*_train_args(tiles, tmp_path / "run"), "--log-every", "0"], "--log-every")


@pytest.mark.parametrize("workers", ["0", "2"])
def test_a_label_tile_beyond_the_class_set(tiles: Path, tmp_path: Path, workers: str) -> None:
    lab = next((tiles / "labels").glob("*.png"))
    arr = np.asarray(Image.open(lab)).copy()
    arr[0, 0] = 9
    Image.fromarray(arr).save(lab)
    args = [*_train_args(tiles, tmp_path / "run"), "--workers", workers, "--mode", "supervised"]
    args += ["--iters", "4"]
    msg = fails(tmp_path / "run-only", args, "holds value 9")
    assert lab.name in msg


def test_a_truncated_tile_image_is_named(tiles: Path, tmp_path: Path) -> None:
    jpg = sorted((tiles / "images").glob("*.jpg"))[0]
    jpg.write_bytes(jpg.read_bytes()[:300])
    args = [*_train_args(tiles, tmp_path / "run"), "--mode", "supervised", "--iters", "4"]
    msg = fails(tmp_path / "run-only", args, jpg.name)
    assert "cannot read" in msg


def test_resume_with_another_mode_or_encoder(tiles: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert run(*_train_args(tiles, out)).exit_code == 0
    fails(tmp_path, _train_args(tiles, out, "--resume", "--mode", "supervised"), "--mode")
    args = _train_args(tiles, out, "--resume")
    args[args.index("resnet18")] = "resnet34"
    fails(tmp_path, args, "--encoder")


def test_train_out_is_a_file(tiles: Path, tmp_path: Path) -> None:
    f = tmp_path / "run"
    f.write_text("x")
    fails(tmp_path, _train_args(tiles, f), "is a file")


def test_an_unexpected_error_is_one_line_and_debug_shows_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import cloudcps.evaluate.run as ev

    def boom(*a: Any, **k: Any) -> None:
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(ev, "evaluate_rasters", boom)
    pred = write_raster(tmp_path / "p.tif", np.zeros((40, 40), np.uint8))
    args = ["evaluate", "--pred", pred, "--ref", pred, "--out", tmp_path / "rep"]
    msg = fails(tmp_path, args, "unexpected error ZeroDivisionError")
    assert "--debug" in msg
    r = run("--debug", *args)
    assert isinstance(r.exception, ZeroDivisionError)


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS])
def test_full_or_read_only_disks(
    scenes: Path, tiny_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int
) -> None:
    import cloudcps.evaluate.report as ev
    import cloudcps.predict as pr
    import cloudcps.tiling.run as tl

    def broken(*a: Any, **k: Any) -> None:
        raise OSError(code, os.strerror(code), str(tmp_path / "somewhere"))

    fix = "free some space" if code == errno.ENOSPC else "read-only"
    monkeypatch.setattr(tl, "tile_scene", broken)
    fails(tmp_path, tile_args(scenes, tmp_path / "t"), fix)
    monkeypatch.setattr(pr.RasterSink, "write", broken)
    scene = scenes / "scenes" / "a.tif"
    fails(tmp_path, ["predict", scene, "--model", tiny_run, "--out", tmp_path / "m.tif"], fix)
    monkeypatch.setattr(ev, "_plot_confusion", broken)
    ref = write_raster(tmp_path / "ref.tif", np.zeros((40, 40), np.uint8))
    fails(tmp_path, ["evaluate", "--pred", ref, "--ref", ref, "--out", tmp_path / "rep"], fix)


# --------------------------------------------------------------------------------------------
# 6. Signals and degenerate scenes
# --------------------------------------------------------------------------------------------


def test_sigterm_during_predict_leaves_nothing(tiny_run: Path, tmp_path: Path) -> None:
    scene = scene_pair(tmp_path, "big", 1200, 1200)[0]
    out = tmp_path / "masks"
    before = snapshot(tmp_path)
    p = _cli_proc("-q", "predict", str(scene), "--model", str(tiny_run), "--out", str(out),
                  "--tile-size", "64", "--overlap", "16")  # fmt: skip
    deadline = time.time() + 120
    while time.time() < deadline and not list(out.glob(".big_mask.tif.tmp-*")):
        time.sleep(0.01)
    assert p.poll() is None
    p.send_signal(signal.SIGTERM)
    code = p.wait(timeout=60)
    err = p.stderr.read() if p.stderr else ""
    assert code == 130 and "interrupted" in err and "Traceback" not in err, err
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("kind", ["all nodata", "one pixel", "nan"])
def test_degenerate_scenes_warn(tiny_run: Path, tmp_path: Path, kind: str) -> None:
    if kind == "all nodata":
        scene = write_raster(tmp_path / "s.tif", np.zeros((4, 70, 70), np.uint16), nodata=0)
        expect = "no valid pixel"
    elif kind == "one pixel":
        scene = write_raster(tmp_path / "s.tif", np.full((4, 1, 1), 900, np.uint16))
        expect = "1x1 px"
    else:
        data = np.full((4, 70, 70), 900.0, np.float32)
        data[:, :10] = np.nan
        scene = write_raster(tmp_path / "s.tif", data)
        expect = "NaN or infinite"
    r = run("predict", scene, "--model", tiny_run, "--out", tmp_path / "m.tif")
    assert r.exit_code == 0, r.output
    warnings = json.loads((tmp_path / "m.json").read_text())["warnings"]
    assert any(expect in w for w in warnings), warnings
