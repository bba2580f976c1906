"""The uncertainty layer: the measures, the streamed GeoTIFF beside the mask, the CLI flag."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio

from cloudcps.contract import DataContract, Stretch
from cloudcps.predict import Predictor, predict_scene
from cloudcps.predict.backends import InferenceModel
from cloudcps.predict.uncertainty import (
    UNSURE_U8,
    PairRunner,
    disagreement,
    entropy,
    load_for_uncertainty,
    uncertainty_path,
)
from cloudcps.suggest import ArrayUncertaintySink
from tests.conftest import SceneFactory, run, scene_pair


def _onehot(k: int, c: int, shape: tuple[int, int], sure: float = 1.0) -> np.ndarray:
    p = np.full((k, *shape), (1.0 - sure) / (k - 1), np.float32)
    p[c] = sure
    return p


def test_measures_are_bounded_and_zero_when_sure() -> None:
    a, b = _onehot(4, 0, (2, 2)), _onehot(4, 1, (2, 2))
    assert np.allclose(disagreement(a, a), 0.0)
    assert np.allclose(disagreement(a, b), 1.0, atol=1e-5)
    assert np.allclose(disagreement(a, b), disagreement(b, a))
    flat = np.full((4, 2, 2), 0.25, np.float32)
    assert np.allclose(disagreement(flat, flat), 0.0, atol=1e-6)  # agreeing, however unsure
    assert np.allclose(entropy(a), 0.0, atol=1e-6)
    assert np.allclose(entropy(flat), 1.0, atol=1e-6)
    half = _onehot(4, 0, (1, 1), 0.6)
    assert 0.0 < float(entropy(half)[0, 0]) < 1.0


class _Rule:
    """A stand-in network: sure of class ``bright`` where the input's red channel is above 0,
    of class 0 elsewhere (``bright`` = 0: always class 0)."""

    name, device = "rule", "cpu"

    def __init__(self, bright: int, k: int = 4) -> None:
        self.bright, self.k = bright, k

    def __call__(self, x: np.ndarray) -> np.ndarray:
        n, _, h, w = x.shape
        out = np.full((n, self.k, h, w), 0.01 / (self.k - 1), np.float32)
        hot = x[:, 0] > 0
        out[:, 0][~hot] = 0.99
        for c in range(self.k):
            if c == self.bright:
                out[:, c][hot] = 0.99
            else:
                out[:, c][hot] = 0.01 / (self.k - 1)
        return out


def _contract() -> DataContract:
    names = ("clear", "thick cloud", "thin cloud", "cloud shadow")
    return DataContract(names, (1, 2, 3, 4), Stretch("fixed", (0.0,) * 4, (4000.0,) * 4), 64)


def _scene_halves() -> np.ndarray:
    scene = np.full((3, 96, 128), 200, np.uint16)  # dark: normalised red < 0
    scene[:, :, 64:] = 3800  # bright: normalised red > 0
    return scene


def test_disagreement_is_high_where_the_two_networks_disagree() -> None:
    # network 1 calls everything clear; network 2 calls the bright half thick cloud
    model = InferenceModel(_contract(), PairRunner(_Rule(0), _Rule(1)), Path("mem"), 0, "1,2")
    predictor = Predictor(model, tile_size=64, overlap=16)
    assert predictor.channels == 8
    sink = ArrayUncertaintySink(96, 128, 4)
    from cloudcps.predict import ArraySource

    predictor.run(ArraySource(_scene_halves()), sink, background=False)
    u = sink.u8.astype(int)
    assert u[:, :56].max() <= 2  # both networks sure of clear
    assert u[:, 72:].min() >= 240  # each sure (0.99) of another class
    # the mask is the argmax of the mean: a tie of 0.5 / 0.5 goes to the first class
    assert (sink.classes == 0).all()


def test_entropy_is_high_where_one_network_is_unsure() -> None:
    class Flat(_Rule):
        def __call__(self, x: np.ndarray) -> np.ndarray:
            out = super().__call__(x)
            out[:, :, x[0, 0] > 0] = 0.25
            return out

    model = InferenceModel(_contract(), Flat(0), Path("mem"), 0, "1")
    sink = ArrayUncertaintySink(96, 128, 4)
    from cloudcps.predict import ArraySource

    Predictor(model, tile_size=64, overlap=16).run(ArraySource(_scene_halves()), sink, False)
    assert sink.u8[:, :56].max() <= 20
    assert sink.u8[:, 72:].min() == 255


@pytest.mark.parametrize("nets", ["both", "1"])
def test_uncertainty_layer_of_a_tiny_cps_run(tiny_run: Path, tmp_path: Path, nets: str) -> None:
    from cloudcps.predict import PredictOptions

    scene, _ = scene_pair(tmp_path, "u", 150, 170, seed=3, nodata_border=20)
    model = load_for_uncertainty(tiny_run, nets=nets)
    out = tmp_path / "out" / "u_mask.tif"
    res = predict_scene(scene, model, out, PredictOptions(tile_size=64, uncertainty=True))
    unc = uncertainty_path(out)
    assert res.extra["uncertainty"] == unc and unc.name == "u_uncertainty.tif"
    with rasterio.open(out) as m, rasterio.open(unc) as u:
        assert (u.crs, u.transform, u.width, u.height) == (m.crs, m.transform, m.width, m.height)
        assert u.dtypes[0] == "uint8" and u.count == 1 and u.nodata is None
        mask = m.read(1)
        valid = u.read_masks(1) > 0
        assert np.array_equal(valid, mask != 255)  # the same nodata as the mask
        values = u.read(1)
        assert (values[~valid] == 0).all()
        assert values[valid].max() > 0  # an untrained network is unsure somewhere
        measure = "disagreement" if nets == "both" else "entropy"
        assert u.tags()["MEASURE"] == measure
    report = json.loads(res.stats.read_text()) if res.stats else {}
    entry = report["uncertainty"]
    assert entry["measure"] == measure and entry["unsure_threshold"] == 0.5
    expected = 100.0 * np.count_nonzero(values[valid] >= UNSURE_U8) / valid.sum()
    assert entry["unsure_percent"] == pytest.approx(expected, abs=1e-3)


def test_mask_with_the_layer_is_the_mask_of_both_networks(tiny_run: Path, tmp_path: Path) -> None:
    from cloudcps.predict import PredictOptions
    from cloudcps.predict.backends import load_model

    scene, _ = scene_pair(tmp_path, "m", 96, 96, seed=4)
    a, b = tmp_path / "a.tif", tmp_path / "b.tif"
    predict_scene(scene, load_model(tiny_run, nets="both"), a, PredictOptions(tile_size=64))
    pair = load_for_uncertainty(tiny_run, nets="both")
    predict_scene(scene, pair, b, PredictOptions(tile_size=64, uncertainty=True))
    with rasterio.open(a) as ma, rasterio.open(b) as mb:
        assert (ma.read(1) == mb.read(1)).mean() > 0.999


def test_cli_writes_the_layer_and_refuses_a_foreign_file(
    tiny_run: Path, make_scene: SceneFactory, tmp_path: Path
) -> None:
    scene, _ = make_scene("c", height=96, width=96)
    out = tmp_path / "masks"
    r = run("predict", scene, "--model", tiny_run, "--nets", "both", "--uncertainty",
            "--out", out, "--tile-size", "64")  # fmt: skip
    assert r.exit_code == 0, r.output
    assert (out / "c_uncertainty.tif").is_file()
    assert json.loads((out / "c_mask.json").read_text())["uncertainty"]["measure"] == "disagreement"
    # a file cloudcps did not write where the layer would go: refused, nothing replaced
    other = tmp_path / "other"
    other.mkdir()
    (other / "c_uncertainty.tif").write_bytes(b"mine")
    r = run("predict", scene, "--model", tiny_run, "--uncertainty", "--out", other,
            "--tile-size", "64", "--overwrite")  # fmt: skip
    assert r.exit_code == 1
    assert "c_uncertainty.tif" in r.output and "not written by cloudcps" in r.output
    assert len(r.output.strip().splitlines()) == 1
    assert sorted(p.name for p in other.iterdir()) == ["c_uncertainty.tif"]
    assert (other / "c_uncertainty.tif").read_bytes() == b"mine"
