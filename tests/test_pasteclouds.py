"""Real clouds pasted over other ground (train --paste-clouds), DeepLabV3+ with a local ASPP
(--arch deeplabv3plus-local) and the synthetic thin-cloud opacity (--synthetic-thin-alpha)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from cloudcps.cli.main import cli
from cloudcps.contract import partial_code
from cloudcps.models import (
    GROUP_NORM_SUFFIX,
    LOCAL_POOL_ARCH,
    ModelSpec,
    create_network,
    load_checkpoint,
)
from cloudcps.synthetic.paste import PastedClouds, cloud_bank, paste
from cloudcps.train import Trainer, build_data, resolve_config
from tests.test_synclouds import CLEAR, SHADOW, STRETCH, THICK, THIN
from tests.test_train import TINY_ARGS, tiny_cfg

CLOUD = partial_code([THICK, THIN])


def test_label_follows_the_pasted_pixels_on_a_hand_made_case() -> None:
    h, w = 8, 10
    image = np.full((h, w, 3), 60, np.uint8)
    label = np.full((h, w), CLEAR, np.uint8)
    label[:, 9] = 255  # unlabelled column
    valid = np.ones((h, w), bool)
    valid[7, 0] = False
    alpha = np.zeros((h, w), np.float32)
    alpha[:, 0:3] = 1.0  # pasted cloud core
    alpha[:, 3] = 0.3  # its soft edge: blended, but the ground keeps its label
    colour = np.full((3, h, w), 0.6, np.float32)
    pasted = np.full((h, w), 255, np.uint8)
    pasted[:, 0] = THICK
    pasted[:, 1] = THIN
    pasted[:, 2] = CLOUD  # a coarse "thick or thin" label stays coarse
    shade = np.zeros((h, w), np.float32)
    shade[:, 5:7] = 0.9  # a shadow over clear ground
    shade[:, 0] = 0.9  # ... that cannot fall under the cloud
    shade[:, 9] = 0.9  # ... and over unknown ground darkens but labels nothing
    cfg = PastedClouds(1.0, STRETCH, (0,))
    img2, lab2 = paste(image, label, valid, alpha, colour, pasted, shade, np.full(3, 0.3), cfg)
    assert (lab2[:7, 0] == THICK).all() and (lab2[:, 1] == THIN).all()
    assert (lab2[:, 2] == CLOUD).all() and (lab2[:, 3] == CLEAR).all()
    assert (lab2[:, 5:7] == SHADOW).all() and (lab2[:, 4] == CLEAR).all()
    assert (lab2[:, 9] == 255).all() and (lab2[:, 7:9] == CLEAR).all()
    # pixels: cloud brighter, soft edge in between, shadow darker, the rest and nodata untouched
    assert img2[0, 0, 0] > img2[0, 3, 0] > 60 and img2[0, 5, 0] < 60
    assert (img2[:, 7:9] == image[:, 7:9]).all()
    assert lab2[7, 0] == label[7, 0] and (img2[7, 0] == image[7, 0]).all()


def test_bank_holds_tiles_with_some_but_not_only_cloud() -> None:
    clear = np.zeros((10, 10), np.uint8)
    some = clear.copy()
    some[:3] = THICK
    coarse = np.full((10, 10), partial_code([CLEAR, SHADOW]), np.uint8)
    coarse[:, :4] = CLOUD
    full = np.full((10, 10), THIN, np.uint8)
    assert cloud_bank([clear, some, None, coarse, full]) == (1, 3)


def _tile(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    image = rng.integers(20, 120, size=(64, 64, 3)).astype(np.uint8)
    label = np.zeros((64, 64), np.uint8)
    label[16:40, 10:50] = THICK
    label[40:48, 10:50] = THIN
    image[label > 0] = 230
    return image, label, np.ones((64, 64), bool)


def test_pasting_is_a_function_of_the_seed_and_labels_stay_codes() -> None:
    bank = {0: _tile(0), 1: _tile(1)}
    p = PastedClouds(1.0, STRETCH, (0, 1))
    ground = np.full((64, 64, 3), 70, np.uint8)
    label = np.zeros((64, 64), np.uint8)
    valid = np.ones((64, 64), bool)
    a = p.apply(ground, label, valid, 17, bank.__getitem__)
    b = p.apply(ground, label, valid, 17, bank.__getitem__)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    seen = np.zeros(256, np.int64)
    for seed in range(30):
        img, lab = p.apply(ground, label, valid, seed, bank.__getitem__)
        seen += np.bincount(lab.ravel(), minlength=256)
        cloud = (lab == THICK) | (lab == THIN)
        if cloud.any():  # cloud pixels are the bright pasted ones
            assert img[cloud].mean() > img[lab == CLEAR].mean() + 40
    assert (seen[:4] > 0).all() and seen[4:].sum() == 0
    assert PastedClouds(0.3, STRETCH, (0,)).chosen(5) == PastedClouds(0.3, STRETCH, (0,)).chosen(5)
    share = np.mean([PastedClouds(0.3, STRETCH, (0,)).chosen(s) for s in range(2000)])
    assert 0.25 < share < 0.35


def test_training_samples_get_pasted_clouds_and_resume_is_exact(
    tiny_tiles: Path, tmp_path: Path
) -> None:
    data = build_data(tiny_cfg(tiny_tiles, tmp_path / "R", paste_clouds=1.0))
    ds = data.labeled
    assert ds.paste is not None and ds.paste.bank
    assert data.val is not None and data.val.paste is None
    plain = build_data(tiny_cfg(tiny_tiles, tmp_path / "R")).labeled
    changed = [not torch.equal(ds[(i, 99)]["mask"], plain[(i, 99)]["mask"]) for i in range(len(ds))]
    assert any(changed)
    assert torch.equal(ds[(0, 5)]["image"], ds[(0, 5)]["image"])
    kw = {"iters": 4, "eval_every": 2, "paste_clouds": 0.7, "mode": "supervised"}
    whole = Trainer(tiny_cfg(tiny_tiles, tmp_path / "A", **kw))
    whole.fit()
    Trainer(tiny_cfg(tiny_tiles, tmp_path / "B", **kw)).fit(stop_at=2)
    cfg_r, state = resolve_config({"out": str(tmp_path / "B")}, None, resume=True)
    assert cfg_r.paste_clouds == 0.7
    resumed = Trainer(cfg_r, resume_state=state)
    resumed.fit()
    for (k, va), vb in zip(
        whole.nets[0].state_dict().items(), resumed.nets[0].state_dict().values(), strict=True
    ):
        assert torch.equal(va, vb), k
    # a resumed run keeps the composites it started with
    res = CliRunner().invoke(
        cli, ["train", "--out", str(tmp_path / "B"), "--resume", "--paste-clouds", "0.2"]
    )
    assert res.exit_code == 1 and "was trained with --paste-clouds 0.7" in res.output


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--paste-clouds", "1.5"], "--paste-clouds 1.5 must be a share in [0, 1]"),
        (["--paste-clouds", "-1"], "--paste-clouds -1.0 must be a share"),
        (["--synthetic-thin-alpha", "0"], "--synthetic-thin-alpha 0.0 must be in (0, 0.35)"),
        (["--synthetic-thin-alpha", "0.5"], "--synthetic-thin-alpha 0.5 must be in"),
        (["--arch", "deeplabv3plus-nowhere"], "--arch takes an smp architecture"),
    ],
)
def test_bad_new_options_are_refused_in_one_line(
    tiny_tiles: Path, tmp_path: Path, args: list[str], words: str
) -> None:
    res = CliRunner().invoke(
        cli,
        ["train", "--data", str(tiny_tiles), "--out", str(tmp_path / "R"), "--iters", "1",
         *TINY_ARGS, *args],
    )  # fmt: skip
    assert res.exit_code == 1, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and words in lines[0], res.output
    assert not (tmp_path / "R").exists()


def test_a_folder_without_cloudy_labels_is_refused_for_pasting(
    tiny_tiles: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import cloudcps.train.setup as cps

    monkeypatch.setattr(cps, "cloud_bank", lambda labels: ())
    res = CliRunner().invoke(
        cli,
        ["train", "--data", str(tiny_tiles), "--out", str(tmp_path / "R"), "--iters", "1",
         *TINY_ARGS, "--paste-clouds", "0.5"],
    )  # fmt: skip
    assert res.exit_code == 1 and "no labelled tile" in res.output
    assert len(res.output.strip().splitlines()) == 1
    assert not (tmp_path / "R").exists()


def test_thin_alpha_decides_what_faint_haze_is_labelled(tiny_tiles: Path, tmp_path: Path) -> None:
    low = build_data(tiny_cfg(tiny_tiles, tmp_path / "R", synthetic_clouds=1.0)).labeled
    high = build_data(
        tiny_cfg(tiny_tiles, tmp_path / "R", synthetic_clouds=1.0, synthetic_thin_alpha=0.2)
    ).labeled
    assert low.synthetic is not None and high.synthetic is not None
    assert high.synthetic.thresholds.thin_alpha == 0.2
    thin_low = sum(int((low[(0, s)]["mask"] == THIN).sum()) for s in range(12))
    thin_high = sum(int((high[(0, s)]["mask"] == THIN).sum()) for s in range(12))
    assert thin_high < thin_low


def test_local_aspp_sees_a_fixed_neighbourhood() -> None:
    """Each ASPP cell of deeplabv3plus-local depends on cells at most 6 away (atrous rates 2/4/6,
    9x9 pooling), at any input size; plain DeepLabV3+'s ASPP sees the whole input."""
    net = create_network(ModelSpec(LOCAL_POOL_ARCH, "tu-mobilenetv3_small_100", 4), seed=0)
    aspp = net.decoder.aspp.eval()
    x = torch.randn(1, aspp[0].convs[0][0].in_channels, 32, 32)
    y = x.clone()
    y[..., 24:, 24:] += 5.0  # far corner changed
    with torch.no_grad():
        a, b = aspp(x), aspp(y)
    assert torch.equal(a[..., :14, :14], b[..., :14, :14])  # more than 6 cells away (+ 3x3 sep)
    assert not torch.equal(a[..., 22:, 22:], b[..., 22:, 22:])
    # the same net on a crop gives the same cells away from the crop's border
    with torch.no_grad():
        crop = aspp(x[..., 8:24, 8:24])
    assert torch.allclose(crop[..., 7:9, 7:9], a[..., 15:17, 15:17], atol=1e-5)
    plain = create_network(ModelSpec("deeplabv3plus", "tu-mobilenetv3_small_100", 4), seed=0)
    g = plain.decoder.aspp.eval()
    with torch.no_grad():
        assert not torch.equal(g(x)[..., :14, :14], g(y)[..., :14, :14])


