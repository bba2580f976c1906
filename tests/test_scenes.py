"""cloudcps.scenes: each input kind gives the reflectance x 10000 of the same values stacked by
hand in one GeoTIFF, on the product's grid, with its valid mask, id and record; each broken
product is one line naming the file."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.windows import Window

from cloudcps.errors import InputError
from cloudcps.io import read_valid_mask
from cloudcps.scenes import NODATA, Scene, open_scene
from tests.conftest import write_raster
from tests.products import Product, band_files, landsat_c2, sentinel2_safe, stac_item


def _digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def check_same(scene: Scene, product: Product, tmp_path: Path) -> None:
    """``scene`` reads like ``product``'s reflectance stacked by hand in one GeoTIFF."""
    ref_path = product.stacked(tmp_path / "by-hand" / "stacked.tif")
    ds = scene.dataset
    assert scene.bands == (1, 2, 3, 4)
    with rasterio.open(ref_path) as ref:
        assert ds.crs == ref.crs
        assert ds.transform.almost_equals(ref.transform)
        assert (ds.height, ds.width) == (ref.height, ref.width) == product.shape
        want = ref.read()
        want_valid = np.all(ref.read_masks() > 0, axis=0)
    got = ds.read(list(scene.bands))
    valid = np.all(ds.read_masks(list(scene.bands)) > 0, axis=0)
    assert np.array_equal(valid, want_valid)
    assert np.array_equal(valid, product.valid)
    assert np.array_equal(read_valid_mask(ds, scene.bands), valid)  # what tile/predict call
    assert 0 < valid.mean() < 1  # the fixtures have fill, so the mask is tested
    np.testing.assert_allclose(got[:, valid], want[:, valid], rtol=1e-6, atol=1e-3)
    assert np.all(got[:, ~valid] == NODATA)
    assert ds.nodata == NODATA and ds.dtypes[0] == "float32"
    # a window reads the same values and masks as the whole scene
    win = Window(10, 20, 50, 40)
    part = ds.read(list(scene.bands), window=win)
    assert np.array_equal(part, got[:, 20:60, 10:60])
    part_valid = np.all(ds.read_masks(list(scene.bands), window=win) > 0, axis=0)
    assert np.array_equal(part_valid, valid[20:60, 10:60])
    # the VRT is self-contained: another process can reopen it from the XML alone
    assert scene.vrt is not None
    with rasterio.open(scene.vrt) as again:
        assert np.array_equal(again.read(list(scene.bands)), got)
    json.dumps(scene.record)  # JSON-able


def one_line(exc: pytest.ExceptionInfo[InputError], *words: str) -> str:
    msg = str(exc.value)
    assert "\n" not in msg, msg
    for w in words:
        assert w in msg, msg
    return msg


# ----------------------------------------------------------------------------- Sentinel-2


@pytest.mark.parametrize("level", ["L2A", "L1C"])
@pytest.mark.parametrize("entry", ["folder", "xml", "zip"])
def test_sentinel2(tmp_path: Path, level: str, entry: str) -> None:
    product = sentinel2_safe(tmp_path / "in", level)
    before = _digest(tmp_path / "in")
    path = product.path if entry == "folder" else product.files[entry]
    with open_scene(path) as scene:
        check_same(scene, product, tmp_path)
        assert scene.kind == "sentinel2" and scene.scaled
        assert scene.product_id == product.product_id
        assert scene.product_id.startswith(f"S2B_MSI{level}_") and ".SAFE" not in scene.product_id
        rec = scene.record
        assert rec["processing_level"] == level and rec["processing_baseline"] == "05.09"
        names = [b["name"] for b in rec["bands"]]
        assert names == ["B04", "B03", "B02", "B08"]
        key = "BOA_ADD_OFFSET" if level == "L2A" else "RADIO_ADD_OFFSET"
        for b in rec["bands"]:
            assert b["offset"] == -1000.0 and b["scale"] == 1.0 and b["nodata"] == 0
            assert f"{key} in MTD_MSI{level}.xml" in b["scaling_from"]
            assert re.search(rf"_{b['name']}(_10m)?\.jp2$", b["source"]), b["source"]
    assert _digest(tmp_path / "in") == before


