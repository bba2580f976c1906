"""Metrics and the evaluate command: hand-computed scores, class folding, rasters, reports."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from click.testing import CliRunner

from cloudcps.cli.main import cli
from cloudcps.errors import InputError
from cloudcps.evaluate import (
    ClassFold,
    evaluate_models_on_tiles,
    evaluate_rasters,
    match_pairs,
    parse_merge,
    write_report,
)
from cloudcps.metrics import confusion_matrix, merge_confusion, scores
from cloudcps.models import load_for_inference
from tests.conftest import shared_data, write_raster


def test_scores_against_a_hand_computed_confusion_matrix() -> None:
    # reference rows, prediction columns:
    #            pred 0  pred 1  pred 2
    # ref 0         5       1       0
    # ref 1         2       4       0
    # ref 2         0       0       0      (class 2 absent everywhere)
    ref = np.array([0] * 6 + [1] * 6 + [255] * 3)
    pred = np.array([0] * 5 + [1] + [0] * 2 + [1] * 4 + [2, 1, 0])
    cm = confusion_matrix(pred, ref, 3)
    assert cm.tolist() == [[5, 1, 0], [2, 4, 0], [0, 0, 0]]
    s = scores(cm, ["a", "b", "c"])
    assert s["iou"][0] == pytest.approx(5 / 8) and s["iou"][1] == pytest.approx(4 / 7)
    assert s["iou"][2] is None  # absent: no IoU, left out of the mean
    assert s["miou"] == pytest.approx((5 / 8 + 4 / 7) / 2)
    assert s["f1"][0] == pytest.approx(10 / 13) and s["f1"][1] == pytest.approx(8 / 11)
    assert s["precision"][0] == pytest.approx(5 / 7) and s["recall"][0] == pytest.approx(5 / 6)
    assert s["pixel_accuracy"] == pytest.approx(9 / 12)
    import torch

    assert confusion_matrix(torch.tensor(pred), torch.tensor(ref), 3).tolist() == cm.tolist()


def test_class_folding() -> None:
    names = ("clear", "thick cloud", "thin cloud", "cloud shadow")
    fold = ClassFold.build(names, parse_merge(["1,2:1", "3:0"]))
    assert fold.lut == (0, 1, 1, 0) and fold.names == (
        "clear+cloud shadow",
        "thick cloud+thin cloud",
    )
    assert fold.apply(np.array([0, 1, 2, 3, 255])).tolist() == [0, 1, 1, 0, 255]
    cm = np.arange(16).reshape(4, 4)
    assert merge_confusion(cm, fold.lut, 2).sum() == cm.sum()
    with pytest.raises(ValueError, match="--merge"):
        parse_merge(["1,2-1"])
    with pytest.raises(InputError, match="class ids"):
        ClassFold.build(names, {7: 1})


def _mask(path: Path, data: np.ndarray, tf: Affine | None = None, crs: str = "EPSG:32633") -> Path:
    write_raster(path, data.astype(np.uint8), transform=tf, crs=crs, nodata=255)
    with rasterio.open(path, "r+") as d:
        d.update_tags(CLASSES="clear,thick cloud,thin cloud,cloud shadow")
    return path


def test_evaluate_rasters_with_merge_and_nodata(tmp_path: Path) -> None:
    pred = np.array([[0, 1, 2, 3], [1, 2, 255, 0]])
    ref = np.array([[0, 1, 1, 0], [0, 1, 1, 9]])  # binary cloud reference, 9 = its nodata
    p = _mask(tmp_path / "p.tif", pred)
    r = write_raster(tmp_path / "r.tif", ref.astype(np.uint8), nodata=9)
    ev = evaluate_rasters([(p, r)], merge=parse_merge(["1,2:1", "3:0"]))
    # folded pred: [[0,1,1,0],[1,1,-,0]]; pixel (1,2) is pred nodata and (1,3) ref nodata
    assert ev.confusion["prediction"].tolist() == [[2, 1], [0, 3]]


def test_misaligned_rasters(tmp_path: Path) -> None:
    p = _mask(tmp_path / "p.tif", np.zeros((4, 4)))
    shifted = Affine(30.0, 0.0, 500060.0, 0.0, -30.0, 5000000.0)
    r = write_raster(tmp_path / "r.tif", np.zeros((4, 4), np.uint8), transform=shifted)
    with pytest.raises(InputError, match=r"do not line up.*--align"):
        evaluate_rasters([(p, r)])
    ev = evaluate_rasters([(p, r)], align=True)  # resampled onto the reference grid
    assert ev.confusion["prediction"][0, 0] == 8  # two columns of the reference lie outside


def test_unknown_reference_values(tmp_path: Path) -> None:
    p = _mask(tmp_path / "p.tif", np.zeros((4, 4)))
    r = write_raster(tmp_path / "r.tif", np.full((4, 4), 128, np.uint8))
    with pytest.raises(InputError, match=r"holds values \[128\]"):
        evaluate_rasters([(p, r)])
    ev = evaluate_rasters([(p, r)], label_map={128: 0, 255: 1, 192: 2, 64: 3})
    assert ev.confusion["prediction"][0, 0] == 16


def test_pairs_by_folder(tmp_path: Path) -> None:
    (tmp_path / "pred").mkdir()
    (tmp_path / "ref").mkdir()
    for n in ("a", "b"):
        _mask(tmp_path / "pred" / f"{n}_mask.tif", np.zeros((2, 2)))
        write_raster(tmp_path / "ref" / f"{n}.tif", np.zeros((2, 2), np.uint8))
    pairs = match_pairs([tmp_path / "pred"], [tmp_path / "ref"])
    assert [(p.name, r.name) for p, r in pairs] == [
        ("a_mask.tif", "a.tif"),
        ("b_mask.tif", "b.tif"),
    ]
    with pytest.raises(InputError, match="as many --ref"):
        match_pairs([tmp_path / "pred" / "a_mask.tif"], [])


def test_models_on_tiles_report(tiny_run: Path, tiny_tiles: Path, tmp_path: Path) -> None:
    a = load_for_inference(tiny_run, nets="1")
    b = load_for_inference(tiny_run, nets="both")
    ev = evaluate_models_on_tiles([("net1", a), ("both", b)], tiny_tiles, n_samples=2)
    assert set(ev.confusion) == {"net1", "both"}
    n_px = sum(
        c
        for t in json.loads((tiny_tiles / "manifest.json").read_text())["tiles"]
        if t["id"] in (tiny_tiles / "splits" / "val.txt").read_text().split()
        for c in t["class_counts"]
    )
    assert ev.confusion["net1"].sum() == n_px
    report = write_report(ev, tmp_path / "rep")
    assert {p.name for p in (tmp_path / "rep").iterdir()} == {
        "report.json",
        "report.md",
        "confusion.png",
        "samples.png",
    }
    assert set(report["results"]) == {"net1", "both"}
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "| thin cloud |" in md and "mIoU" in md


def test_cli_evaluate_and_bad_inputs(tiny_run: Path, tiny_tiles: Path, tmp_path: Path) -> None:
    r = CliRunner().invoke(
        cli,
        [
            "evaluate",
            "--model",
            str(tiny_run),
            "--data",
            str(tiny_tiles),
            "--out",
            str(tmp_path / "rep"),
        ],
    )
    assert r.exit_code == 0, r.output
    assert "mIoU" in r.output and (tmp_path / "rep" / "samples.png").exists()
    r = CliRunner().invoke(
        cli,
        [
            "evaluate",
            "--model",
            str(tiny_run),
            "--data",
            str(tiny_tiles),
            "--out",
            str(tmp_path / "rep"),
        ],
    )
    assert r.exit_code == 1 and "already exists" in r.output
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    r = CliRunner().invoke(
        cli,
        [
            "evaluate",
            "--model",
            str(empty),
            "--data",
            str(tiny_tiles),
            "--out",
            str(tmp_path / "r2"),
        ],
    )
    assert r.exit_code == 1 and "not a readable checkpoint" in r.output
    empty_tif = tmp_path / "empty.tif"
    empty_tif.write_bytes(b"")
    r = CliRunner().invoke(
        cli,
        [
            "evaluate",
            "--pred",
            str(empty_tif),
            "--ref",
            str(empty_tif),
            "--out",
            str(tmp_path / "r3"),
        ],
    )
    assert r.exit_code == 1 and "not a readable raster" in r.output
    assert "Traceback" not in r.output and not (tmp_path / "r3").exists()


def test_real_oncloudn_with_merge(tiny_run: Path, tmp_path: Path) -> None:
    images = shared_data("oncloudn", "images")
    labels = shared_data("oncloudn", "labels")
    masks = tmp_path / "masks"
    r = CliRunner().invoke(
        cli,
        [
            "-q",
            "predict",
            *map(str, sorted(images.glob("*.tif"))),
            "--model",
            str(tiny_run),
            "--out",
            str(masks),
        ],
    )
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(
        cli,
        [
            "evaluate",
            "--pred",
            str(masks),
            "--ref",
            str(labels),
            "--merge",
            "1,2:1",
            "--merge",
            "3:0",
            "--out",
            str(tmp_path / "rep"),
        ],
    )
    assert r.exit_code == 0, r.output
    report = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert report["classes"] == ["clear+cloud shadow", "thick cloud+thin cloud"]
    assert len(report["files"]) == 5
    assert report["results"]["prediction"]["pixels"] == 5 * 512 * 512
    assert (tmp_path / "rep" / "samples.png").exists()