def test_group_norm_decoder_normalises_each_sample_by_itself() -> None:
    """``-gn``: no BatchNorm left in the decoder, the encoder's kept; in training mode a crop's
    output does not depend on the other crops of its batch (BatchNorm's does)."""
    from torch import nn

    arch = LOCAL_POOL_ARCH + GROUP_NORM_SUFFIX
    net = create_network(ModelSpec(arch, "tu-mobilenetv3_small_100", 4), seed=0)
    decoder = list(net.decoder.modules())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in decoder)
    assert sum(isinstance(m, nn.GroupNorm) for m in decoder) == 9
    assert any(isinstance(m, nn.BatchNorm2d) for m in net.encoder.modules())
    assert isinstance(net.decoder.aspp[0].convs[-1][0], nn.AvgPool2d)  # still the local ASPP
    x = torch.randn(3, 3, 64, 64)

    def first_crop(model: nn.Module, n: int) -> torch.Tensor:
        """The first crop's output of the decoder in training mode, fed the first ``n`` crops
        of ``x`` (the ASPP's dropout off: it draws per batch)."""
        model.decoder.train()
        for m in model.decoder.modules():
            if isinstance(m, nn.Dropout):
                m.eval()
        with torch.no_grad():
            feats = model.encoder.eval()(x[:n])
            return model.decoder(feats)[0]

    assert torch.allclose(first_crop(net, 1), first_crop(net, 3), atol=1e-5)
    plain = create_network(ModelSpec("deeplabv3plus", "tu-mobilenetv3_small_100", 4), seed=0)
    assert not torch.allclose(first_crop(plain, 2), first_crop(plain, 3), atol=1e-3)