def test_sentinel2_before_baseline_4_has_no_offset(tmp_path: Path) -> None:
    product = sentinel2_safe(tmp_path, "L2A", baseline="03.01", offset=None)
    with open_scene(product.path) as scene:
        check_same(scene, product, tmp_path)
        assert all(b["offset"] == 0 for b in scene.record["bands"])
        assert "< 04.00" in scene.record["bands"][0]["scaling_from"]


def test_sentinel2_quantification_from_the_product(tmp_path: Path) -> None:
    product = sentinel2_safe(tmp_path, "L2A", quantification=20000)
    with open_scene(product.files["xml"]) as scene:
        check_same(scene, product, tmp_path)
        assert scene.record["bands"][0]["scale"] == 0.5


# ----------------------------------------------------------------------------- Landsat


@pytest.mark.parametrize(
    ("level", "sensor", "entry"),
    [
        ("L2SP", "OLI_TIRS", "folder"),
        ("L2SP", "OLI_TIRS", "mtl"),
        ("L2SP", "OLI_TIRS", "mtl_json"),
        ("L2SP", "OLI_TIRS", "tar"),
        ("L1TP", "OLI_TIRS", "folder"),
        ("L1TP", "OLI_TIRS", "tar"),
        ("L2SP", "TM", "folder"),
        ("L1TP", "TM", "mtl"),
    ],
)
def test_landsat(tmp_path: Path, level: str, sensor: str, entry: str) -> None:
    product = landsat_c2(tmp_path / "in", level, sensor=sensor)
    before = _digest(tmp_path / "in")
    path = product.path if entry == "folder" else product.files[entry]
    with open_scene(path) as scene:
        check_same(scene, product, tmp_path)  # includes the pixel only QA_PIXEL marks as fill
        assert scene.kind == "landsat" and scene.scaled
        assert scene.product_id == product.product_id
        rec = scene.record
        assert rec["processing_level"] == level and rec["sensor"] == sensor
        numbers = (4, 3, 2, 5) if sensor == "OLI_TIRS" else (3, 2, 1, 4)
        stem = "SR_B" if level.startswith("L2") else "B"
        assert [b["name"] for b in rec["bands"]] == [f"{stem}{n}" for n in numbers]
        assert rec["qa_fill"].endswith("_QA_PIXEL.TIF")
        group = "LEVEL2_SURFACE_REFLECTANCE" if level.startswith("L2") else "LEVEL1_RADIOMETRIC"
        assert group in rec["bands"][0]["scaling_from"]
        if level == "L2SP":
            assert rec["bands"][0]["scale"] == pytest.approx(0.275)
            assert rec["bands"][0]["offset"] == pytest.approx(-2000)
        else:
            assert rec["sun_elevation"] == 52.5
    assert _digest(tmp_path / "in") == before


