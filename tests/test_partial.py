"""Partial labels (a code meaning "one of these classes"): parsing, tiling, loss, pseudo-labels."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from PIL import Image

from cloudcps.cli.main import cli
from cloudcps.contract import is_partial, parse_label_map, partial_classes, partial_code
from cloudcps.errors import InputError
from cloudcps.tiling import TileOptions, tile_scenes
from cloudcps.train.pseudo import restrict_to_labels, supervised_loss
from tests.conftest import write_raster

CLEAR_OR_SHADOW = 128 + 1 + 8
CLOUD = 128 + 2 + 4


def test_partial_codes_round_trip() -> None:
    assert partial_code([0, 3]) == CLEAR_OR_SHADOW
    assert partial_code([2, 1]) == CLOUD
    assert partial_code([2]) == 2  # a set of one class is that class
    assert partial_classes(CLEAR_OR_SHADOW) == (0, 3)
    assert partial_classes(CLOUD) == (1, 2)
    assert partial_classes(3) == (3,)
    assert partial_classes(255) == ()
    assert is_partial(CLOUD) and not is_partial(3) and not is_partial(255)


def test_parse_label_map_with_sets() -> None:
    assert parse_label_map("0:0|3,1:1|2") == {0: CLEAR_OR_SHADOW, 1: CLOUD}
    assert parse_label_map("128:0, 255:1, 7:3|0") == {128: 0, 255: 1, 7: CLEAR_OR_SHADOW}


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("0:0|", "SRC:DST"),
        ("0:a|b", "SRC:DST"),
        ("0:0|3:1", "SRC:DST"),
        ("0:0|255", "255"),
        ("0:1|1", "twice"),
        ("0:0|9", "0..6"),
        ("0:0|3,0:1|2", "mapped twice"),
    ],
)
def test_parse_label_map_bad_sets(text: str, needle: str) -> None:
    with pytest.raises(ValueError, match=needle.replace("|", r"\|").replace(".", r"\.")):
        parse_label_map(text)


def test_sets_need_a_small_class_set() -> None:
    opts = TileOptions(label_map={0: CLOUD}, classes=tuple(f"c{i}" for i in range(9)))
    with pytest.raises(InputError, match="at most 7 classes"):
        opts.validate()
    opts = TileOptions(label_map={0: partial_code([0, 5])})  # class 5 of a 4-class set
    with pytest.raises(InputError, match=r"class ids \[5\]"):
        opts.validate()


# --------------------------------------------------------------------------------------------
# The loss, on hand-made logits
# --------------------------------------------------------------------------------------------


def _logits() -> torch.Tensor:
    # (1, 4, 1, 4): four pixels with different class scores
    v = torch.tensor(
        [[2.0, 0.5, -1.0, 0.0], [0.1, 3.0, 1.0, -2.0], [0.0, 0.0, 0.0, 0.0], [-1.0, 1.0, 2.0, 0.5]]
    )
    return v.t().reshape(1, 4, 1, 4)


def test_partial_loss_is_minus_log_of_the_allowed_mass() -> None:
    logits = _logits()
    mask = torch.tensor([[[CLEAR_OR_SHADOW, CLOUD, 255, CLOUD]]])
    p = logits.softmax(1)[0, :, 0]  # (4 classes, 4 pixels)
    expected = [
        -math.log(p[0, 0] + p[3, 0]),
        -math.log(p[1, 1] + p[2, 1]),
        -math.log(p[1, 3] + p[2, 3]),
    ]
    got = supervised_loss(logits, mask)
    assert got.item() == pytest.approx(sum(expected) / 3, rel=1e-5)


def test_partial_loss_equals_cross_entropy_on_exact_labels() -> None:
    logits = _logits()
    mask = torch.tensor([[[0, 1, 255, 2]]])
    ce = F.cross_entropy(logits, mask, ignore_index=255)
    assert supervised_loss(logits, mask).item() == pytest.approx(ce.item(), rel=1e-6)
    # mixed with partial pixels, exact pixels still cost their cross-entropy
    mixed = torch.tensor([[[0, 1, CLOUD, 2]]])
    p = logits.softmax(1)[0, :, 0]
    by_hand = (
        -math.log(p[0, 0]) - math.log(p[1, 1]) - math.log(p[1, 2] + p[2, 2]) - math.log(p[2, 3])
    ) / 4
    assert supervised_loss(logits, mixed).item() == pytest.approx(by_hand, rel=1e-5)


def test_partial_loss_teaches_the_set_and_nothing_more() -> None:
    # swapping the scores of the two allowed classes leaves the loss unchanged...
    a = torch.tensor([2.0, -1.0, 0.5, 0.3]).reshape(1, 4, 1, 1)
    b = torch.tensor([0.3, -1.0, 0.5, 2.0]).reshape(1, 4, 1, 1)
    mask = torch.tensor([[[CLEAR_OR_SHADOW]]])
    assert supervised_loss(a, mask).item() == pytest.approx(supervised_loss(b, mask).item())
    # ...and its gradient moves mass from the other classes to the set as a whole
    x = a.clone().requires_grad_(True)
    supervised_loss(x, mask).backward()
    g = x.grad.reshape(4)  # type: ignore[union-attr]
    assert g[1] > 0 and g[2] > 0  # disallowed classes pushed down
    assert g[0] < 0 and g[3] < 0  # allowed classes pushed up
    # once the set holds all the mass there is nothing left to learn
    sure = torch.tensor([9.0, -20.0, -20.0, 9.0]).reshape(1, 4, 1, 1)
    assert supervised_loss(sure, mask).item() < 1e-6


def test_pseudo_labels_stay_inside_a_partial_label() -> None:
    probs = torch.tensor([0.6, 0.1, 0.25, 0.05]).reshape(1, 4, 1, 1).repeat(1, 1, 1, 3)
    mask = torch.tensor([[[CLOUD, 255, 0]]])
    out = restrict_to_labels(probs, mask)
    assert out[0, :, 0, 0].tolist() == pytest.approx([0.0, 0.1 / 0.35, 0.25 / 0.35, 0.0])
    assert out[0, :, 0, 0].argmax().item() == 2  # thin, not the unrestricted argmax (clear)
    assert torch.equal(out[..., 1:], probs[..., 1:])  # unlabelled and exact pixels unchanged


# --------------------------------------------------------------------------------------------
# Tiling a binary label as partial labels
# --------------------------------------------------------------------------------------------


def _binary_scene(root: Path) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    img = rng.integers(300, 1500, size=(4, 96, 128)).astype(np.uint16)
    lab = np.zeros((96, 128), np.uint8)
    lab[:40] = 1
    img[:, :40] += 5000
    return (
        write_raster(root / "scenes" / "chip.tif", img),
        write_raster(root / "labels" / "chip.tif", lab),
    )


def test_tile_partial_labels_end_to_end(tmp_path: Path) -> None:
    scene, lab = _binary_scene(tmp_path)
    out = tmp_path / "T"
    res = CliRunner().invoke(
        cli,
        [
            "-q",
            "tile",
            str(scene),
            "--label-dir",
            str(lab.parent),
            "--label-map",
            "0:0|3,1:1|2",
            "--tile-size",
            "64",
            "--labeled-fraction",
            "1",
            "--stretch",
            "0:12000",
            "--gamma",
            "2",
            "--out",
            str(out),
        ],
    )
    assert res.exit_code == 0, res.output
    m = json.loads((out / "manifest.json").read_text())
    assert m["label_map"] == {"0": [0, 3], "1": [1, 2]}
    assert m["partial_labels"] == {str(CLOUD): [1, 2], str(CLEAR_OR_SHADOW): [0, 3]}
    assert m["stretch"]["gamma"] == 2.0
    labelled = (out / "splits" / "labeled.txt").read_text().split()
    assert len(labelled) == len(m["tiles"]) == 4  # partial-only tiles count as labelled
    first = next(t for t in m["tiles"] if t["id"].endswith("r00000_c00000"))
    png = np.asarray(Image.open(out / first["label"]))
    assert set(np.unique(png)) == {CLOUD, CLEAR_OR_SHADOW}
    assert first["class_counts"] == [0, 0, 0, 0]
    assert first["partial_counts"] == {
        str(CLOUD): int((png == CLOUD).sum()),
        str(CLEAR_OR_SHADOW): int((png == CLEAR_OR_SHADOW).sum()),
    }
    assert first["ignore_count"] == 0


def test_tile_bad_partial_syntax_is_one_line(tmp_path: Path) -> None:
    scene, lab = _binary_scene(tmp_path)
    res = CliRunner().invoke(
        cli,
        ["tile", str(scene), "--label-dir", str(lab.parent), "--label-map", "0:0|x", "-o", "T"],
    )
    assert res.exit_code == 1 and res.output.count("\n") == 1
    assert "--label-map" in res.output and "0:0|x" in res.output
    assert "Traceback" not in res.output
    assert not (tmp_path / "T").exists()


def test_gamma_stretch_brightens_dark_values_and_keeps_the_ends() -> None:
    from cloudcps.contract import Stretch

    lin = Stretch("fixed", (0.0,) * 3, (12000.0,) * 3)
    gam = Stretch("fixed", (0.0,) * 3, (12000.0,) * 3, gamma=2.0)
    data = np.array([0, 300, 3000, 12000, 20000], np.uint16).reshape(1, 1, 5).repeat(3, 0)
    a, b = lin.apply(data)[0, 0], gam.apply(data)[0, 0]
    assert a.tolist() == [0, 6, 64, 255, 255]
    assert b.tolist() == [0, round(255 * 0.025**0.5), round(255 * 0.25**0.5), 255, 255]
    assert Stretch.from_dict(gam.to_dict()) == gam
    assert Stretch.from_dict({k: v for k, v in lin.to_dict().items() if k != "gamma"}) == lin


def test_training_on_partial_labels(tmp_path: Path) -> None:
    """CPS with --pool-labeled trains on a folder whose labels are all partial."""
    from cloudcps.train import Trainer
    from cloudcps.train.config import TrainConfig

    scene, lab = _binary_scene(tmp_path)
    opts = TileOptions(
        tile_size=64,
        label_dirs=(lab.parent,),
        label_map=parse_label_map("0:0|3,1:1|2"),
        labeled_fraction=1.0,
        image_format="png",
    )
    tile_scenes([scene], tmp_path / "T", opts)
    cfg = TrainConfig(
        data=str(tmp_path / "T"),
        out=str(tmp_path / "R"),
        iters=2,
        encoder="resnet18",
        encoder_weights="none",
        crop=64,
        batch_size=2,
        device="cpu",
        workers=0,
        pool_labeled=True,
    )
    trainer = Trainer(cfg)
    assert trainer.data.unlabeled is not None and len(trainer.data.unlabeled) == 4
    res = trainer.fit()
    assert res.iteration == 2
    rows = [json.loads(r) for r in (tmp_path / "R" / "metrics.jsonl").read_text().splitlines()]
    assert all(math.isfinite(r["loss"]) and r["loss_sup"] > 0 for r in rows if "loss" in r)


# --------------------------------------------------------------------------------------------
# Class weights of the supervised loss
# --------------------------------------------------------------------------------------------


def test_weighted_loss_matches_torch_and_weighs_partial_labels_by_their_smallest_class() -> None:
    from cloudcps.train.pseudo import balanced_class_weights

    logits = _logits()
    w = torch.tensor([0.5, 1.0, 2.0, 8.0])
    exact = torch.tensor([[[0, 1, 255, 3]]])
    ref = F.cross_entropy(logits, exact, weight=w, ignore_index=255)
    assert supervised_loss(logits, exact, w).item() == pytest.approx(ref.item(), rel=1e-6)
    mixed = torch.tensor([[[CLEAR_OR_SHADOW, CLOUD, 255, 3]]])
    p = logits.softmax(1)[0, :, 0]
    terms = [
        (0.5, -math.log(p[0, 0] + p[3, 0])),  # clear|shadow weighs as clear (0.5 < 8)
        (1.0, -math.log(p[1, 1] + p[2, 1])),  # thick|thin weighs as thick
        (8.0, -math.log(p[3, 3])),
    ]
    by_hand = sum(a * b for a, b in terms) / sum(a for a, _ in terms)
    assert supervised_loss(logits, mixed, w).item() == pytest.approx(by_hand, rel=1e-5)

    counts = torch.tensor([556.0, 361.0, 77.0, 7.0])
    bw = balanced_class_weights(counts)
    share = counts / counts.sum()
    assert float((share * bw).sum()) == pytest.approx(1.0, rel=1e-5)  # loss scale kept
    assert bw.tolist() == sorted(bw.tolist())  # rarer class, larger weight
    ratio = bw / bw[0]
    assert ratio[3].item() == pytest.approx((556 / 7) ** 0.5, rel=1e-4)
    capped = balanced_class_weights(torch.tensor([1e6, 10.0, 0.0, 5.0]))
    assert capped[2].item() == pytest.approx(capped.max().item())  # unseen class: largest weight
    assert (capped.max() / capped.min()).item() == pytest.approx(10.0, rel=1e-5)


@pytest.mark.parametrize("bad", ["auto2", "1,x", "-1,1,1,1", "0,0,0,0", "nan,1,1,1"])
def test_bad_class_weights_are_refused(bad: str) -> None:
    from cloudcps.train.config import TrainConfig

    with pytest.raises(InputError, match="--class-weights"):
        TrainConfig(data="t", class_weights=bad).validate()


def test_class_weights_must_cover_every_class(tiny_tiles: Path, tmp_path: Path) -> None:
    from cloudcps.train import Trainer
    from cloudcps.train.config import TrainConfig

    cfg = TrainConfig(
        data=str(tiny_tiles),
        out=str(tmp_path / "R"),
        mode="supervised",
        encoder="resnet18",
        encoder_weights="none",
        device="cpu",
        class_weights="1,2,3",
    )
    with pytest.raises(InputError, match="3 weights for 4 classes"):
        Trainer(cfg)
    cfg.class_weights = "auto"
    w = Trainer(cfg, overwrite=True).class_weight
    assert w is not None and w.shape == (4,) and bool((w > 0).all())