def test_unknown_group_norm_arch_is_refused(tiny_tiles: Path, tmp_path: Path) -> None:
    res = CliRunner().invoke(
        cli, ["train", "--data", str(tiny_tiles), "-o", str(tmp_path / "R"), "--arch", "nonet-gn",
              *TINY_ARGS],
    )  # fmt: skip
    assert res.exit_code == 1
    line = res.output.strip().splitlines()[-1]
    assert "nonet" in line and "-gn" in line
    assert not (tmp_path / "R").exists() or not any((tmp_path / "R").iterdir())  # nothing written


@pytest.mark.parametrize("arch", [LOCAL_POOL_ARCH, "deeplabv3plus" + GROUP_NORM_SUFFIX])
def test_new_architectures_predict_through_onnx(
    arch: str, tiny_tiles: Path, tmp_path: Path
) -> None:
    """A run of either new architecture is rebuilt from its checkpoint and exported."""
    from cloudcps.models import load_for_inference
    from cloudcps.predict.graphs import export_onnx

    out = tmp_path / "R"
    Trainer(tiny_cfg(tiny_tiles, out, iters=2, arch=arch, mode="supervised")).fit()
    state = load_checkpoint(out / "latest.pt")
    assert state["model"]["arch"] == arch
    loaded = load_for_inference(out / "latest.pt", nets="1")
    onnx = export_onnx(out / "latest.pt", "1", tmp_path / "g.onnx")
    import onnxruntime as ort

    x = np.random.default_rng(0).normal(size=(1, 3, 96, 128)).astype(np.float32)
    sess = ort.InferenceSession(str(onnx))
    got = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    with torch.no_grad():
        want = loaded.model(torch.from_numpy(x)).numpy()
    assert np.abs(got - want).max() < 1e-3