def test_landsat_without_qa_pixel_masks_dn_zero(tmp_path: Path) -> None:
    product = landsat_c2(tmp_path, "L2SP", qa=False)
    with open_scene(product.path) as scene:
        valid = np.all(scene.dataset.read_masks() > 0, axis=0)
        dn_valid = np.all(np.isfinite(product.reflectance), axis=0)
        h, w = product.shape
        dn_valid[h // 2, w // 2] = True  # only QA_PIXEL knew that pixel as fill
        assert np.array_equal(valid, dn_valid)
        assert scene.record["qa_fill"] is None


# ----------------------------------------------------------------------------- STAC, band files


def test_stac_item(tmp_path: Path) -> None:
    product = stac_item(tmp_path / "in")
    with open_scene(product.path) as scene:
        check_same(scene, product, tmp_path)
        assert scene.kind == "stac" and scene.scaled
        assert scene.product_id == "S2B_18TWL_20230823_0_L2A"
        assert [b["name"] for b in scene.record["bands"]] == ["red", "green", "blue", "nir"]
        assert scene.record["bands"][0]["scale"] == pytest.approx(1.0)
        assert scene.record["bands"][0]["offset"] == pytest.approx(-1000.0)
        assert scene.record["bands"][0]["source"] == str(tmp_path / "in" / "cogs" / "B04.tif")


def test_stac_item_by_asset_keys_without_scaling(tmp_path: Path) -> None:
    product = stac_item(
        tmp_path / "in",
        keys=("red", "green", "blue", "nir08"),
        common_names=False,
        scale=None,
        offset=None,
    )
    with open_scene(str(product.path)) as scene:
        check_same(scene, product, tmp_path)
        assert not scene.scaled  # nothing to apply: the caller's --scale/--offset do
        assert scene.record["bands"][3]["name"] == "nir08"


def test_band_files(tmp_path: Path) -> None:
    product = band_files(tmp_path / "in")
    f = product.files
    with open_scene(f["R"], band_files=[f["R"], f["G"], f["B"], f["NIR"]]) as scene:
        check_same(scene, product, tmp_path)
        assert scene.kind == "band-files" and not scene.scaled
        assert scene.product_id == "scene"
        assert scene.record["bands"][1]["source"] == str(f["G"])
    with open_scene(f["R"], band_files=[f["R"], f["G"], f["B"]]) as scene:
        assert scene.bands == (1, 2, 3) and scene.dataset.count == 3


def test_plain_raster_is_opened_as_is(tmp_path: Path) -> None:
    path = write_raster(tmp_path / "scene.tif", np.ones((4, 40, 50), np.uint16), nodata=0)
    with open_scene(path, bands=(3, 2, 1, 4)) as scene:
        assert scene.kind == "raster" and not scene.scaled
        assert scene.bands == (3, 2, 1, 4) and scene.product_id == "scene"
        assert Path(scene.dataset.name) == path
    with open_scene(path) as scene:
        assert scene.bands is None  # the caller decides (the model's bands)
    assert scene.dataset.closed


# ----------------------------------------------------------------------------- errors


def test_sentinel2_errors(tmp_path: Path) -> None:
    p = sentinel2_safe(tmp_path / "a", "L2A", omit=("B08",))
    with pytest.raises(InputError) as e:
        open_scene(p.path)
    one_line(e, str(p.path), "no B08 at 10 m")
    p = sentinel2_safe(tmp_path / "b", "L1C", omit=("B02", "B03", "B04", "B08"))
    with pytest.raises(InputError) as e:
        open_scene(p.files["zip"])
    one_line(e, str(p.files["zip"]), "none of its 10 m bands")
    p = sentinel2_safe(tmp_path / "c", "L2A", offset=None)  # baseline 05.09 without offsets
    with pytest.raises(InputError) as e:
        open_scene(p.files["xml"])
    one_line(e, str(p.files["xml"]), "lists no BOA_ADD_OFFSET for B04")
    l1b = tmp_path / "d" / "S2B_MSIL1B_20230823T095559_N0509_R122_20230823T114432.SAFE"
    l1b.mkdir(parents=True)
    (l1b / "MTD_MSIL1B.xml").write_text("<n1:Level-1B_User_Product/>")
    with pytest.raises(InputError) as e:
        open_scene(l1b)
    one_line(e, str(l1b), "processing level L1B", "not supported")
    bad_zip = tmp_path / "notes.zip"
    import zipfile

    with zipfile.ZipFile(bad_zip, "w") as zf:
        zf.writestr("readme.txt", "hello")
    with pytest.raises(InputError) as e:
        open_scene(bad_zip)
    one_line(e, str(bad_zip), "no Sentinel-2 product")


def test_landsat_errors(tmp_path: Path) -> None:
    p = landsat_c2(tmp_path / "a", "L2SP", omit=(5,))
    with pytest.raises(InputError) as e:
        open_scene(p.files["tar"])
    one_line(e, str(p.files["tar"]), "missing band 5", "_SR_B5.TIF")
    p = landsat_c2(tmp_path / "b", "L1TP", no_coefficients=True)
    with pytest.raises(InputError) as e:
        open_scene(p.files["mtl"])
    one_line(e, str(p.files["mtl"]), "no REFLECTANCE_MULT_BAND_4", "LEVEL1_RADIOMETRIC_RESCALING")
    p = landsat_c2(tmp_path / "c", "L2SP")
    mtl = p.files["mtl"]
    mtl.write_text(mtl.read_text().replace('PROCESSING_LEVEL = "L2SP"', 'PROCESSING_LEVEL = "L1R"'))
    with pytest.raises(InputError) as e:
        open_scene(mtl)
    one_line(e, str(mtl), "processing level L1R", "not supported")
    folder = tmp_path / "d"
    folder.mkdir()
    (folder / "x.tif").write_bytes(b"")
    with pytest.raises(InputError) as e:
        open_scene(folder)
    one_line(e, str(folder), "neither a Sentinel-2 SAFE", "Landsat")


def test_stac_errors(tmp_path: Path) -> None:
    p = stac_item(tmp_path / "a", keys=("red", "green", "", "nir"))
    with pytest.raises(InputError) as e:
        open_scene(p.path)
    one_line(e, str(p.path), "no blue asset")
    other = tmp_path / "b" / "collection.json"
    other.parent.mkdir()
    other.write_text(json.dumps({"type": "FeatureCollection", "features": []}))
    with pytest.raises(InputError) as e:
        open_scene(other)
    one_line(e, str(other), "not a STAC Item")


def test_band_file_errors(tmp_path: Path) -> None:
    p = band_files(tmp_path)
    f = p.files
    with pytest.raises(InputError) as e:
        open_scene(f["R"], band_files=[f["R"], f["G"]])
    one_line(e, "gives 2 file(s)", "R,G,B[,NIR]")
    odd = write_raster(tmp_path / "odd_B2.tif", np.ones((100, 119), np.uint16))
    with pytest.raises(InputError) as e:
        open_scene(f["R"], band_files=[f["R"], f["G"], odd])
    one_line(e, str(odd), "119x100 px", "120x100 px", "one grid")
    shifted = write_raster(
        tmp_path / "shifted_B2.tif", np.ones((100, 120), np.uint16), crs="EPSG:32634"
    )
    with pytest.raises(InputError) as e:
        open_scene(f["R"], band_files=[f["R"], f["G"], shifted])
    one_line(e, str(shifted), "EPSG:32634", "EPSG:32633")
    moved = write_raster(  # same size and CRS, origin half a pixel off
        tmp_path / "moved_B2.tif",
        np.ones((100, 120), np.uint16),
        transform=Affine(30.0, 0.0, 500015.0, 0.0, -30.0, 5000000.0),
    )
    with pytest.raises(InputError) as e:
        open_scene(f["R"], band_files=[f["R"], f["G"], moved])
    one_line(e, str(moved), "one grid")
    multi = write_raster(tmp_path / "rgb.tif", np.ones((3, 100, 120), np.uint16))
    with pytest.raises(InputError) as e:
        open_scene(f["R"], band_files=[f["R"], f["G"], multi])
    one_line(e, str(multi), "has 3 bands", "single-band")


def test_bands_option_on_a_product(tmp_path: Path) -> None:
    p = landsat_c2(tmp_path, "L2SP")
    with pytest.raises(InputError) as e:
        open_scene(p.path, bands=(3, 2, 1, 4))
    one_line(e, "--bands 3,2,1,4", str(p.path), "SR_B4, SR_B3, SR_B2, SR_B5", "leave --bands out")
    with open_scene(p.path, bands=(1, 2, 3, 4)) as scene:  # tile's default is harmless
        assert scene.bands == (1, 2, 3, 4)
    with open_scene(p.path, bands=(1, 2, 3)) as scene:
        assert scene.bands == (1, 2, 3)


def test_relative_paths_give_a_self_contained_vrt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    product = landsat_c2(tmp_path / "in", "L2SP")
    monkeypatch.chdir(tmp_path / "in")
    with open_scene(product.files["tar"].name) as scene:
        data = scene.dataset.read()
        monkeypatch.chdir("/")
        assert scene.vrt is not None
        with rasterio.open(scene.vrt) as again:  # e.g. in a worker started elsewhere
            assert np.array_equal(again.read(), data)
        assert scene.record["path"] == product.files["tar"].name
