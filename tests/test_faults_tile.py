"""Fault injection for ``tile`` and ``evaluate`` (issue 17): ownership of what --overwrite
replaces, values evaluate does not understand, real system failures (SIGKILL, a full disk, a
decompression bomb) and checks that came late or said the wrong thing.

Every case runs the real command line and checks exit status 1, one line naming the file or
option and the fix, and byte-identical inputs and unrelated files (``fails``)."""

from __future__ import annotations

import json
import signal
import struct
import time
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from PIL import Image

from tests.conftest import cli_in_small_fs, scene_pair, write_raster
from tests.test_faults import _cli_proc, _train_args, fails, run, tile_args

CLASSES = "clear,thick cloud,thin cloud,cloud shadow"


# the fixtures scenes and tiles are in conftest.py


def _mask(path: Path, data: np.ndarray, **kw: object) -> Path:
    """A prediction raster as cloudcps writes it (CLASSES tag)."""
    write_raster(path, data, **kw)  # type: ignore[arg-type]
    with rasterio.open(path, "r+") as d:
        d.update_tags(CLASSES=CLASSES)
    return path


def _two_rows(h: int = 100, w: int = 100) -> np.ndarray:
    ref = np.zeros((h, w), np.uint8)
    ref[: h // 2] = 1
    return ref


def _one_error_line(text: str) -> str:
    assert "Traceback" not in text, text
    assert text.count("Error: ") == 1, text
    message = text.split("Error: ", 1)[1].strip()
    assert "\n" not in message, text
    return message


# --------------------------------------------------------------------------------------------
# 1. --overwrite replaces only the files the manifest or report lists
# --------------------------------------------------------------------------------------------


def test_tile_overwrite_refuses_a_user_split_list(
    tiles: Path, scenes: Path, tmp_path: Path
) -> None:
    mine = tiles / "splits" / "my_val.txt"
    mine.write_text("a_r00000_c00000\n")
    args = tile_args(scenes, tiles, "--val", "b", "--overwrite")
    msg = fails(tmp_path, args, "splits/my_val.txt")
    assert "did not write" in msg
    # moved away, the folder is replaced; a manifest written before split files were recorded
    # (standard split names only) is accepted as well
    mine.unlink()
    manifest = json.loads((tiles / "manifest.json").read_text())
    manifest.pop("split_files", None)
    (tiles / "manifest.json").write_text(json.dumps(manifest))
    r = run(*args)
    assert r.exit_code == 0, r.output
    new = json.loads((tiles / "manifest.json").read_text())
    assert sorted(new["split_files"]) == [
        f"splits/{n}.txt" for n in ("labeled", "unlabeled", "val")
    ]


def test_tile_overwrite_refuses_a_user_file_among_the_images(
    tiles: Path, scenes: Path, tmp_path: Path
) -> None:
    (tiles / "images" / "README.txt").write_text("where these tiles come from")
    msg = fails(tmp_path, tile_args(scenes, tiles, "--overwrite"), "images/README.txt")
    assert "--out" in msg


def test_tile_overwrite_refuses_a_tile_the_manifest_does_not_list(
    tiles: Path, scenes: Path, tmp_path: Path
) -> None:
    manifest = json.loads((tiles / "manifest.json").read_text())
    dropped = manifest["tiles"].pop()
    (tiles / "manifest.json").write_text(json.dumps(manifest))
    fails(tmp_path, tile_args(scenes, tiles, "--overwrite"), dropped["image"])


def test_evaluate_overwrite_refuses_a_file_the_report_does_not_list(tmp_path: Path) -> None:
    ref = write_raster(tmp_path / "r.tif", _two_rows(40, 40))
    rep = tmp_path / "rep"
    args = ["evaluate", "--pred", ref, "--ref", ref, "--samples", "0", "--out", rep]
    assert run(*args).exit_code == 0
    assert "samples.png" not in json.loads((rep / "report.json").read_text())["written_files"]
    (rep / "samples.png").write_bytes(b"my own figure")
    fails(tmp_path, [*args, "--overwrite"], "samples.png")


def test_evaluate_overwrite_refuses_a_report_cloudcps_did_not_write(tmp_path: Path) -> None:
    ref = write_raster(tmp_path / "r.tif", _two_rows(40, 40))
    rep = tmp_path / "rep"
    rep.mkdir()
    (rep / "report.json").write_text('{"reviewer": 2, "verdict": "accept"}\n')
    (rep / "report.md").write_text("# my review\n")
    args = ["evaluate", "--pred", ref, "--ref", ref, "--out", rep, "--overwrite"]
    fails(tmp_path, args, "report.json")


# --------------------------------------------------------------------------------------------
# 4. evaluate refuses values it does not understand
# --------------------------------------------------------------------------------------------


def test_evaluate_refuses_prediction_codes_outside_the_classes(tmp_path: Path) -> None:
    ref = write_raster(tmp_path / "ref.tif", _two_rows())
    pred_data = _two_rows()
    pred_data[:50] = 7  # never predicts thick cloud: it used to score mIoU 100 %
    pred = _mask(tmp_path / "p.tif", pred_data)
    args = ["evaluate", "--pred", pred, "--ref", ref, "--out", tmp_path / "rep"]
    msg = fails(tmp_path, args, "p.tif")
    assert "7" in msg and "5000" in msg and "prediction" in msg


def test_evaluate_refuses_undeclared_negative_reference_codes(tmp_path: Path) -> None:
    pred = _mask(tmp_path / "p.tif", _two_rows())
    ref_data = _two_rows().astype(np.int16)
    ref_data[90:] = -1  # used to be clipped to 0 (clear) and scored
    ref = write_raster(tmp_path / "ref.tif", ref_data)
    args = ["evaluate", "--pred", pred, "--ref", ref, "--out", tmp_path / "rep"]
    msg = fails(tmp_path, args, "ref.tif")
    assert "-1" in msg and "1000" in msg
    declared = write_raster(tmp_path / "nd.tif", ref_data, nodata=-1)  # declared: no reference
    r = run("evaluate", "--pred", pred, "--ref", declared, "--out", tmp_path / "rep")
    assert r.exit_code == 0, r.output
    cm = json.loads((tmp_path / "rep" / "report.json").read_text())["results"]["prediction"]
    assert np.asarray(cm["confusion"]).sum() == 90 * 100


def test_evaluate_folders_refuse_unmatched_files(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    for n in "ab":
        _mask(tmp_path / "P" / f"{n}_mask.tif", _two_rows(20, 20))
    for n in "bc":
        write_raster(tmp_path / "R" / f"{n}.tif", _two_rows(20, 20))
    args = ["evaluate", "--pred", tmp_path / "P", "--ref", tmp_path / "R", "--out"]
    msg = fails(tmp_path, [*args, tmp_path / "rep"], "a_mask.tif")
    assert "c.tif" in msg and "--allow-missing" in msg
    with caplog.at_level("WARNING"):
        r = run(*args, tmp_path / "rep", "--allow-missing")
    assert r.exit_code == 0, r.output
    warned = [m.getMessage() for m in caplog.records if "no match" in m.getMessage()]
    assert len(warned) == 1 and "a_mask.tif" in warned[0] and "c.tif" in warned[0], warned


def test_evaluate_names_every_missing_file_before_any_work(tmp_path: Path) -> None:
    ref = write_raster(tmp_path / "r.tif", _two_rows(40, 40))
    gone = tmp_path / "gone_mask.tif"
    args = ["evaluate", "--pred", ref, "--ref", ref, "--pred", gone, "--ref", tmp_path / "typo.tif"]
    msg = fails(tmp_path, [*args, "--out", tmp_path / "rep"], "gone_mask.tif")
    assert "typo.tif" in msg and "not exist" in msg


# --------------------------------------------------------------------------------------------
# 7. Real failures: a decompression bomb, SIGKILL, a full disk
# --------------------------------------------------------------------------------------------


def _png_bomb(path: Path, side: int = 40000) -> Path:
    """A PNG whose header says 8-bit grey, side x side px (1.6 G px at 40000), in 200 bytes."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * (side + 1))
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    path.write_bytes(png)
    return path


@pytest.mark.parametrize("command", ["evaluate", "train"])
def test_a_decompression_bomb_label_is_named(
    tiles: Path, tiny_run: Path, tmp_path: Path, command: str
) -> None:
    split = "val" if command == "evaluate" else "labeled"
    tid = (tiles / "splits" / f"{split}.txt").read_text().split()[0]
    bomb = _png_bomb(tiles / "labels" / f"{tid}.png")
    if command == "evaluate":
        args = ["evaluate", "--model", tiny_run, "--data", tiles, "--out", tmp_path / "rep"]
        msg = fails(tmp_path, args, bomb.name)
    else:  # (what a stopped training leaves in its run folder is the trainer's business)
        args = [*_train_args(tiles, tmp_path / "run"), "--mode", "supervised"]
        msg = fails(tiles, args, bomb.name)
    assert "decompression bomb" in msg or "exceeds" in msg


def _kill_when(proc: object, pattern: str, folder: Path, timeout: float = 120) -> None:
    import subprocess

    assert isinstance(proc, subprocess.Popen)
    deadline = time.time() + timeout
    while time.time() < deadline and not list(folder.glob(pattern)):
        if proc.poll() is not None:
            raise AssertionError(f"the command ended before it could be killed: {proc.stderr}")
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert list(folder.glob(pattern)), "SIGKILL left no temporary folder to clean up"


def test_what_a_sigkill_during_tile_leaves_is_removed_by_the_next_run(tmp_path: Path) -> None:
    scene = scene_pair(tmp_path / "data", "big", 1500, 1500)[0]
    out = tmp_path / "tiles"
    args = ["tile", str(scene), "--tile-size", "32", "--format", "png", "--out", str(out)]
    _kill_when(_cli_proc("-q", *args), ".tiles.tmp-*/images/*", tmp_path)
    args[3] = "64"  # a quicker rerun into the same output
    r = run(*args)
    assert r.exit_code == 0, r.output
    assert not list(tmp_path.glob(".tiles.tmp-*"))


def test_what_a_sigkill_during_evaluate_leaves_is_removed_by_the_next_run(tmp_path: Path) -> None:
    ref = write_raster(tmp_path / "r.tif", _two_rows(3000, 3000))
    rep = tmp_path / "rep"
    args = ["evaluate", "--pred", str(ref), "--ref", str(ref), "--out", str(rep)]
    _kill_when(_cli_proc("-q", *args), ".rep.tmp-*", tmp_path)
    r = run(*args)
    assert r.exit_code == 0, r.output
    assert not list(tmp_path.glob(".rep.tmp-*"))


def _left(stdout: str) -> list[str]:
    listing = stdout.split("--- left:", 1)[1].splitlines()
    return [ln for ln in listing if ln.strip() and not ln.endswith(":")]


def test_a_really_full_disk_during_tile_is_one_line(tmp_path: Path) -> None:
    scene = scene_pair(tmp_path / "data", "a", 400, 400)[0]
    small = tmp_path / "small"
    out = small / "tiles"
    args = ["tile", scene, "--tile-size", "64", "--format", "png", "--out", out]
    code, stdout, stderr = cli_in_small_fs(small, 256, args)
    assert code == 1, stderr
    msg = _one_error_line(stderr)
    assert "free some space" in msg and str(out) in msg and ".tmp-" not in msg, msg
    assert _left(stdout) == [], stdout


def test_a_really_full_disk_during_evaluate_is_one_line(tmp_path: Path) -> None:
    ref = write_raster(tmp_path / "r.tif", _two_rows(200, 200))
    small = tmp_path / "small"
    out = small / "rep"
    args = ["evaluate", "--pred", ref, "--ref", ref, "--out", out]
    code, stdout, stderr = cli_in_small_fs(small, 12, args)
    assert code == 1, stderr
    msg = _one_error_line(stderr)
    assert "free some space" in msg and str(out) in msg and ".tmp-" not in msg, msg
    assert _left(stdout) == [], stdout


# --------------------------------------------------------------------------------------------
# 8. Checks that came late or said the wrong thing
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("workers", ["-3", "0"])
def test_tile_workers_must_be_positive(scenes: Path, tmp_path: Path, workers: str) -> None:
    args = tile_args(scenes, tmp_path / "t")
    args[args.index("--workers") + 1] = workers
    fails(tmp_path, args, "--workers")


def test_tile_names_every_missing_scene_before_any_work(scenes: Path, tmp_path: Path) -> None:
    typo = scenes / "scenes" / "c.tif"
    glob = scenes / "scenes" / "*.TIF"
    args = ["tile", scenes / "scenes" / "a.tif", glob, typo, "--tile-size", "64"]
    msg = fails(tmp_path, [*args, "--out", tmp_path / "t"], "c.tif")
    assert "*.TIF" in msg and "matched no file" in msg


def test_a_tile_size_larger_than_the_scene_says_so(scenes: Path, tmp_path: Path) -> None:
    args = ["tile", scenes / "scenes" / "a.tif", "--tile-size", "1024", "--out", tmp_path / "t"]
    msg = fails(tmp_path, args, "smaller than --tile-size 1024")
    assert "96x96" in msg and "a.tif" in msg


def test_an_undefined_miou_is_not_printed_as_zero(
    tiles: Path, tiny_run: Path, tmp_path: Path
) -> None:
    for tid in (tiles / "splits" / "val.txt").read_text().split():
        lab = tiles / "labels" / f"{tid}.png"
        Image.fromarray(np.full((64, 64), 255, np.uint8)).save(lab)  # nothing labelled
    rep = tmp_path / "rep"
    r = run("evaluate", "--model", tiny_run, "--data", tiles, "--out", rep)
    assert r.exit_code == 0, r.output
    assert "0.0%" not in r.output and "mIoU n/a" in r.output, r.output
    assert json.loads((rep / "report.json").read_text())["results"]["R"]["miou"] is None
    assert "| mIoU | - |" in (rep / "report.md").read_text()


@pytest.mark.parametrize("which", ["pred", "ref"])
def test_align_with_a_raster_without_crs_names_it(tmp_path: Path, which: str) -> None:
    grid = Affine(30.0, 0.0, 500300.0, 0.0, -30.0, 5000000.0)
    geo = _mask(tmp_path / "geo.tif", _two_rows())
    plain = _mask(tmp_path / "plain.tif", _two_rows(80, 80), crs=None, transform=grid)
    pred, ref = (plain, geo) if which == "pred" else (geo, plain)
    args = ["evaluate", "--pred", pred, "--ref", ref, "--align", "--out", tmp_path / "rep"]
    msg = fails(tmp_path, args, "plain.tif")
    assert "no CRS" in msg and "--align" in msg


def _zip(path: Path, member: Path) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        z.write(member, member.name)
    return path


@pytest.mark.parametrize("form", ["/vsizip/{zip}/{name}", "zip+file://{zip}!/{name}"])
def test_gdal_virtual_paths_are_opened(scenes: Path, tmp_path: Path, form: str) -> None:
    scene = scenes / "scenes" / "a.tif"
    archive = _zip(tmp_path / "scenes.zip", scene)
    virtual = form.format(zip=archive, name=scene.name)
    r = run("tile", virtual, "--tile-size", "64", "--out", tmp_path / "t")
    assert r.exit_code == 0, r.output
    assert len(json.loads((tmp_path / "t" / "manifest.json").read_text())["tiles"]) == 4
    ref = write_raster(tmp_path / "r.tif", _two_rows(40, 40))
    archive = _zip(tmp_path / "refs.zip", ref)
    virtual = form.format(zip=archive, name=ref.name)
    r = run("evaluate", "--pred", virtual, "--ref", virtual, "--out", tmp_path / "rep")
    assert r.exit_code == 0, r.output
    missing = form.format(zip=archive, name="nothere.tif")
    fails(
        tmp_path, ["evaluate", "--pred", missing, "--ref", ref, "--out", tmp_path / "x"], "nothere"
    )
