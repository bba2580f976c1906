"""Tests of the synthetic scene generator (small scenes, fast)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine

from cloudcps.synthetic import (
    CLEAR,
    NODATA_LABEL,
    SHADOW,
    THICK,
    THIN,
    SceneSpec,
    SyntheticScene,
    generate_scene,
    make_dataset,
    shadow_offset,
    write_scene,
)


def _scene(**kw: object) -> SyntheticScene:
    params: dict[str, object] = {"height": 128, "width": 128, "seed": 1}
    params.update(kw)
    return generate_scene(SceneSpec(**params))  # type: ignore[arg-type]


def test_same_seed_is_byte_identical() -> None:
    a = _scene(seed=7, nodata_border=True)
    b = _scene(seed=7, nodata_border=True)
    assert a.image.tobytes() == b.image.tobytes()
    assert a.label.tobytes() == b.label.tobytes()
    assert a.spec == b.spec


def test_different_seeds_differ() -> None:
    a = _scene(seed=1, thick_cover=0.2, thin_cover=0.05)
    b = _scene(seed=2, thick_cover=0.2, thin_cover=0.05)
    assert not np.array_equal(a.image, b.image)
    assert not np.array_equal(a.label, b.label)


def test_dtype_shape_and_resolved_spec() -> None:
    sc = _scene(height=96, width=160, pixel_size=20.0, origin=(1000.0, 2000.0))
    assert sc.image.shape == (4, 96, 160)
    assert sc.image.dtype == np.uint16
    assert sc.label.shape == (96, 160)
    assert sc.label.dtype == np.uint8
    assert sc.transform == Affine(20.0, 0.0, 1000.0, 0.0, -20.0, 2000.0)
    assert sc.crs == "EPSG:32633"
    for name in ("thick_cover", "thin_cover", "cloud_height", "sun_azimuth", "sun_elevation"):
        assert getattr(sc.spec, name) is not None
    assert 25.0 <= sc.spec.sun_elevation <= 65.0  # type: ignore[operator]
    assert 1000.0 <= sc.spec.cloud_height <= 4000.0  # type: ignore[operator]


@pytest.mark.parametrize("seed", [0, 3, 11])
def test_label_values_and_valid_pixels(seed: int) -> None:
    sc = _scene(seed=seed, nodata_border=seed == 3)
    assert set(np.unique(sc.label).tolist()) <= {CLEAR, THICK, THIN, SHADOW, NODATA_LABEL}
    valid = sc.label != NODATA_LABEL
    assert (sc.image[:, valid] > 0).all()  # no band of a valid pixel reads as nodata


def test_requested_cover_is_exact() -> None:
    sc = _scene(height=200, width=150, thick_cover=0.3, thin_cover=0.05)
    n = sc.label.size
    assert abs(int((sc.label == THICK).sum()) - round(0.3 * n)) <= 1
    assert abs(int((sc.label == THIN).sum()) - round(0.05 * n)) <= 1


def test_clear_and_overcast_extremes() -> None:
    clear = _scene(thick_cover=0.0, thin_cover=0.0)
    assert (clear.label == CLEAR).all()
    overcast = _scene(thick_cover=1.0, thin_cover=0.2)
    assert (overcast.label == THICK).all()


def test_class_radiometry_is_consistent() -> None:
    sc = _scene(
        height=256,
        width=256,
        seed=4,
        thick_cover=0.25,
        thin_cover=0.1,
        cloud_height=1500.0,
        sun_elevation=45.0,
        sun_azimuth=135.0,
    )
    refl = sc.image.astype(np.float64) / 10000.0
    mean = {c: refl[:, sc.label == c].mean(axis=1) for c in (CLEAR, THICK, THIN, SHADOW)}
    blue, nir = 2, 3
    assert mean[THICK][blue] > mean[THIN][blue] > mean[CLEAR][blue]
    assert mean[THICK][blue] > 0.3
    assert mean[SHADOW][nir] < 0.8 * mean[CLEAR][nir]
    assert (mean[SHADOW] > 0.005).all()  # darkened, not black
    # Thick cloud is spectrally flat: NIR close to the visible bands.
    assert 0.7 < mean[THICK][nir] / mean[THICK][:3].mean() < 1.2


def test_ground_has_plausible_land_cover() -> None:
    sc = _scene(height=256, width=256, seed=2, thick_cover=0.0, thin_cover=0.0)
    r, nir = (sc.image[i].astype(np.float64) / 10000.0 for i in (0, 3))
    ndvi = (nir - r) / (nir + r)
    assert (ndvi > 0.6).mean() > 0.05  # vegetation
    assert (ndvi < 0.3).mean() > 0.02  # soil, towns or water
    assert 0.03 < r.mean() < 0.25
    assert 0.15 < nir.mean() < 0.45


def test_shadow_offset_helper() -> None:
    d_row, d_col = shadow_offset(90.0, 45.0, 1000.0, 10.0)  # sun in the east
    assert d_row == pytest.approx(0.0, abs=1e-9)
    assert d_col == pytest.approx(-100.0)  # shadow to the west
    d_row, d_col = shadow_offset(180.0, 45.0, 1000.0, 10.0)  # sun in the south
    assert d_row == pytest.approx(-100.0)  # shadow to the north (up)
    assert d_col == pytest.approx(0.0, abs=1e-9)
    d_row, d_col = shadow_offset(0.0, 30.0, 1200.0, 30.0)
    assert d_row == pytest.approx(1200.0 / math.tan(math.radians(30.0)) / 30.0)
    with pytest.raises(ValueError):
        shadow_offset(0.0, 0.0, 1000.0, 30.0)


@pytest.mark.parametrize(("azimuth", "d_col"), [(90.0, -50), (270.0, 50)])
def test_shadow_lies_away_from_the_sun(azimuth: float, d_col: int) -> None:
    # Height 1500 m at 45 degrees with 30 m pixels: 50 pixels away from the sun.
    sc = _scene(
        height=160,
        width=200,
        seed=5,
        thick_cover=0.12,
        thin_cover=0.0,
        cloud_height=1500.0,
        sun_elevation=45.0,
        sun_azimuth=azimuth,
    )
    rows, cols = np.nonzero(sc.label == SHADOW)
    assert rows.size > 100
    # By construction the cloud casting each shadow pixel sits 50 columns towards the sun.
    src = cols - d_col
    inside = (src >= 0) & (src < sc.label.shape[1])
    assert inside.sum() > 50
    assert (sc.label[rows[inside], src[inside]] == THICK).all()

    # Of all candidate displacements, the true one explains the shadow best (cross-check of
    # the direction: the opposite shift, or none, finds far less cloud).
    def cloud_fraction(dr: int, dc: int) -> float:
        r, c = rows - dr, cols - dc
        ok = (r >= 0) & (r < sc.label.shape[0]) & (c >= 0) & (c < sc.label.shape[1])
        return float((sc.label[r[ok], c[ok]] == THICK).mean()) if ok.sum() > 50 else 0.0

    scores = {
        (dr, dc): cloud_fraction(dr, dc) for dr in range(-60, 61, 10) for dc in range(-60, 61, 10)
    }
    assert scores[(0, d_col)] == 1.0 == max(scores.values())
    assert scores[(0, -d_col)] < 0.5


def test_nodata_border() -> None:
    sc = _scene(height=150, width=170, seed=8, nodata_border=True)
    nodata_img = (sc.image == 0).all(axis=0)
    assert np.array_equal(nodata_img, sc.label == NODATA_LABEL)
    assert np.array_equal((sc.image == 0).any(axis=0), nodata_img)
    assert 0.03 < nodata_img.mean() < 0.4
    for r, c in ((0, 0), (0, -1), (-1, 0), (-1, -1)):
        assert nodata_img[r, c]
    assert not nodata_img[75, 85]
    assert not (_scene(height=150, width=170, seed=8).label == NODATA_LABEL).any()


def test_cover_fraction_counts_valid_pixels() -> None:
    sc = _scene(height=150, width=170, seed=8, nodata_border=True, thick_cover=0.4)
    n_valid = int((sc.label != NODATA_LABEL).sum())
    assert abs(int((sc.label == THICK).sum()) - round(0.4 * n_valid)) <= 1


def test_invalid_spec_is_refused() -> None:
    with pytest.raises(ValueError):
        _scene(thick_cover=1.5)
    with pytest.raises(ValueError):
        _scene(sun_elevation=0.0)
    with pytest.raises(ValueError):
        _scene(height=0)
    with pytest.raises(ValueError):
        _scene(seed=-1)


def test_tiny_scene() -> None:
    sc = _scene(height=1, width=3)
    assert sc.image.shape == (4, 1, 3)
    assert (sc.image > 0).all()


def test_write_scene_round_trip(tmp_path: Path) -> None:
    sc = _scene(height=100, width=130, seed=6, nodata_border=True)
    img_path = tmp_path / "a" / "img.tif"
    lab_path = tmp_path / "b" / "lab.tif"
    write_scene(sc, img_path, lab_path)
    with rasterio.open(img_path) as src:
        assert src.count == 4
        assert src.dtypes[0] == "uint16"
        assert src.nodata == 0
        assert src.crs.to_epsg() == 32633
        assert src.transform == sc.transform
        assert src.descriptions == ("red", "green", "blue", "nir")
        assert src.profile["tiled"]
        assert src.block_shapes[0] == (256, 256)
        assert src.compression.value.lower() == "deflate"
        assert np.array_equal(src.read(), sc.image)
    with rasterio.open(lab_path) as src:
        assert src.count == 1
        assert src.dtypes[0] == "uint8"
        assert src.nodata == NODATA_LABEL
        assert src.crs.to_epsg() == 32633
        assert src.transform == sc.transform
        assert (src.height, src.width) == (100, 130)
        assert np.array_equal(src.read(1), sc.label)


def test_write_scene_without_label(tmp_path: Path) -> None:
    sc = _scene(height=32, width=32)
    write_scene(sc, tmp_path / "only.tif")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["only.tif"]


def test_make_dataset_files_and_footprints(tmp_path: Path) -> None:
    pairs = make_dataset(tmp_path / "ds", 3, size=48, seed=2, nodata_border_every=2)
    assert len(pairs) == 3
    bounds = []
    for i, (img, lab) in enumerate(pairs):
        assert img == tmp_path / "ds" / "images" / f"scene_{i:03d}.tif"
        assert lab == tmp_path / "ds" / "labels" / img.name
        assert img.exists() and lab.exists()
        with rasterio.open(img) as a, rasterio.open(lab) as b:
            assert a.transform == b.transform and a.crs == b.crs
            assert a.shape == b.shape == (48, 48)
            bounds.append(a.bounds)
            has_nodata = bool((b.read(1) == NODATA_LABEL).any())
            assert has_nodata == (i == 1)  # every 2nd scene has a border
    for i, p in enumerate(bounds):
        for q in bounds[i + 1 :]:
            disjoint = p.right <= q.left or q.right <= p.left
            disjoint = disjoint or p.top <= q.bottom or q.top <= p.bottom
            assert disjoint


def test_make_dataset_empty(tmp_path: Path) -> None:
    assert make_dataset(tmp_path, 0, size=16) == []


def test_make_dataset_thin_cover_scale_zero(tmp_path: Path) -> None:
    pairs = make_dataset(tmp_path, 2, size=48, seed=1, thin_cover_scale=0.0)
    for _, lab in pairs:
        with rasterio.open(lab) as src:
            assert not (src.read(1) == THIN).any()


def test_make_dataset_class_shares(tmp_path: Path) -> None:
    pairs = make_dataset(tmp_path, 4, size=128, seed=0)
    counts = np.zeros(256, dtype=np.int64)
    thick_per_scene = []
    for _, lab in pairs:
        with rasterio.open(lab) as src:
            label = src.read(1)
        counts += np.bincount(label.ravel(), minlength=256)
        thick_per_scene.append(float((label == THICK).mean()))
    shares = counts[[CLEAR, THICK, THIN, SHADOW]] / counts.sum()
    assert (shares > 0).all(), shares
    assert shares[THIN] < shares[THICK]
    # Cover spans clear to cloudy skies.
    assert min(thick_per_scene) < 0.05
    assert max(thick_per_scene) > 0.3
