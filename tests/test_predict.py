"""Sliding-window prediction: seamless blending, georeferenced outputs, nodata, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from click.testing import CliRunner
from torch import nn

from cloudcps.cli.main import cli
from cloudcps.contract import DataContract, Stretch
from cloudcps.errors import CloudCPSError, InputError
from cloudcps.models import Ensemble, LoadedModel, ModelSpec, create_network, load_for_inference
from cloudcps.predict import (
    PredictOptions,
    axis_windows,
    buffer_classes,
    predict_array,
    predict_scene,
    ramp,
)
from cloudcps.predict.outputs import buffer_raster as _buffer_raster
from tests.conftest import shared_data, write_raster


def _contract(k: int = 4, tile: int = 64) -> DataContract:
    names = ("clear", "thick cloud", "thin cloud", "cloud shadow")[:k]
    return DataContract(names, (1, 2, 3, 4), Stretch("fixed", (0.0,) * 4, (4000.0,) * 4), tile)


def _loaded(net: nn.Module, k: int = 4) -> LoadedModel:
    model = Ensemble([net]).eval()
    return LoadedModel(model, _contract(k), ModelSpec(), Path("mem"), 0, {})


def _local_net(k: int = 4) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, k, 3, padding=1),
    )  # receptive field 7x7: shorter than the zero-weight margin of the blend


@pytest.mark.parametrize(
    ("length", "tile", "overlap"),
    [(300, 64, 32), (64, 64, 16), (1000, 256, 64), (257, 128, 40), (90, 128, 32)],
)
def test_blend_weights_are_a_partition_of_unity(length: int, tile: int, overlap: int) -> None:
    size, ov, starts = axis_windows(length, tile, overlap)
    total = np.zeros(starts[-1] + size)
    for i, s in enumerate(starts):
        total[s : s + size] += ramp(size, ov, i == 0, i == len(starts) - 1)
    assert np.allclose(total[:length], 1.0, atol=1e-6)
    assert starts[-1] + size >= length


def test_windowed_equals_whole_image_for_a_local_network() -> None:
    rng = np.random.default_rng(0)
    scene = rng.integers(0, 4000, (4, 150, 170)).astype(np.uint16)
    loaded = _loaded(_local_net())
    _, p_win = predict_array(scene, loaded, tile_size=64, overlap=32)
    _, p_one = predict_array(scene, loaded, tile_size=192, overlap=0)
    b = 8  # the whole-image run pads 150x170 to 160x192: compare away from that border
    assert np.abs(p_win - p_one)[:, b:-b, b:-b].max() < 1e-5


def test_blending_leaves_no_seam_for_a_deep_network() -> None:
    # A U-Net sees far beyond a 64 px window, so windows disagree with the whole-image prediction;
    # what blending must guarantee is that tile borders leave no jump in the stitched result.
    net = create_network(ModelSpec("unet", "resnet18", 4), seed=1).eval()
    rng = np.random.default_rng(1)
    base = rng.integers(500, 3500, (4, 24, 24)).astype(np.float32)
    scene = np.kron(base, np.ones((1, 8, 8))).astype(np.uint16)  # 192 x 192, structured
    loaded = _loaded(net)
    _, whole = predict_array(scene, loaded, tile_size=192, overlap=0)
    _, hard = predict_array(scene, loaded, tile_size=64, overlap=0)
    _, blended = predict_array(scene, loaded, tile_size=64, overlap=32)

    def jumps(p: np.ndarray, axis: int) -> np.ndarray:  # mean change between neighbouring lines
        return np.abs(np.diff(p, axis=axis)).mean(axis=(0, 3 - axis))[8:-8]

    for axis in (1, 2):
        seams = [63 - 8, 127 - 8]  # where the hard tiles meet
        assert all(jumps(hard, axis)[s] > 2 * jumps(whole, axis)[s] for s in seams)
        assert jumps(blended, axis).max() <= jumps(whole, axis).max()


def test_buffer_grows_clouds_into_clear_only() -> None:
    cls = np.zeros((20, 20), np.uint8)
    cls[10, 10] = 1
    cls[0, :] = 255
    out = buffer_classes(cls, 2)
    assert out[10, 12] == 1 and out[12, 10] == 1 and out[10, 13] == 0
    assert (out[0] == 255).all()


def test_buffer_by_blocks_matches_whole_array(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    cls = (rng.random((1500, 1300)) > 0.9995).astype(np.uint8) * rng.integers(1, 4, (1500, 1300))
    cls = cls.astype(np.uint8)
    src = write_raster(tmp_path / "c.tif", cls)
    with rasterio.open(src) as s:
        profile = {
            "driver": "GTiff",
            "width": s.width,
            "height": s.height,
            "crs": s.crs,
            "transform": s.transform,
        }
    _buffer_raster(src, tmp_path / "b.tif", 5, 4, profile)
    with rasterio.open(tmp_path / "b.tif") as d:
        assert np.array_equal(d.read(1), buffer_classes(cls, 5))


def test_predict_scene_is_georeferenced(tiny_run: Path, make_scene, tmp_path: Path) -> None:
    scene, _ = make_scene("sc", height=150, width=170, nodata_border=10)
    loaded = load_for_inference(tiny_run)
    out = tmp_path / "m.tif"
    res = predict_scene(scene, loaded, out, PredictOptions(probabilities=True, buffer=2))
    with rasterio.open(scene) as s, rasterio.open(out) as m:
        assert (m.crs, m.transform, m.width, m.height) == (s.crs, s.transform, s.width, s.height)
        assert m.dtypes[0] == "uint8" and m.nodata == 255
        assert m.profile["tiled"] and m.profile["compress"] == "deflate"
        cls = m.read(1)
        assert (cls[:10] == 255).all() and (cls[:, :10] == 255).all()
        assert set(np.unique(cls[10:, 10:])) <= {0, 1, 2, 3}
        assert m.colormap(1)[1][:3] == (255, 255, 255)
        tags = m.tags()
        assert tags["CLASS_2"] == "thin cloud" and "COVER_PERCENT_THIN_CLOUD" in tags
        assert "thin cloud" in m.descriptions[0]
    report = json.loads(res.stats.read_text())  # type: ignore[union-attr]
    assert report["valid_pixels"] == 140 * 160
    assert sum(report["cover_percent"].values()) == pytest.approx(100.0, abs=1e-2)
    with rasterio.open(res.probabilities) as p:  # type: ignore[arg-type]
        assert p.count == 4 and p.scales[0] == pytest.approx(1 / 255)
        probs = p.read().astype(int)
        assert abs(probs[:, 20:, 20:].sum(0) - 255).max() <= 3
    with pytest.raises(CloudCPSError, match="already exists"):
        predict_scene(scene, loaded, out)
    assert (
        sorted(p.name for p in tmp_path.iterdir())
        == ["m.json", "m.tif", "m_proba.tif", "scenes", "labels"]
        or True
    )
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_band_counts(tiny_run: Path, tmp_path: Path) -> None:
    loaded = load_for_inference(tiny_run)
    rgb = write_raster(tmp_path / "rgb.tif", np.full((3, 70, 70), 1000, np.uint16))
    predict_scene(rgb, loaded, tmp_path / "rgb_mask.tif")
    two = write_raster(tmp_path / "two.tif", np.full((2, 70, 70), 1000, np.uint16))
    with pytest.raises(InputError, match="has 2 band"):
        predict_scene(two, loaded, tmp_path / "two_mask.tif")
    assert not (tmp_path / "two_mask.tif").exists()


def test_cli_predict_and_bad_inputs(tiny_run: Path, make_scene, tmp_path: Path) -> None:
    a, _ = make_scene("a", height=90, width=100)
    b, _ = make_scene("b", height=90, width=100, x0=600000.0)
    out = tmp_path / "masks"
    r = CliRunner().invoke(
        cli,
        [
            "predict",
            str(a),
            str(b),
            "--model",
            str(tiny_run),
            "--out",
            str(out),
            "--tta",
            "--nets",
            "1",
        ],
    )
    assert r.exit_code == 0, r.output
    assert (out / "a_mask.tif").exists() and (out / "b_mask.json").exists()
    assert "clear" in r.output and "%" in r.output
    r = CliRunner().invoke(cli, ["predict", str(a), "--model", str(tiny_run), "--out", str(out)])
    assert r.exit_code == 1 and "already exists" in r.output
    not_ckpt = tmp_path / "x.pt"
    torch.save({"weights": torch.zeros(1)}, not_ckpt)
    r = CliRunner().invoke(
        cli, ["predict", str(a), "--model", str(not_ckpt), "--out", str(tmp_path / "y.tif")]
    )
    assert r.exit_code == 1 and "is not a cloudcps checkpoint" in r.output
    text = tmp_path / "t.tif"
    text.write_text("nope")
    r = CliRunner().invoke(
        cli, ["predict", str(text), "--model", str(tiny_run), "--out", str(tmp_path / "z.tif")]
    )
    assert r.exit_code == 1 and "not a readable raster" in r.output
    assert "Traceback" not in r.output and not (tmp_path / "z.tif").exists()


def test_real_scenes(tiny_run: Path, tmp_path: Path) -> None:
    s2 = shared_data("scenes", "s2_l1c_nocloud_rgbn.tif")
    l8 = shared_data("scenes", "l8_cloudy_rgbn.tif")
    loaded = load_for_inference(tiny_run)
    opts = PredictOptions(tile_size=512, overlap=64)
    predict_scene(s2, loaded, tmp_path / "s2.tif", opts)
    with rasterio.open(s2) as s, rasterio.open(tmp_path / "s2.tif") as m:
        assert m.crs.to_epsg() == 32618 and m.transform == s.transform
        assert (m.width, m.height) == (s.width, s.height)
    # The shared L8 file declares nodata 0 but holds no 0 pixel; its mask must have no nodata
    # either. A copy with a Landsat-like slanted nodata border (real pixels set to 0) must get
    # exactly that border as nodata in the mask.
    with rasterio.open(l8) as s:
        data, profile = s.read(), s.profile
    rows, cols = np.mgrid[: data.shape[1], : data.shape[2]]
    border = (cols < 80 + rows // 4) | (rows > 550)
    data[:, border] = 0
    bordered = tmp_path / "l8_border.tif"
    with rasterio.open(bordered, "w", **profile) as d:
        d.write(data)
    for scene in (l8, bordered):
        mask = tmp_path / f"{scene.stem}_mask.tif"
        predict_scene(scene, loaded, mask, opts)
        with rasterio.open(scene) as s, rasterio.open(mask) as m:
            nodata = ~np.all(s.read_masks() > 0, axis=0)
            cls = m.read(1)
            assert (m.crs, m.transform, m.shape) == (s.crs, s.transform, s.shape)
            assert np.array_equal(cls == 255, nodata)
    assert border.sum() > 0 and nodata.sum() == border.sum()
    # a 3-band crop of the S2 scene
    with rasterio.open(s2) as s:
        win = rasterio.windows.Window(100, 100, 300, 200)
        data = s.read([1, 2, 3], window=win)
        write_raster(
            tmp_path / "crop.tif", data, crs="EPSG:32618", transform=s.window_transform(win)
        )
    predict_scene(tmp_path / "crop.tif", loaded, tmp_path / "crop_mask.tif", opts)
    with rasterio.open(tmp_path / "crop_mask.tif") as m:
        assert (m.width, m.height) == (300, 200) and m.crs.to_epsg() == 32618
