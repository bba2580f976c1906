"""The starter model that ships with cloudcps: bare ``predict scene.tif``, value checks, --init."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from click.testing import CliRunner

from cloudcps.cli.main import cli
from cloudcps.contract import DEFAULT_CLASSES, DataContract
from cloudcps.errors import InputError
from cloudcps.modelfiles import default_model_path
from cloudcps.models import (
    ModelSpec,
    create_network,
    load_checkpoint,
    load_for_inference,
    save_checkpoint,
)
from cloudcps.predict import check_value_range
from cloudcps.train import Trainer
from cloudcps.train.config import TrainConfig
from cloudcps.train.data import TileFolder
from tests.conftest import write_raster


def _scene(tmp_path: Path, name: str = "scene.tif", scale: float = 1.0) -> Path:
    """A 4-band reflectance x 10000 scene (UTM, 10 m) with a bright cloud-like band."""
    rng = np.random.default_rng(1)
    data = rng.integers(400, 1400, size=(4, 200, 232)).astype(np.float32)
    data[:, 40:100] += 6000
    arr = (data * scale).astype(np.float32 if scale != 1.0 else np.uint16)
    from affine import Affine

    tf = Affine(10.0, 0.0, 600000.0, 0.0, -10.0, 4100000.0)
    return write_raster(tmp_path / name, arr, crs="EPSG:32618", transform=tf)


def test_the_default_model_ships_with_its_contract() -> None:
    path = default_model_path()
    assert path.stat().st_size < 25 * 2**20
    state = load_checkpoint(path)  # weights_only=True inside
    assert state["starter"]["dtype"] == "float16"
    floats = {k: v for sd in state["nets"] for k, v in sd.items() if v.is_floating_point()}
    # weights in float16; BatchNorm statistics in float32 (rounding them costs accuracy)
    assert floats and all(
        v.dtype == (torch.float32 if "running_" in k else torch.float16) for k, v in floats.items()
    )
    loaded = load_for_inference("default")
    c = loaded.contract
    assert c.classes == DEFAULT_CLASSES
    assert (c.stretch.method, c.stretch.low[0], c.stretch.high[0]) == ("fixed", 0.0, 12000.0)
    assert state["contract"]["input"]["values"].startswith("reflectance x 10000")


def test_bare_predict_writes_the_mask_beside_the_scene(tmp_path: Path) -> None:
    scene = _scene(tmp_path)
    res = CliRunner().invoke(cli, ["-q", "predict", str(scene)])
    assert res.exit_code == 0, res.output
    mask = tmp_path / "scene_mask.tif"
    with rasterio.open(scene) as s, rasterio.open(mask) as m:
        assert (m.crs, m.transform, m.width, m.height) == (s.crs, s.transform, s.width, s.height)
        values = set(np.unique(m.read(1)).tolist())
    assert values <= {0, 1, 2, 3}
    report = json.loads((tmp_path / "scene_mask.json").read_text())
    assert Path(report["model"]) == default_model_path()
    assert report["warnings"] == []
    before = mask.read_bytes(), (tmp_path / "scene_mask.json").read_bytes()

    again = CliRunner().invoke(cli, ["predict", str(scene)])
    assert again.exit_code == 1
    assert "scene_mask.tif already exists" in again.output and "--overwrite" in again.output
    assert len(again.output.strip().splitlines()) == 1
    assert (mask.read_bytes(), (tmp_path / "scene_mask.json").read_bytes()) == before

    forced = CliRunner().invoke(cli, ["-q", "predict", str(scene), "--overwrite"])
    assert forced.exit_code == 0, forced.output
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "scene.tif",
        "scene_mask.json",
        "scene_mask.tif",
    ]


def test_values_far_outside_the_contract_get_a_warning(tmp_path: Path) -> None:
    contract = load_for_inference("default").contract
    good, unit = _scene(tmp_path, "good.tif"), _scene(tmp_path, "unit.tif", scale=1e-4)
    bright = _scene(tmp_path, "bright.tif", scale=20.0)
    with rasterio.open(good) as s:
        assert check_value_range(s, [1, 2, 3], contract) is None
    with rasterio.open(unit) as s:
        msg = check_value_range(s, [1, 2, 3], contract)
        assert msg is not None and "--scale" in msg and "unit.tif" in msg
        assert check_value_range(s, [1, 2, 3], contract, scale=10000) is None
    with rasterio.open(bright) as s:
        msg = check_value_range(s, [1, 2, 3], contract)
        assert msg is not None and "--scale" in msg
    res = CliRunner().invoke(cli, ["-q", "predict", str(unit)])
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "unit_mask.json").read_text())
    assert len(report["warnings"]) == 1 and "--scale" in report["warnings"][0]
    res = CliRunner().invoke(cli, ["-q", "predict", str(unit), "--scale", "10000", "--overwrite"])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "unit_mask.json").read_text())["warnings"] == []


# --------------------------------------------------------------------------------------------
# --init: fine-tuning from a trained model
# --------------------------------------------------------------------------------------------


def _init_cfg(tiles: Path, out: Path, init: str, mode: str) -> TrainConfig:
    return TrainConfig(
        data=str(tiles),
        out=str(out),
        mode=mode,  # type: ignore[arg-type]
        iters=1,
        crop=64,
        batch_size=2,
        device="cpu",
        workers=0,
        init=init,
        encoder="resnet18",
        encoder_weights="none",
    )


def _same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return all(torch.equal(sa[k].float(), sb[k].float()) for k in sa)


def test_init_default_starts_from_the_shipped_weights(tiny_tiles: Path, tmp_path: Path) -> None:
    trainer = Trainer(_init_cfg(tiny_tiles, tmp_path / "R", "default", "supervised"))
    starter = load_for_inference("default", nets="1").model.nets[0]
    assert trainer.spec == ModelSpec.from_dict(load_checkpoint(default_model_path())["model"])
    assert trainer.cfg.encoder == trainer.spec.encoder  # --init sets the architecture
    assert _same(trainer.nets[0], starter)
    assert "starter.pt" in trainer.weights_desc


def _one_net_checkpoint(tiles: Path, path: Path, classes: tuple[str, ...] | None = None) -> Path:
    contract = TileFolder(tiles).contract
    if classes is not None:
        contract = DataContract(classes, contract.bands, contract.stretch, contract.tile_size)
    spec = ModelSpec("deeplabv3plus", "resnet18", len(contract.classes))
    net = create_network(spec, seed=123)
    save_checkpoint(
        path,
        {
            "model": spec.to_dict(),
            "nets": [net.state_dict()],
            "iteration": 7,
            "config": {},
            "contract": contract.to_dict(),
        },
    )
    return path


def test_init_cps_from_one_network(tiny_tiles: Path, tmp_path: Path) -> None:
    ckpt = _one_net_checkpoint(tiny_tiles, tmp_path / "one.pt")
    trainer = Trainer(_init_cfg(tiny_tiles, tmp_path / "R", str(ckpt), "cps"))
    saved = load_for_inference(ckpt).model.nets[0]
    net1, net2 = trainer.nets
    assert _same(net1, saved)
    assert _same(net2.encoder, saved.encoder)  # type: ignore[arg-type]
    assert not _same(net2.decoder, saved.decoder)  # type: ignore[arg-type]  # CPS starts apart


def test_init_from_another_class_set_is_refused(tiny_tiles: Path, tmp_path: Path) -> None:
    ckpt = _one_net_checkpoint(tiny_tiles, tmp_path / "three.pt", ("clear", "cloud", "shadow"))
    with pytest.raises(InputError, match=r"predicts classes \['clear', 'cloud', 'shadow'\]"):
        Trainer(_init_cfg(tiny_tiles, tmp_path / "R", str(ckpt), "supervised"))
    res = CliRunner().invoke(
        cli,
        ["train", "--data", str(tiny_tiles), "--out", str(tmp_path / "R2"), "--init", str(ckpt)],
    )
    assert res.exit_code == 1 and "--init" in res.output and "Traceback" not in res.output


def test_cli_train_with_init_runs(tiny_tiles: Path, tmp_path: Path) -> None:
    ckpt = _one_net_checkpoint(tiny_tiles, tmp_path / "one.pt")
    out = tmp_path / "R"
    res = CliRunner().invoke(
        cli,
        [
            *("-q", "train", "--data", str(tiny_tiles), "--out", str(out), "--init", str(ckpt)),
            *("--mode", "supervised", "--iters", "1", "--crop", "64", "--batch-size", "2"),
            *("--device", "cpu", "--workers", "0"),
        ],
    )
    assert res.exit_code == 0, res.output
    state = load_checkpoint(out / "latest.pt")
    assert state["config"]["init"] == str(ckpt)
    assert state["model"]["encoder"] == "resnet18"


def test_the_shipped_model_beats_the_brightness_rule_on_real_chips() -> None:
    """A regression guard on real labels (On Cloud N val, 5 Sentinel-2 chips): the shipped
    model's cloud IoU stays above the rule "cloud where mean R, G, B > 2000" (53.1 there;
    the model card has the full tables)."""
    from cloudcps.metrics import confusion_matrix
    from cloudcps.predict import ArraySink, Predictor, RasterSource
    from cloudcps.predict.backends import load_model
    from tests.conftest import shared_data

    folder = shared_data("oncloudn")
    model = load_model("default", backend="onnx")
    pred = Predictor(model)
    cm_model = np.zeros((2, 2), np.int64)
    cm_rule = np.zeros((2, 2), np.int64)
    fold = np.array([0, 1, 1, 0] + [255] * 252, np.uint8)
    for img in sorted((folder / "images").glob("*.tif")):
        with rasterio.open(img) as src, rasterio.open(folder / "labels" / img.name) as lab:
            ref = lab.read(1).astype(np.uint8)
            sink = ArraySink(src.height, src.width, pred.k, keep_probs=False)
            pred.run(RasterSource(src, [1, 2, 3]), sink)
            rule = (src.read([1, 2, 3]).astype(np.float32).mean(0) > 2000).astype(np.uint8)
        cm_model += confusion_matrix(fold[sink.classes], ref, 2)
        cm_rule += confusion_matrix(rule, ref, 2)

    def cloud_iou(cm: np.ndarray) -> float:
        return float(cm[1, 1] / (cm[1, 1] + cm[0, 1] + cm[1, 0]))

    assert cloud_iou(cm_rule) == pytest.approx(0.531, abs=0.005)
    assert cloud_iou(cm_model) > 0.59 > cloud_iou(cm_rule) + 0.05  # measured 0.619


def test_init_default_warns_only_when_the_tiles_differ(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Tiles made the README's way from 4-band scenes (NIR in the band list, dropped from the
    tiles) match the starter's RGB contract: no warning; another stretch is named."""
    from cloudcps.contract import parse_stretch
    from cloudcps.tiling import TileOptions, tile_scenes
    from tests.conftest import L8_MAP, scene_pair

    scenes = [scene_pair(tmp_path, f"s{i}", 64, 64, seed=i, x0=5e5 + 1e4 * i)[0] for i in range(2)]
    for name, stretch, gamma in (("same", "0:12000", 2.0), ("other", "0:5000", 1.0)):
        opts = TileOptions(
            tile_size=64, label_dirs=(tmp_path / "labels",), label_map=L8_MAP,
            labeled_fraction=1.0, val=("s1",), image_format="png",
            stretch=parse_stretch(stretch), gamma=gamma,
        )  # fmt: skip
        tile_scenes(scenes, tmp_path / name, opts)
        caplog.clear()
        with caplog.at_level("WARNING"):
            Trainer(_init_cfg(tmp_path / name, tmp_path / f"R-{name}", "default", "supervised"))
        warned = [r for r in caplog.records if "fine-tuning works best" in r.getMessage()]
        assert len(warned) == (0 if name == "same" else 1), name