def test_init_converts_a_batchnorm_decoder_to_group_norm(tiny_tiles: Path, tmp_path: Path) -> None:
    """``--init`` of a BatchNorm-decoder run with ``--arch <its arch>-gn``: the encoder and every
    convolution as trained, each GroupNorm with its BatchNorm's scale and shift; any other arch
    is refused in one line that names the conversion."""
    from torch import nn

    from cloudcps.contract import DataContract
    from cloudcps.models import init_from_checkpoint

    base = tmp_path / "bn"
    Trainer(tiny_cfg(tiny_tiles, base, iters=2, mode="supervised")).fit()
    contract = DataContract.from_dict(load_checkpoint(base / "latest.pt")["contract"])
    gn_arch = "deeplabv3plus" + GROUP_NORM_SUFFIX
    (net,), spec, desc = init_from_checkpoint(base / "latest.pt", contract, 0, 1, arch=gn_arch)
    assert spec.arch == gn_arch and "GroupNorm" in desc
    saved = load_checkpoint(base / "latest.pt")["nets"][0]
    norms = [n for n, m in net.decoder.named_modules() if isinstance(m, nn.GroupNorm)]
    assert len(norms) == 9
    own = net.state_dict()
    for name in norms:
        for p in ("weight", "bias"):
            assert torch.equal(own[f"decoder.{name}.{p}"], saved[f"decoder.{name}.{p}"])
        assert f"decoder.{name}.running_var" in saved and f"decoder.{name}.running_var" not in own
    for k, v in own.items():
        assert torch.equal(v, saved[k].float())  # nothing left at its random start

    out = tmp_path / "gn"
    args = ["train", "--data", str(tiny_tiles), "--mode", "supervised", "--iters", "2",
            "--init", str(base / "latest.pt"), *TINY_ARGS]  # fmt: skip
    res = CliRunner().invoke(cli, [*args, "-o", str(out), "--arch", gn_arch])
    assert res.exit_code == 0, res.output
    assert load_checkpoint(out / "latest.pt")["model"]["arch"] == gn_arch
    res = CliRunner().invoke(cli, [*args, "-o", str(tmp_path / "u"), "--arch", "unet"])
    assert res.exit_code == 1
    line = res.output.strip().splitlines()[-1]
    assert "--arch unet" in line and f"--arch {gn_arch} converts" in line
    assert not (tmp_path / "u").exists() or not any((tmp_path / "u").iterdir())
