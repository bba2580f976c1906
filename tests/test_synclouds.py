"""Synthetic clouds over real ground (train --synthetic-clouds) and known-clear scenes
(tile --clear)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from cloudcps.cli.main import cli
from cloudcps.contract import Stretch, partial_code
from cloudcps.models import load_checkpoint
from cloudcps.synthetic.clouds import CloudLayer, LayerThresholds, SyntheticClouds, composite
from cloudcps.tiling import TileOptions, tile_scenes
from cloudcps.train import Trainer, build_data, resolve_config
from tests.conftest import SceneFactory, write_raster
from tests.test_train import TINY_ARGS, tiny_cfg

STRETCH = Stretch("fixed", (0.0,) * 3, (12000.0,) * 3, gamma=2.0)
CLEAR, THICK, THIN, SHADOW = 0, 1, 2, 3


def _hand_layer(h: int = 8, w: int = 8) -> CloudLayer:
    """Columns 0-1 opaque cloud, 2-3 a see-through veil, 4-5 in shadow, 6-7 untouched."""
    alpha = np.zeros((h, w), np.float32)
    alpha[:, 0:2] = 0.95
    alpha[:, 2:4] = 0.3
    shade = np.zeros((h, w), np.float32)
    shade[:, 4:6] = 0.8
    colour = np.full((3, h, w), 0.7, np.float32)
    return CloudLayer(alpha=alpha, colour=colour, shade=shade, keep=np.full(3, 0.3, np.float32))


def test_label_follows_the_layer_on_a_hand_made_case() -> None:
    image = np.full((8, 8, 3), 90, np.uint8)
    label = np.full((8, 8), CLEAR, np.uint8)
    label[0] = THICK  # real thick cloud along the top row
    label[1] = 255  # unlabelled row
    label[2] = partial_code([CLEAR, SHADOW])  # "not cloud" from a coarse label
    label[3] = partial_code([THICK, THIN])  # "cloud" of unknown thickness
    valid = np.ones((8, 8), bool)
    valid[7, 7] = False
    img2, lab2 = composite(image, label, valid, _hand_layer(), STRETCH, LayerThresholds())
    # opaque -> thick everywhere it covers, whatever was below (also unlabelled ground)
    assert (lab2[:7, 0:2] == THICK).all()
    # veil -> thin over clear and "not cloud"; real thick stays thick; unknown stays unknown;
    # a coarse "cloud" label stays what it was
    assert lab2[0, 2] == THICK and lab2[1, 2] == 255 and lab2[3, 2] == partial_code([1, 2])
    assert lab2[2, 2] == THIN and (lab2[4:, 2:4] == THIN).all()
    # shadow only where no cloud covers it and the ground may be shadowed
    assert (lab2[4:, 4:6] == SHADOW).all() and lab2[2, 4] == SHADOW
    assert lab2[0, 4] == THICK and lab2[1, 4] == 255 and lab2[3, 4] == partial_code([1, 2])
    # untouched columns keep their labels and pixels
    assert (lab2[:, 6:7] == label[:, 6:7]).all() and (img2[:, 6] == image[:, 6]).all()
    # the cloud is brighter than the ground, the shadow darker; nodata is left alone
    assert img2[5, 0, 0] > 90 and img2[5, 2, 0] > 90 and img2[5, 4, 0] < 90
    assert lab2[7, 7] == label[7, 7] and (img2[7, 7] == image[7, 7]).all()


def test_reflectance_round_trip() -> None:
    from cloudcps.synthetic.clouds import from_reflectance, to_reflectance

    levels = np.arange(256, dtype=np.uint8).reshape(16, 16)
    image = np.stack([levels] * 3, axis=-1)
    assert np.array_equal(from_reflectance(to_reflectance(image, STRETCH), STRETCH), image)


def test_same_seed_same_sample_and_share(tiny_tiles: Path, tmp_path: Path) -> None:
    data = build_data(tiny_cfg(tiny_tiles, tmp_path / "R", synthetic_clouds=0.5))
    ds = data.labeled
    assert ds.synthetic is not None and ds.synthetic.share == 0.5
    a, b = ds[(0, 1234)], ds[(0, 1234)]
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])
    chosen = [ds.synthetic.chosen(s) for s in range(2000)]
    assert 0.45 < np.mean(chosen) < 0.55
    seed = next(s for s in range(100) if ds.synthetic.chosen(s))
    plain = build_data(tiny_cfg(tiny_tiles, tmp_path / "R")).labeled
    assert plain.synthetic is None
    assert not torch.equal(ds[(0, seed)]["image"], plain[(0, seed)]["image"])
    # validation samples (whole images, no seed) never get a layer
    assert data.val is not None and data.val.synthetic is None


def test_batchnorm_recalibration_crops_follow_the_option(tiny_tiles: Path, tmp_path: Path) -> None:
    """The recalibration crops carry training's synthetic layers by default, sample for sample;
    --bn-recalibrate-real gives the same crops without them."""
    layered = build_data(tiny_cfg(tiny_tiles, tmp_path / "R", synthetic_clouds=1.0))
    assert layered.calibration.synthetic is not None
    real = build_data(
        tiny_cfg(tiny_tiles, tmp_path / "R", synthetic_clouds=1.0, bn_recalibrate_synthetic=False)
    )
    assert real.labeled.synthetic is not None
    assert real.calibration.synthetic is None and real.calibration.paste is None
    a, b = real.calibration[(0, 7)], layered.calibration[(0, 7)]
    assert not torch.equal(a["image"], b["image"])
    plain = build_data(tiny_cfg(tiny_tiles, tmp_path / "R")).calibration[(0, 7)]
    assert torch.equal(a["image"], plain["image"]) and torch.equal(a["mask"], plain["mask"])


def test_layers_label_every_class_and_stay_in_range() -> None:
    sc = SyntheticClouds(1.0, STRETCH)
    image = np.full((96, 96, 3), 80, np.uint8)
    label = np.zeros((96, 96), np.uint8)
    seen = np.zeros(256, np.int64)
    for seed in range(40):
        _, lab = sc.apply(image, label, np.ones((96, 96), bool), seed)
        seen += np.bincount(lab.ravel(), minlength=256)
    assert (seen[:4] > 0).all() and seen[4:].sum() == 0


@pytest.mark.parametrize(
    ("value", "words"),
    [("1.5", "--synthetic-clouds 1.5 must be a share in [0, 1]"), ("-0.1", "must be a share")],
)
def test_bad_share_is_refused(tiny_tiles: Path, tmp_path: Path, value: str, words: str) -> None:
    res = CliRunner().invoke(
        cli,
        ["train", "--data", str(tiny_tiles), "--out", str(tmp_path / "R"), "--iters", "1",
         *TINY_ARGS, "--synthetic-clouds", value],
    )  # fmt: skip
    assert res.exit_code == 1
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and words in lines[0], res.output
    assert not (tmp_path / "R").exists()


def test_other_class_set_is_refused(tiny_tiles: Path, tmp_path: Path) -> None:
    import shutil

    other = tmp_path / "other"
    shutil.copytree(tiny_tiles, other)
    man = json.loads((other / "manifest.json").read_text())
    man["classes"] = [{"id": i, "name": n} for i, n in enumerate(["a", "b", "c", "d"])]
    (other / "manifest.json").write_text(json.dumps(man))
    res = CliRunner().invoke(
        cli,
        ["train", "--data", str(other), "--out", str(tmp_path / "R"), "--iters", "1",
         *TINY_ARGS, "--synthetic-clouds", "0.5"],
    )  # fmt: skip
    assert res.exit_code == 1
    assert "--synthetic-clouds needs the classes clear" in res.output
    assert len(res.output.strip().splitlines()) == 1


def test_resume_with_synthetic_clouds_equals_uninterrupted(
    tiny_tiles: Path, tmp_path: Path
) -> None:
    kw = {"iters": 4, "eval_every": 2, "synthetic_clouds": 0.7, "mode": "supervised"}
    whole = Trainer(tiny_cfg(tiny_tiles, tmp_path / "A", **kw))
    whole.fit()
    Trainer(tiny_cfg(tiny_tiles, tmp_path / "B", **kw)).fit(stop_at=2)
    cfg_r, state = resolve_config({"out": str(tmp_path / "B")}, None, resume=True)
    assert cfg_r.synthetic_clouds == 0.7  # restored from the checkpoint's config
    resumed = Trainer(cfg_r, resume_state=state)
    resumed.fit()
    for (k, va), vb in zip(
        whole.nets[0].state_dict().items(), resumed.nets[0].state_dict().values(), strict=True
    ):
        assert torch.equal(va, vb), k
    assert load_checkpoint(tmp_path / "B" / "latest.pt")["config"]["synthetic_clouds"] == 0.7


# --------------------------------------------------------------------------------------------
# tile --clear
# --------------------------------------------------------------------------------------------


def _clear_scene(path: Path, nodata_cols: int = 10) -> Path:
    rng = np.random.default_rng(3)
    data = rng.integers(300, 1500, size=(3, 100, 120)).astype(np.uint16)
    data[:, :, :nodata_cols] = 0
    return write_raster(path, data, nodata=0)


def test_tile_clear_labels_every_valid_pixel(make_scene: SceneFactory, tmp_path: Path) -> None:
    img, _ = make_scene("labelled", height=128, width=128)
    clear = _clear_scene(tmp_path / "clear" / "cloudfree.tif")
    res = CliRunner().invoke(
        cli,
        ["tile", str(img), "--label-dir", str(tmp_path / "labels"),
         "--label-map", "128:0,255:1,192:2,64:3", "--bands", "1,2,3", "--clear", str(clear),
         "--tile-size", "64", "--labeled-fraction", "1", "--format", "png",
         "--out", str(tmp_path / "T")],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    man = json.loads((tmp_path / "T" / "manifest.json").read_text())
    rec = {s["id"]: s for s in man["scenes"]}
    assert rec["cloudfree"]["clear"] is True and rec["labelled"]["clear"] is False
    tiles = [t for t in man["tiles"] if t["scene"] == "cloudfree"]
    assert len(tiles) == 4
    labeled = set((tmp_path / "T" / "splits" / "labeled.txt").read_text().split())
    assert {t["id"] for t in tiles} <= labeled
    first = next(t for t in tiles if t["window"]["col_off"] == 0 and t["window"]["row_off"] == 0)
    lab = np.asarray(Image.open(tmp_path / "T" / first["label"]))
    assert (lab[:, :10] == 255).all() and (lab[:, 10:64] == 0).all()
    assert first["class_counts"] == [54 * 64, 0, 0, 0]


def test_tile_clear_with_a_label_raster_is_refused(
    make_scene: SceneFactory, tmp_path: Path
) -> None:
    img, _ = make_scene("labelled", height=64, width=64)
    res = CliRunner().invoke(
        cli,
        ["tile", str(img), "--label-dir", str(tmp_path / "labels"),
         "--label-map", "128:0,255:1,192:2,64:3", "--clear", str(img),
         "--tile-size", "64", "--out", str(tmp_path / "T")],
    )  # fmt: skip
    assert res.exit_code == 1
    assert "is given with --clear but has the label raster" in res.output
    assert len(res.output.strip().splitlines()) == 1 and not (tmp_path / "T").exists()


def test_tile_clear_needs_a_clear_class(tmp_path: Path) -> None:
    clear = _clear_scene(tmp_path / "c.tif")
    with pytest.raises(Exception, match="--clear labels scenes with the class 'clear'"):
        tile_scenes(
            [], tmp_path / "T", TileOptions(bands=(1, 2, 3), clear=(clear,), classes=("a", "b"))
        )


# --------------------------------------------------------------------------------------------
# The same pixels reach the network at train and at predict time
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("gamma", [1.0, 2.0])
def test_train_and_predict_feed_the_network_the_same_pixels(
    make_scene: SceneFactory, tmp_path: Path, gamma: float
) -> None:
    """A training sample of a tile (no augmentation) equals the predictor's input for the same
    window of the scene; labels stay on their pixels through tiling."""
    import rasterio

    from cloudcps.contract import parse_stretch
    from cloudcps.predict import InputTransform
    from cloudcps.train.data import SegmentationDataset, TileFolder

    img, lab = make_scene("s", height=128, width=128)
    opts = TileOptions(
        tile_size=64, label_dirs=(tmp_path / "labels",), label_map={128: 0, 255: 1, 192: 2, 64: 3},
        labeled_fraction=1.0, image_format="png", stretch=parse_stretch("0:12000"), gamma=gamma,
    )  # fmt: skip
    tile_scenes([img], tmp_path / "T", opts)
    folder = TileFolder(tmp_path / "T")
    ids = folder.split("labeled")
    ds = SegmentationDataset(folder.items(ids), None, True, num_classes=4)
    transform = InputTransform(folder.contract)
    with rasterio.open(img) as src, rasterio.open(lab) as lsrc:
        for i, tid in enumerate(ids):
            w = folder.tiles[tid]["window"]
            win = rasterio.windows.Window(w["col_off"], w["row_off"], w["width"], w["height"])
            raw = src.read([1, 2, 3], window=win)
            x_predict = transform(raw, np.ones(raw.shape[1:], bool))
            sample = ds[i]
            np.testing.assert_allclose(sample["image"].numpy(), x_predict, atol=1e-6)
            codes = lsrc.read(1, window=win)
            expect = np.select(
                [codes == 128, codes == 255, codes == 192, codes == 64], [0, 1, 2, 3]
            )
            assert np.array_equal(sample["mask"].numpy(), expect)


def test_labels_stay_on_their_pixels_through_augmentation() -> None:
    """Scale, crop, flip and padding move image, label (partial codes included) and validity
    together: the label is a function of the pixel value before and after."""
    from cloudcps.train.data import Augment, augment

    rng = np.random.default_rng(0)
    blocks = rng.integers(0, 4, size=(8, 8))
    codes = np.array([0, 1, partial_code([0, 3]), partial_code([1, 2])], np.uint8)
    label = codes[np.kron(blocks, np.ones((32, 32), int))]
    image = np.repeat((np.kron(blocks, np.ones((32, 32), int)) * 60 + 20)[..., None], 3, -1)
    image = image.astype(np.uint8)
    valid = np.ones(label.shape, bool)
    for seed in range(12):
        im, lb, va = augment(image, label, valid, Augment(128, 0.5, 2.0), seed)
        inside = va & (lb != 255)
        expected = codes[np.clip(np.rint((im[..., 0].astype(int) - 20) / 60), 0, 3).astype(int)]
        agree = (expected[inside] == lb[inside]).mean()
        assert agree > 0.95, (seed, agree)  # only pixels on resized block edges may differ
        # the check can fail: a label a few pixels off its image would not pass it
        shifted = np.roll(lb, 4, axis=1)
        assert (expected[inside] == shifted[inside]).mean() < 0.95
        assert set(np.unique(lb)) <= {*codes.tolist(), 255}
        assert (lb[~va] == 255).all() and (im[~va] == 0).all()


def test_auto_class_weights_count_the_composites(tiny_tiles: Path, tmp_path: Path) -> None:
    """With synthetic clouds the loss sees more cloud than the label files hold: --class-weights
    auto counts what the loss sees, so cloud is weighted less than from the files alone."""
    files = Trainer(tiny_cfg(tiny_tiles, tmp_path / "A", class_weights="auto", mode="supervised"))
    comp = Trainer(
        tiny_cfg(
            tiny_tiles, tmp_path / "B", class_weights="auto", mode="supervised",
            synthetic_clouds=1.0,
        )
    )  # fmt: skip
    assert files.class_weight is not None and comp.class_weight is not None
    assert float(comp.class_weight[1]) < float(files.class_weight[1])  # thick cloud
    assert float(comp.class_weight[0]) > float(files.class_weight[0]) * 0.9  # clear no lower
