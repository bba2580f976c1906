"""``cloudcps suggest``: scoring, the spread-out pick, the outputs and their refusals."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.warp import transform as warp

from cloudcps.suggest import Candidate, class_weights, pick, write_geojson
from tests.conftest import run

CLASSES = ("clear", "thick cloud", "thin cloud", "cloud shadow")


def _tile(scene: str, row: int, col: int, size: int = 64, crs: str | None = "EPSG:32633") -> Any:
    tf = Affine(30.0, 0.0, 500000.0 + 30 * col, 0.0, -30.0, 5000000.0 - 30 * row)
    return {
        "id": f"{scene}_r{row:05d}_c{col:05d}",
        "scene": scene,
        "window": {"col_off": col, "row_off": row, "width": size, "height": size},
        "transform": list(tf)[:6],
        "crs": crs,
    }


def _cand(tile: dict[str, Any], score: float) -> Candidate:
    z = np.zeros(4)
    return Candidate(tile, 64 * 64, 64 * 64, 0, z, z, np.array([4096, 0, 0, 0]), score)


def test_pick_spreads_over_scenes_and_skips_neighbours() -> None:
    # scene a: a row of touching tiles with the best scores; scene b: worse ones
    a = [_cand(_tile("a", 0, 64 * i), 1.0 - 0.01 * i) for i in range(5)]
    b = [_cand(_tile("b", 0, 128 * i), 0.5 - 0.01 * i) for i in range(3)]
    ranked = sorted(a + b, key=lambda c: -c.score)
    chosen = pick(ranked, 4, per_scene=2)
    ids = [c.tile["id"] for c in chosen]
    assert ids == ["a_r00000_c00000", "a_r00000_c00128", "b_r00000_c00000", "b_r00000_c00128"]
    assert {c.rule for c in chosen} == {"spread"}
    # more than the rules allow: the scene cap goes first, then the neighbour rule
    chosen = pick(ranked, 8, per_scene=1)
    assert [c.rule for c in chosen].count("spread") == 2
    assert len(chosen) == 8 and len({c.tile["id"] for c in chosen}) == 8
    assert chosen[-1].rule == "score"


def test_rare_classes_weigh_more() -> None:
    w = class_weights(np.array([0.9, 0.08, 0.015, 0.005]))
    assert w[0] < w[1] < w[2] < w[3]
    assert float((np.array([0.9, 0.08, 0.015, 0.005]) * w).sum()) == pytest.approx(1.0)
    assert w[3] / w[0] < 40  # tempered, not inverse frequency


def test_tiles_without_crs_get_no_geometry(tmp_path: Path) -> None:
    c = _cand(_tile("p", 0, 0, crs=None), 0.3)
    c.rank = 1
    write_geojson(tmp_path / "s.geojson", [c], CLASSES)
    f = json.loads((tmp_path / "s.geojson").read_text())["features"][0]
    assert f["geometry"] is None
    assert f["properties"]["window"] == c.tile["window"] and f["properties"]["crs"] is None


def _suggest(tiny_run: Path, tiles: Path, out: Path, *extra: Any) -> Any:
    return run("suggest", "--model", tiny_run, "--data", tiles, "--out", out, *extra)


def test_suggest_writes_ranked_outputs_on_the_tile_grid(
    tiny_run: Path, tiny_tiles: Path, tmp_path: Path
) -> None:
    out = tmp_path / "r1"
    r = _suggest(tiny_run, tiny_tiles, out, "--count", "3")
    assert r.exit_code == 0, r.output
    manifest = json.loads((tiny_tiles / "manifest.json").read_text())
    tiles = {t["id"]: t for t in manifest["tiles"]}
    unlabeled = (tiny_tiles / "splits" / "unlabeled.txt").read_text().split()
    rows = list(csv.DictReader((out / "suggestions.csv").open()))
    assert [int(r["rank"]) for r in rows] == [1, 2, 3]
    assert all(r["tile"] in unlabeled for r in rows)
    scores = [float(r["score"]) for r in rows if r["pick"] == "spread"]
    assert scores == sorted(scores, reverse=True)
    for row in rows:
        t = tiles[row["tile"]]
        assert row["scene"] == t["scene"]
        assert [int(row[k]) for k in ("col_off", "row_off", "width", "height")] == [
            t["window"][k] for k in ("col_off", "row_off", "width", "height")
        ]
        shares = [float(row[f"share_{n.replace(' ', '_')}"]) for n in CLASSES]
        assert sum(shares) == pytest.approx(1.0, abs=1e-3)
    # the footprints, back in the native CRS, are the manifest windows
    gj = json.loads((out / "suggestions.geojson").read_text())
    assert gj["type"] == "FeatureCollection" and len(gj["features"]) == 3
    for f in gj["features"]:
        t = tiles[f["id"]]
        ring = f["geometry"]["coordinates"][0]
        assert all(-180 <= x <= 180 and -90 <= y <= 90 for x, y in ring)
        xs, ys = warp(CRS.from_epsg(4326), CRS.from_user_input(t["crs"]), *zip(*ring, strict=True))
        tf = Affine(*t["transform"])
        w, h = t["window"]["width"], t["window"]["height"]
        expected = [tf * (0, 0), tf * (w, 0), tf * (w, h), tf * (0, h), tf * (0, 0)]
        assert np.allclose(np.c_[xs, ys], expected, atol=0.01)
        assert f["properties"]["crs"] == t["crs"] and f["properties"]["window"] == t["window"]
    # the label templates sit on the tile grid and hold class ids or 255
    for row in rows:
        t = tiles[row["tile"]]
        with rasterio.open(out / "labels" / f"{row['tile']}.tif") as lab:
            assert lab.crs == CRS.from_user_input(t["crs"])
            assert lab.transform.almost_equals(Affine(*t["transform"]))
            assert (lab.width, lab.height) == (t["window"]["width"], t["window"]["height"])
            values = set(np.unique(lab.read(1)).tolist())
            assert values <= {0, 1, 2, 3, 255}
            assert lab.tags()["LABEL_ROUND"] == "1" and lab.tags()["TILE_ID"] == row["tile"]
    record = json.loads((out / "suggest.json").read_text())
    assert record["label_round"] == 1 and record["uncertainty"]["measure"] == "disagreement"
    assert sorted(record["written_files"]) == sorted(
        str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()
    )
    with rasterio.open(out / "suggestions.png") as png:
        assert png.width > 500 and png.height > 3 * 192
    # the ranking is deterministic
    again = tmp_path / "again"
    assert _suggest(tiny_run, tiny_tiles, again, "--count", "3").exit_code == 0
    assert (again / "suggestions.csv").read_text() == (out / "suggestions.csv").read_text()


def _refused(r: Any, *words: str) -> None:
    assert r.exit_code == 1, r.output
    assert len(r.output.strip().splitlines()) == 1, r.output
    for w in words:
        assert w in r.output, r.output


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        (["--count", "0"], ["--count 0"]),
        (["--per-scene", "0"], ["--per-scene 0"]),
        (["--split", "nope"], ["--split nope", "unlabeled"]),
        (["--split", "../x"], ["--split"]),
    ],
)
def test_bad_options_are_refused_and_nothing_is_written(
    tiny_run: Path, tiny_tiles: Path, tmp_path: Path, extra: list[str], words: list[str]
) -> None:
    out = tmp_path / "out"
    _refused(_suggest(tiny_run, tiny_tiles, out, *extra), *words)
    assert not out.exists()
    assert not list(tmp_path.glob(".out*"))


def test_a_run_of_other_classes_is_refused(
    tiny_run: Path, tiny_tiles: Path, tmp_path: Path
) -> None:
    other = tmp_path / "other"
    shutil.copytree(tiny_tiles, other)
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["classes"] = [{"id": 0, "name": "clear"}, {"id": 1, "name": "cloud"}]
    (other / "manifest.json").write_text(json.dumps(manifest))
    out = tmp_path / "out"
    _refused(_suggest(tiny_run, other, out), "trained for the classes", "--data")
    assert not out.exists()


def test_existing_outputs_are_kept_without_overwrite(
    tiny_run: Path, tiny_tiles: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    _refused(_suggest(tiny_run, tiny_tiles, out, "--count", "1"), "already exists")
    _refused(_suggest(tiny_run, tiny_tiles, out, "--count", "1", "--overwrite"), "did not write")
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    # a folder suggest wrote is replaced with --overwrite
    mine = tmp_path / "mine"
    assert _suggest(tiny_run, tiny_tiles, mine, "--count", "1").exit_code == 0
    r = _suggest(tiny_run, tiny_tiles, mine, "--count", "2", "--overwrite")
    assert r.exit_code == 0, r.output
    assert len(list((mine / "labels").iterdir())) == 2


def _tile_cli(root: Path, out: Path, *label_dirs: Path) -> Any:
    from tests.conftest import LMAP

    scenes = [root / "scenes" / f"s{i}.tif" for i in range(3)]
    dirs = [a for d in label_dirs for a in ("--label-dir", d)]
    opts = ["--label-map", LMAP, "--tile-size", "64", "--labeled-fraction", "1", "--val", "s2"]
    return run("tile", *scenes, *dirs, *opts, "--format", "png", "--out", out)


@pytest.fixture
def loop_root(tmp_path: Path) -> Path:
    """s0 labelled, s1 without a label raster, s2 labelled (validation)."""
    from tests.conftest import scene_pair

    for i in range(3):
        scene_pair(tmp_path, f"s{i}", 128, 128, seed=i, x0=500000.0 + 1e4 * i)
    (tmp_path / "labels" / "s1.tif").unlink()
    return tmp_path


def test_one_round_of_the_loop(tiny_run: Path, loop_root: Path) -> None:
    tiles0 = loop_root / "tiles0"
    assert _tile_cli(loop_root, tiles0, loop_root / "labels").exit_code == 0
    before = (tiles0 / "splits" / "labeled.txt").read_text().split()
    assert before and all(t.startswith("s0_") for t in before)
    r1 = loop_root / "round1"
    assert _suggest(tiny_run, tiles0, r1, "--count", "2").exit_code == 0
    suggested = [r["tile"] for r in csv.DictReader((r1 / "suggestions.csv").open())]
    assert len(suggested) == 2 and all(t.startswith("s1_") for t in suggested)
    # the person corrects the first template: its top rows are thin cloud
    first = r1 / "labels" / f"{suggested[0]}.tif"
    with rasterio.open(first, "r+") as dst:
        lab = dst.read(1)
        lab[:8] = 2
        dst.write(lab, 1)
    tiles1 = loop_root / "tiles1"
    r = _tile_cli(loop_root, tiles1, loop_root / "labels", r1 / "labels")
    assert r.exit_code == 0, r.output
    after = (tiles1 / "splits" / "labeled.txt").read_text().split()
    assert set(after) == set(before) | set(suggested)  # the earlier labelled tiles stay
    assert not set(suggested) & set((tiles1 / "splits" / "unlabeled.txt").read_text().split())
    manifest = json.loads((tiles1 / "manifest.json").read_text())
    tiles = {t["id"]: t for t in manifest["tiles"]}
    assert manifest["label_rounds"] == {"0": len(before), "1": 2}
    assert all(tiles[t]["label_round"] == 0 for t in before)
    for tid in suggested:
        assert tiles[tid]["label_round"] == 1 and tiles[tid]["label_files"] == [f"{tid}.tif"]
    s1 = next(s for s in manifest["scenes"] if s["id"] == "s1")
    assert {Path(tl["path"]).name for tl in s1["tile_labels"]} == {f"{t}.tif" for t in suggested}
    # the tile's label is the corrected template, 255 where it was left unlabelled
    from PIL import Image

    with rasterio.open(first) as src:
        template = src.read(1)
    label = np.asarray(Image.open(tiles1 / tiles[suggested[0]]["label"]))
    assert np.array_equal(label, template) and (label[:8] == 2).all()
    # the next suggestions are of round 2
    r2 = loop_root / "round2"
    assert _suggest(tiny_run, tiles1, r2, "--count", "1").exit_code == 0
    assert json.loads((r2 / "suggest.json").read_text())["label_round"] == 2


@pytest.mark.parametrize(
    ("edit", "words"),
    [("value", ["holds values [7]", "class ids"]), ("shift", ["pixel corner"])],
)
def test_bad_tile_labels_are_refused(loop_root: Path, edit: str, words: list[str]) -> None:
    from tests.conftest import write_raster

    lab = np.zeros((64, 64), np.uint8)
    x0, y0 = 500000.0 + 1e4 + 64 * 30, 5000000.0
    if edit == "value":
        lab[0, 0] = 7
    else:
        x0 += 15.0  # half a pixel off the scene's grid
    d = loop_root / "fixes"
    path = write_raster(d / "s1_r00000_c00064.tif", lab, transform=Affine(30, 0, x0, 0, -30, y0))
    out = loop_root / "t"
    r = _tile_cli(loop_root, out, loop_root / "labels", d)
    _refused(r, str(path), *words)
    assert not out.exists()
