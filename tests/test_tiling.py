"""The tiler: grid, georeferencing, stretch, labels, splits and bad input."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from click.testing import CliRunner
from PIL import Image

from cloudcps.cli.main import cli
from cloudcps.contract import StretchSpec, parse_bands, parse_label_map, parse_stretch
from cloudcps.errors import InputError
from cloudcps.tiling import TileOptions, grid_offsets, tile_scenes, tile_windows
from tests.conftest import L8_MAP, SceneFactory, shared_data, write_raster


def _manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


def _split(out: Path, name: str) -> list[str]:
    return (out / "splits" / f"{name}.txt").read_text().split()


@pytest.mark.parametrize(
    ("length", "tile", "overlap"),
    [(300, 128, 0), (256, 128, 0), (1947, 1024, 0), (100, 128, 0), (1000, 256, 64), (257, 256, 32)],
)
def test_grid_reaches_every_edge(length: int, tile: int, overlap: int) -> None:
    offs = grid_offsets(length, tile, overlap)
    assert offs[0] == 0
    assert offs[-1] + tile >= length  # the far edge is covered
    assert offs[-1] < length  # and no tile lies wholly outside
    assert all(b - a == tile - overlap for a, b in itertools.pairwise(offs))
    covered = np.zeros(length, bool)
    for o in offs:
        covered[o : o + tile] = True
    assert covered.all()


def test_windows_count_matches_s2_geometry() -> None:
    assert len(tile_windows(1933, 1947, 1024, 0)) == 4


def test_tiles_keep_georeferencing_and_cover_scene(
    make_scene: SceneFactory, tmp_path: Path
) -> None:
    img, _ = make_scene(height=300, width=340)
    out = tmp_path / "T"
    summary = tile_scenes([img], out, TileOptions(tile_size=128, image_format="png"))
    man = _manifest(out)
    assert summary.tiles == 9 == len(man["tiles"])
    with rasterio.open(img) as src:
        tf, crs = src.transform, src.crs
    for t in man["tiles"]:
        w = t["window"]
        expected = tf @ Affine.translation(w["col_off"], w["row_off"])
        assert np.allclose(t["transform"], list(expected)[:6])
        assert t["crs"] == "EPSG:32633" == f"EPSG:{crs.to_epsg()}"
        vw = t["valid_window"]
        assert vw["width"] == min(128, 340 - w["col_off"])
        assert vw["height"] == min(128, 300 - w["row_off"])
        with Image.open(out / t["image"]) as im:
            assert im.size == (128, 128) and im.mode == "RGB"
    cols = {t["valid_window"]["col_off"] + t["valid_window"]["width"] for t in man["tiles"]}
    rows = {t["valid_window"]["row_off"] + t["valid_window"]["height"] for t in man["tiles"]}
    assert max(cols) == 340 and max(rows) == 300
    assert man["bands"]["input"] == [1, 2, 3, 4] and man["bands"]["dropped"] == ["nir"]


def test_one_stretch_for_all_tiles(make_scene: SceneFactory, tmp_path: Path) -> None:
    img, _ = make_scene(height=256, width=256, seed=3)
    out = tmp_path / "T"
    stretch = StretchSpec("fixed", ranges=((0.0, 8000.0),))
    tile_scenes([img], out, TileOptions(tile_size=128, stretch=stretch, image_format="png"))
    with rasterio.open(img) as src:
        rgb = src.read([1, 2, 3]).astype(np.float64)
    expected = np.clip(np.rint(rgb / 8000.0 * 255), 0, 255)
    for t in _manifest(out)["tiles"]:
        w = t["window"]
        tile = np.asarray(Image.open(out / t["image"])).transpose(2, 0, 1)
        ref = expected[:, w["row_off"] : w["row_off"] + 128, w["col_off"] : w["col_off"] + 128]
        assert np.array_equal(tile, ref)  # same mapping in every tile, no per-tile stretch
    assert _manifest(out)["stretch"]["high"] == [8000.0] * 4


def test_auto_stretch_is_shared_and_recorded(make_scene: SceneFactory, tmp_path: Path) -> None:
    a, _ = make_scene("a", seed=1)
    b, _ = make_scene("b", seed=2, x0=600000.0)
    out = tmp_path / "T"
    tile_scenes([a, b], out, TileOptions(tile_size=128, image_format="png"))
    st = _manifest(out)["stretch"]
    assert st["method"] == "auto" and st["percentiles"] == [1.0, 99.5]
    assert all(h > lo for lo, h in zip(st["low"], st["high"], strict=True))


def test_uint8_passes_through(tmp_path: Path) -> None:
    data = np.random.default_rng(0).integers(0, 256, (4, 64, 64)).astype(np.uint8)
    img = write_raster(tmp_path / "u8.tif", data)
    out = tmp_path / "T"
    tile_scenes([img], out, TileOptions(tile_size=64, image_format="png"))
    tile = np.asarray(Image.open(out / _manifest(out)["tiles"][0]["image"])).transpose(2, 0, 1)
    assert np.array_equal(tile, data[:3])
    assert _manifest(out)["stretch"]["method"] == "none"


def test_labels_are_mapped(make_scene: SceneFactory, tmp_path: Path) -> None:
    img, lab = make_scene(height=256, width=256)
    out = tmp_path / "T"
    tile_scenes(
        [img],
        out,
        TileOptions(tile_size=128, label_dirs=(lab.parent,), label_map=L8_MAP, labeled_fraction=1),
    )
    with rasterio.open(lab) as src:
        codes = src.read(1)
    lut = np.full(256, 255, np.uint8)
    for k, v in L8_MAP.items():
        lut[k] = v
    for t in _manifest(out)["tiles"]:
        w = t["window"]
        label = np.asarray(Image.open(out / t["label"]))
        ref = lut[codes[w["row_off"] : w["row_off"] + 128, w["col_off"] : w["col_off"] + 128]]
        assert np.array_equal(label, ref)
        assert t["class_counts"] == [int((label == c).sum()) for c in range(4)]


def test_unknown_label_value_is_named(make_scene: SceneFactory, tmp_path: Path) -> None:
    img, lab = make_scene()
    opts = TileOptions(tile_size=128, label_dirs=(lab.parent,), label_map={128: 0, 255: 1, 192: 2})
    with pytest.raises(
        InputError, match=r"labels/scene\.tif holds values not in the label map: 64"
    ):
        tile_scenes([img], tmp_path / "T", opts)
    assert not (tmp_path / "T").exists()
    opts.unknown_labels = "ignore"
    tile_scenes([img], tmp_path / "T", opts)
    labels = [np.asarray(Image.open(p)) for p in (tmp_path / "T" / "labels").iterdir()]
    assert set(np.unique(np.concatenate([x.ravel() for x in labels]))) == {0, 1, 2, 255}


def test_class_ids_without_map_must_be_valid(tmp_path: Path) -> None:
    img = write_raster(tmp_path / "s" / "a.tif", np.ones((4, 64, 64), np.uint16))
    write_raster(tmp_path / "l" / "a.tif", np.full((64, 64), 7, np.uint8))
    with pytest.raises(InputError, match="values not in the label map: 7; values must be class"):
        tile_scenes([img], tmp_path / "T", TileOptions(tile_size=64, label_dirs=(tmp_path / "l",)))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"shape": (64, 80)}, "is 80x64 but its scene"),
        ({"transform": Affine(30.0, 0.0, 500030.0, 0.0, -30.0, 5000000.0)}, "has transform"),
        ({"crs": "EPSG:4326"}, "is in EPSG:4326 but its scene"),
    ],
)
def test_misaligned_label_is_refused(tmp_path: Path, kwargs: dict, message: str) -> None:
    img = write_raster(tmp_path / "s" / "a.tif", np.ones((4, 64, 64), np.uint16))
    shape = kwargs.pop("shape", (64, 64))
    write_raster(tmp_path / "l" / "a.tif", np.zeros(shape, np.uint8), **kwargs)
    with pytest.raises(InputError, match=message):
        tile_scenes([img], tmp_path / "T", TileOptions(tile_size=64, label_dirs=(tmp_path / "l",)))


def test_nodata_becomes_ignore(make_scene: SceneFactory, tmp_path: Path) -> None:
    img, lab = make_scene(height=128, width=128, nodata_border=20)
    out = tmp_path / "T"
    tile_scenes(
        [img],
        out,
        TileOptions(
            tile_size=128,
            label_dirs=(lab.parent,),
            label_map=L8_MAP,
            labeled_fraction=1,
            image_format="png",
        ),
    )
    t = _manifest(out)["tiles"][0]
    label = np.asarray(Image.open(out / t["label"]))
    valid = np.asarray(Image.open(out / t["valid_mask"])) > 0
    assert (label[:20] == 255).all() and (label[:, :20] == 255).all()
    assert not valid[:20].any() and valid[20:, 20:].all()
    assert t["valid_fraction"] == pytest.approx(108 * 108 / 128**2, abs=1e-6)
    image = np.asarray(Image.open(out / t["image"]))
    assert (image[:20] == 0).all()


def test_low_valid_tiles_are_skipped(make_scene: SceneFactory, tmp_path: Path) -> None:
    img, _ = make_scene(height=260, width=128)  # the second row of tiles is 4/128 valid
    s = tile_scenes([img], tmp_path / "T", TileOptions(tile_size=128, min_valid_fraction=0.1))
    assert s.tiles == 2 and s.skipped_low_valid == 1


def test_splits_reproducible_and_scene_level(make_scene: SceneFactory, tmp_path: Path) -> None:
    scenes = [make_scene(f"s{i}", seed=i, x0=500000.0 + i * 20000)[0] for i in range(5)]
    label_dir = scenes[0].parent.parent / "labels"

    def run(out: Path, seed: int) -> dict[str, list[str]]:
        opts = TileOptions(
            tile_size=64,
            label_dirs=(label_dir,),
            label_map=L8_MAP,
            val_fraction=0.4,
            labeled_fraction=0.25,
            seed=seed,
        )
        tile_scenes(scenes, out, opts)
        return {n: _split(out, n) for n in ("labeled", "unlabeled", "val")}

    a, b, c = run(tmp_path / "a", 1), run(tmp_path / "b", 1), run(tmp_path / "c", 2)
    assert a == b and a != c
    scene_of = {t["id"]: t["scene"] for t in _manifest(tmp_path / "a")["tiles"]}
    val_scenes = {scene_of[i] for i in a["val"]}
    train_scenes = {scene_of[i] for i in a["labeled"] + a["unlabeled"]}
    assert len(val_scenes) == 2 and not val_scenes & train_scenes
    n_train = len(a["labeled"]) + len(a["unlabeled"])
    assert len(a["labeled"]) == round(0.25 * n_train)
    assert not set(a["labeled"]) & set(a["unlabeled"])


def test_labeled_subset_covers_every_class(make_scene: SceneFactory, tmp_path: Path) -> None:
    img, lab = make_scene(height=512, width=512)
    opts = TileOptions(
        tile_size=64, label_dirs=(lab.parent,), label_map=L8_MAP, labeled_fraction=0.07, seed=5
    )
    tile_scenes([img], tmp_path / "T", opts)
    man = _manifest(tmp_path / "T")
    by_id = {t["id"]: t for t in man["tiles"]}
    counts = np.sum([by_id[i]["class_counts"] for i in _split(tmp_path / "T", "labeled")], axis=0)
    assert (counts > 0).all()


def test_unlabelled_scenes_and_workers(make_scene: SceneFactory, tmp_path: Path) -> None:
    a, lab = make_scene("a")
    b, _ = make_scene("b", x0=700000.0)
    lab.parent.joinpath("b.tif").unlink()  # b has no labels
    outs = []
    for workers in (1, 2):
        out = tmp_path / f"T{workers}"
        opts = TileOptions(
            tile_size=128, label_dirs=(lab.parent,), label_map=L8_MAP, workers=workers
        )
        tile_scenes([a, b], out, opts)
        outs.append(out)
    m1, m2 = _manifest(outs[0]), _manifest(outs[1])
    assert m1["tiles"] == m2["tiles"]
    assert all(i.startswith("b_") or True for i in _split(outs[0], "unlabeled"))
    assert {t["id"] for t in m1["tiles"] if t["scene"] == "b"} <= set(_split(outs[0], "unlabeled"))
    assert all(t["label"] is None for t in m1["tiles"] if t["scene"] == "b")


def test_scene_without_crs(tmp_path: Path) -> None:
    img = write_raster(
        tmp_path / "p.tif", np.ones((4, 64, 64), np.uint16), crs=None, transform=Affine.identity()
    )
    s = tile_scenes([img], tmp_path / "T", TileOptions(tile_size=64))
    t = _manifest(tmp_path / "T")["tiles"][0]
    assert t["crs"] is None and t["transform"] == [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    assert any("no CRS" in w for w in s.warnings)


def test_rgb_file_with_three_bands(tmp_path: Path) -> None:
    img = write_raster(tmp_path / "rgb.tif", np.ones((3, 64, 64), np.uint16))
    with pytest.raises(InputError, match="has 3 band"):  # NIR asked for, not there
        tile_scenes([img], tmp_path / "T", TileOptions(tile_size=64, bands=(1, 2, 3, 4)))
    tile_scenes([img], tmp_path / "T", TileOptions(tile_size=64))  # by default: R, G, B
    assert _manifest(tmp_path / "T")["bands"]["input"] == [1, 2, 3]
    tile_scenes([img], tmp_path / "U", TileOptions(tile_size=64, bands=(1, 2, 3)))
    assert _manifest(tmp_path / "U")["bands"]["dropped"] == []


def test_option_parsers() -> None:
    assert parse_bands("4,3,2,8") == (4, 3, 2, 8)
    assert parse_label_map("128:0, 255:1") == {128: 0, 255: 1}
    assert parse_stretch("0:3000").ranges == ((0.0, 3000.0),)
    assert parse_stretch("auto:2:98").percentiles == (2.0, 98.0)
    for bad, fn in [
        ("1,2", parse_bands),
        ("1,1,2,3", parse_bands),
        ("a:b", parse_label_map),
        ("5:1", parse_stretch),
        ("auto:50:10", parse_stretch),
    ]:
        with pytest.raises(ValueError):
            fn(bad)  # type: ignore[operator]


# ------------------------------------------------------------------------------------------
# The command line, bad input included
# ------------------------------------------------------------------------------------------


def _invoke(args: list[str]) -> tuple[int, str]:
    res = CliRunner().invoke(cli, ["-q", *args])
    return res.exit_code, res.output


def _assert_clean_failure(code: int, output: str, parent: Path, needle: str) -> None:
    assert code == 1, output
    lines = [ln for ln in output.strip().splitlines() if ln.startswith("Error")]
    assert len(lines) == 1 and needle in lines[0], output
    assert "Traceback" not in output
    assert not [p for p in parent.iterdir() if p.name.startswith(".")], "temporary output left"


def test_cli_tile_ok(make_scene: SceneFactory, tmp_path: Path) -> None:
    img, lab = make_scene()
    res = CliRunner().invoke(
        cli,
        [
            "tile",
            str(img),
            "--out",
            str(tmp_path / "T"),
            "--tile-size",
            "128",
            "--label-dir",
            str(lab.parent),
            "--label-map",
            "128:0,255:1,192:2,64:3",
            "--labeled-fraction",
            "0.5",
        ],
    )
    assert res.exit_code == 0, res.output
    assert "9 tiles" in res.output and "class shares labeled" in res.output


def test_cli_bad_inputs(make_scene: SceneFactory, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    text = tmp_path / "notes.tif"
    text.write_text("not a raster")
    code, o = _invoke(["tile", str(text), "--out", str(out / "A")])
    _assert_clean_failure(code, o, out, "is not a readable raster")

    rgb = write_raster(tmp_path / "rgb.tif", np.ones((3, 64, 64), np.uint16))
    code, o = _invoke(["tile", str(rgb), "--bands", "1,2,3,4", "--out", str(out / "B")])
    _assert_clean_failure(code, o, out, "has 3 band(s)")

    img, lab = make_scene()
    write_raster(lab, np.full((100, 100), 128, np.uint8))  # replace with a label of another size
    code, o = _invoke(["tile", str(img), "--out", str(out / "C"), "--label-dir", str(lab.parent)])
    _assert_clean_failure(code, o, out, "is 100x100 but its scene")

    img2, lab2 = make_scene("other")
    code, o = _invoke(
        [
            "tile",
            str(img2),
            "--out",
            str(out / "D"),
            "--label-dir",
            str(lab2.parent),
            "--label-map",
            "128:0,255:1,192:2",
        ]
    )
    _assert_clean_failure(code, o, out, "not in the label map: 64")

    (out / "E").mkdir()
    (out / "E" / "keep.txt").write_text("precious")
    code, o = _invoke(["tile", str(img2), "--out", str(out / "E")])
    _assert_clean_failure(code, o, out, "already exists")
    assert (out / "E" / "keep.txt").read_text() == "precious"
    assert sorted(p.name for p in out.iterdir()) == ["E"]

    # --overwrite replaces only a folder cloudcps wrote: a foreign file stays
    code, o = _invoke(
        ["tile", str(img2), "--out", str(out / "E"), "--overwrite", "--tile-size", "128"]
    )
    _assert_clean_failure(code, o, out, "cloudcps did not write")
    assert (out / "E" / "keep.txt").read_text() == "precious"

    code, o = _invoke(["tile", str(img2), "--out", str(out / "F"), "--bands", "1,2"])
    assert code == 1 and "--bands" in o and o.count("\n") == 1


# ------------------------------------------------------------------------------------------
# Real data from ../shared/data
# ------------------------------------------------------------------------------------------


def test_real_s2_scene(tmp_path: Path) -> None:
    scene = shared_data("scenes", "s2_l1c_nocloud_rgbn.tif")
    out = tmp_path / "T"
    tile_scenes([scene], out)
    man = _manifest(out)
    assert len(man["tiles"]) == 4
    with rasterio.open(scene) as src:
        tf = src.transform
    for t in man["tiles"]:
        assert t["crs"] == "EPSG:32618"
        w = t["window"]
        assert np.allclose(
            t["transform"], list(tf @ Affine.translation(w["col_off"], w["row_off"]))[:6]
        )
        with Image.open(out / t["image"]) as im:
            assert im.size == (1024, 1024) and im.mode == "RGB"


def test_real_l8biome(tmp_path: Path) -> None:
    root = shared_data("l8biome")
    train = sorted((root / "train" / "images").glob("*.tif"))
    val = sorted((root / "val" / "images").glob("*.tif"))
    opts = TileOptions(
        tile_size=256,
        label_dirs=(root / "train" / "masks", root / "val" / "masks"),
        label_map=L8_MAP,
        val=tuple(str(v) for v in val),
    )
    out = tmp_path / "T2"
    tile_scenes(train + val, out, opts)
    labels = sorted((out / "labels").glob("*.png"))
    assert len(labels) == 31
    values = set()
    for p in labels:
        values |= set(np.unique(np.asarray(Image.open(p))).tolist())
    assert values <= {0, 1, 2, 3, 255}
    assert len(_split(out, "val")) == 8
    assert len(_split(out, "labeled")) + len(_split(out, "unlabeled")) == 23
    assert len(_split(out, "labeled")) >= 1
