"""``predict`` and ``tile`` on scenes as users download them (issue 18): each kind of product gives
the same mask and the same tiles as the same reflectance stacked by hand in one GeoTIFF, on the
product's grid, named after the product, with the source and scaling recorded; a broken product
is one line naming the file, with nothing written."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import rasterio
from PIL import Image

from tests.conftest import run
from tests.products import Product, band_files, landsat_c2, sentinel2_safe, stac_item
from tests.test_faults import fails, snapshot

BUILDERS: dict[str, tuple[Callable[[Path], Product], str | None]] = {
    "S2 L2A SAFE folder": (lambda r: sentinel2_safe(r, "L2A"), None),
    "S2 L2A zip": (lambda r: sentinel2_safe(r, "L2A"), "zip"),
    "S2 L2A MTD XML": (lambda r: sentinel2_safe(r, "L2A"), "xml"),
    "S2 L1C SAFE folder": (lambda r: sentinel2_safe(r, "L1C"), None),
    "Landsat 8 L2 folder": (lambda r: landsat_c2(r, "L2SP"), None),
    "Landsat 8 L2 MTL": (lambda r: landsat_c2(r, "L2SP"), "mtl"),
    "Landsat 8 L1 folder": (lambda r: landsat_c2(r, "L1TP"), None),
    "Landsat 8 L1 tar": (lambda r: landsat_c2(r, "L1TP"), "tar"),
    "Landsat 5 TM L2 folder": (lambda r: landsat_c2(r, "L2SP", sensor="TM"), None),
    "STAC item": (lambda r: stac_item(r), None),
    "band files": (lambda r: band_files(r), "band-files"),
}


def _given(product: Product, entry: str | None) -> list[str]:
    """The command-line arguments that name the product."""
    if entry == "band-files":
        files = [product.files[k] for k in ("R", "G", "B", "NIR")]
        return ["--band-files", ",".join(str(f) for f in files)]
    return [str(product.files[entry] if entry else product.path)]


def _agree(a: Path, b: Path) -> float:
    with rasterio.open(a) as x, rasterio.open(b) as y:
        assert x.crs == y.crs and x.transform.almost_equals(y.transform)
        assert x.shape == y.shape
        return float(np.mean(x.read(1) == y.read(1)))


@pytest.mark.parametrize("kind", list(BUILDERS))
def test_predict_a_product_as_the_same_reflectance_stacked(
    kind: str, tiny_run: Path, tmp_path: Path
) -> None:
    build, entry = BUILDERS[kind]
    product = build(tmp_path / "download")
    stacked = product.stacked(tmp_path / "stacked" / "stacked.tif")
    out = tmp_path / "masks"
    r = run("predict", *_given(product, entry), "--model", tiny_run, "--out", out)
    assert r.exit_code == 0, r.output
    r = run("predict", stacked, "--model", tiny_run, "--out", tmp_path / "ref")
    assert r.exit_code == 0, r.output
    mask = out / f"{product.product_id}_mask.tif"  # named after the product
    assert _agree(mask, tmp_path / "ref" / "stacked_mask.tif") >= 0.995
    with rasterio.open(mask) as m:  # on the product's grid
        assert m.crs == rasterio.crs.CRS.from_string(product.crs)
        assert m.transform.almost_equals(product.transform) and m.shape == product.shape
        assert np.array_equal(m.read(1) != 255, product.valid)
        tags = m.tags()
    report = json.loads((out / f"{product.product_id}_mask.json").read_text())
    assert report["product_id"] == product.product_id
    kind_name = report["source"]["kind"]
    assert tags["SOURCE_KIND"] == kind_name and tags["SOURCE_PRODUCT"] == product.product_id
    if kind_name in ("sentinel2", "landsat"):
        assert all(b["scaling_from"] != "none" for b in report["source"]["bands"])


def test_the_mask_of_a_product_goes_beside_it(tiny_run: Path, tmp_path: Path) -> None:
    product = sentinel2_safe(tmp_path / "download", "L2A")
    r = run("predict", product.path, "--model", tiny_run)
    assert r.exit_code == 0, r.output
    assert (product.path.parent / f"{product.product_id}_mask.tif").is_file()
    assert not list(product.path.rglob("*_mask*"))  # nothing written inside the SAFE
    # a second run skips it by its product name
    r = run("predict", product.path, "--model", tiny_run, "--skip-existing")
    assert r.exit_code == 0 and "skipping 1 scene" in r.output, r.output


def test_a_folder_of_downloads_by_glob(tiny_run: Path, tmp_path: Path) -> None:
    s2 = sentinel2_safe(tmp_path / "dl", "L2A")
    ls = landsat_c2(tmp_path / "dl", "L2SP")
    r = run(
        "predict", s2.files["zip"], ls.files["tar"], "--model", tiny_run, "--out", tmp_path / "m"
    )
    assert r.exit_code == 0, r.output
    names = sorted(p.name for p in (tmp_path / "m").glob("*_mask.tif"))
    assert names == sorted([f"{s2.product_id}_mask.tif", f"{ls.product_id}_mask.tif"])


@pytest.mark.parametrize("kind", list(BUILDERS))
def test_tile_a_product_as_the_same_reflectance_stacked(kind: str, tmp_path: Path) -> None:
    build, entry = BUILDERS[kind]
    product = build(tmp_path / "download")
    stacked = product.stacked(tmp_path / "stacked" / "stacked.tif")
    common = ["--tile-size", "32", "--format", "png", "--labeled-fraction", "0"]
    r = run("tile", *_given(product, entry), *common, "--out", tmp_path / "a")
    assert r.exit_code == 0, r.output
    r = run("tile", stacked, *common, "--out", tmp_path / "b")
    assert r.exit_code == 0, r.output
    ma = json.loads((tmp_path / "a" / "manifest.json").read_text())
    mb = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert ma["stretch"] == mb["stretch"]
    assert ma["scenes"][0]["id"] == product.product_id
    want = {"S2": "sentinel2", "Landsat": "landsat", "STAC": "stac", "band": "band-files"}
    assert ma["scenes"][0]["source"]["kind"] == want[kind.split()[0]]
    assert len(ma["tiles"]) == len(mb["tiles"]) > 0
    for ta, tb in zip(ma["tiles"], mb["tiles"], strict=True):
        assert ta["window"] == tb["window"] and ta["transform"] == tb["transform"]
        a = np.asarray(Image.open(tmp_path / "a" / ta["image"]))
        b = np.asarray(Image.open(tmp_path / "b" / tb["image"]))
        assert np.array_equal(a, b), ta["id"]


def test_tile_scale_and_offset_match_predict(tmp_path: Path) -> None:
    """--scale/--offset exist for tile too: tiles of reflectance 0-1 with --scale 10000 are the
    tiles of the same values x 10000."""
    product = band_files(tmp_path / "dl")
    stacked = product.stacked(tmp_path / "x10000.tif")
    with rasterio.open(stacked) as src:
        data, profile = src.read(), src.profile
    small = np.where(data == -32768, -32768, data / 10000).astype(np.float32)
    with rasterio.open(tmp_path / "unit.tif", "w", **profile) as dst:
        dst.write(small)
    common = ["--tile-size", "32", "--format", "png", "--labeled-fraction", "0"]
    assert run("tile", stacked, *common, "--out", tmp_path / "a").exit_code == 0
    r = run("tile", tmp_path / "unit.tif", *common, "--scale", "10000", "--out", tmp_path / "b")
    assert r.exit_code == 0, r.output
    ma = json.loads((tmp_path / "a" / "manifest.json").read_text())
    mb = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert mb["scaling"] == {"scale": 10000.0, "offset": 0.0}
    for ta, tb in zip(ma["tiles"], mb["tiles"], strict=True):
        a = np.asarray(Image.open(tmp_path / "a" / ta["image"])).astype(int)
        b = np.asarray(Image.open(tmp_path / "b" / tb["image"])).astype(int)
        assert np.abs(a - b).max() <= 1  # float rounding of x / 10000 * 10000


@pytest.mark.parametrize(
    ("case", "expect"),
    [
        ("S2 without B08", "B08"),
        ("Landsat without band 5", "5"),
        ("MTL without coefficients", "REFLECTANCE"),
        ("STAC without blue", "blue"),
        ("two band files", "3 or 4"),
    ],
)
def test_a_broken_product_is_one_line_and_writes_nothing(
    case: str, expect: str, tiny_run: Path, tmp_path: Path
) -> None:
    dl = tmp_path / "dl"
    if case == "S2 without B08":
        args = [str(sentinel2_safe(dl, "L2A", omit=("B08",)).path)]
    elif case == "Landsat without band 5":
        args = [str(landsat_c2(dl, "L2SP", omit=(5,)).path)]
    elif case == "MTL without coefficients":
        args = [str(landsat_c2(dl, "L2SP", no_coefficients=True).files["mtl"])]
    elif case == "STAC without blue":
        args = [str(stac_item(dl, keys=("red", "green", "", "nir")).path)]
    else:
        p = band_files(dl)
        args = ["--band-files", f"{p.files['R']},{p.files['G']}"]
    before = snapshot(tmp_path)
    for cmd in (["predict", *args, "--model", tiny_run], ["tile", *args, "--out", tmp_path / "t"]):
        fails(tmp_path, cmd, expect)
    assert snapshot(tmp_path) == before


def test_predict_reads_a_scene_with_the_scaling_its_tiles_were_made_with(
    tmp_path: Path,
) -> None:
    """tile --scale is part of the data contract: predict applies it to the same scene without
    being told again (a forgotten --offset -1000 used to shift every value)."""
    from tests.conftest import scene_pair

    data = tmp_path / "data"
    scene, _ = scene_pair(data, "a", 96, 96)
    with rasterio.open(scene) as src:
        profile, dn = src.profile, src.read()
    profile.update(dtype="float32")
    unit = tmp_path / "unit" / "a.tif"  # named like its label raster
    unit.parent.mkdir()
    with rasterio.open(unit, "w", **profile) as dst:  # the same scene as reflectance 0-1
        dst.write((dn / 10000).astype(np.float32))
    tiles = tmp_path / "tiles"
    args = ["tile", unit, "--label-dir", data / "labels", "--label-map", "128:0,255:1,192:2,64:3"]
    r = run(*args, "--scale", "10000", "--tile-size", "64", "--out", tiles)
    assert r.exit_code == 0, r.output
    from tests.test_faults import _train_args

    r = run(*_train_args(tiles, tmp_path / "run"))
    assert r.exit_code == 0, r.output
    r = run("predict", unit, "--model", tmp_path / "run", "--out", tmp_path / "m.tif")
    assert r.exit_code == 0, r.output
    report = json.loads((tmp_path / "m.json").read_text())
    assert report["scale"] == 10000.0 and report["offset"] == 0.0
    assert not any("scale the values" in w for w in report["warnings"])


def test_two_products_with_one_mask_name_are_refused_before_any_work(
    tiny_run: Path, tmp_path: Path
) -> None:
    product = sentinel2_safe(tmp_path / "dl", "L2A")  # the SAFE folder and its zip, side by side
    msg = fails(tmp_path, ["predict", product.path, product.files["zip"], "--model", tiny_run],
                "would both write")  # fmt: skip
    assert product.product_id in msg


def test_a_mask_of_an_earlier_run_among_the_scenes_with_a_file_out(
    tiny_run: Path, tmp_path: Path
) -> None:
    from tests.conftest import scene_pair

    scene = scene_pair(tmp_path, "a", 64, 64)[0]
    assert run("predict", scene, "--model", tiny_run).exit_code == 0
    mask = scene.with_name("a_mask.tif")
    r = run("predict", scene, mask, "--model", tiny_run, "--out", tmp_path / "r.tif")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "r.tif").is_file()  # a mask, not a folder


def test_a_stac_item_by_url(
    tiny_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A STAC item on a server (a local one, in its own process: GDAL holds the interpreter
    while it reads), its assets read through GDAL's /vsicurl/."""
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    for var in ("NO_PROXY", "no_proxy"):
        monkeypatch.setenv(var, "127.0.0.1,localhost")
    product = stac_item(tmp_path / "served")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
        cwd=product.path.parent,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}/{product.path.name}"
    try:
        for _ in range(100):  # until it answers
            try:
                urllib.request.urlopen(url, timeout=2).close()
                break
            except OSError:
                time.sleep(0.1)
        else:
            pytest.skip("a local HTTP server could not be reached on this machine")
        fails(tmp_path, ["predict", url, "--model", tiny_run], "give --out FOLDER")
        r = run("predict", url, "--model", tiny_run, "--out", tmp_path / "m")
        assert r.exit_code == 0, r.output
        stacked = product.stacked(tmp_path / "stacked" / "stacked.tif")
        r = run("predict", stacked, "--model", tiny_run, "--out", tmp_path / "ref")
        assert r.exit_code == 0, r.output
        mask = tmp_path / "m" / f"{product.product_id}_mask.tif"
        assert _agree(mask, tmp_path / "ref" / "stacked_mask.tif") >= 0.995
    finally:
        server.kill()
        server.wait(timeout=30)
