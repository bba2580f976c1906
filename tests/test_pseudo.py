"""Pseudo-label policies on hand-made probabilities: which pixels are kept, with which class."""

from __future__ import annotations

import math

import pytest
import torch

from cloudcps.pseudo import AdaptivePolicy, PseudoLabelPolicy, ThresholdPolicy, box_mix_mask


def _probs(rows: list[list[float]]) -> torch.Tensor:
    """(1, K, 1, N) probabilities from N rows of K values."""
    return torch.tensor(rows).T.reshape(1, len(rows[0]), 1, len(rows))


def test_plain_keeps_every_valid_pixel() -> None:
    p = _probs([[0.6, 0.4], [0.2, 0.8], [0.5, 0.5]])
    valid = torch.tensor([[[True, True, False]]])
    t = PseudoLabelPolicy(2).targets(p, valid)
    assert t.target.tolist() == [[[0, 1, 255]]]
    assert t.denominator.item() == 2


def test_threshold_ignores_unsure_pixels_but_counts_them() -> None:
    p = _probs([[0.95, 0.05], [0.6, 0.4], [0.02, 0.98]])
    valid = torch.ones(1, 1, 3, dtype=torch.bool)
    t = ThresholdPolicy(2, threshold=0.9).targets(p, valid)
    assert t.target.tolist() == [[[0, 255, 1]]]
    assert t.denominator.item() == 3  # the ignored pixel still counts: it loses its vote
    logits = torch.log(_probs([[0.7, 0.3], [0.5, 0.5], [0.1, 0.9]]))
    by_hand = -(math.log(0.7) + math.log(0.9)) / 3
    assert t.loss(logits).item() == pytest.approx(by_hand, rel=1e-5)
    assert t.raw.tolist() == [[[0, 0, 1]]]  # before the policy: what the network believes


def test_adaptive_aligns_to_the_labelled_distribution() -> None:
    pol = AdaptivePolicy(2, threshold=0.9)
    pol.labeled_share = torch.tensor([0.5, 0.5], dtype=torch.float64)
    pol.pred_share = torch.tensor([0.8, 0.2], dtype=torch.float64)  # class 1 under-predicted
    pol.confidence = torch.tensor([0.9, 0.45], dtype=torch.float64)  # and less sure
    pol.seen += 1
    assert pol.ratio().tolist() == pytest.approx([0.625, 2.5])
    assert pol.class_thresholds().tolist() == pytest.approx([0.9, 0.45])
    p = _probs([[0.7, 0.3], [0.97, 0.03], [0.85, 0.15]])
    t = pol.targets(p, torch.ones(1, 1, 3, dtype=torch.bool))
    # pixel 0: aligned (0.4375, 0.75) -> class 1 at 0.632 >= 0.45: kept as the weak class
    # pixel 1: aligned (0.606, 0.075) -> class 0 at 0.89 < 0.9: ignored
    # pixel 2: aligned (0.531, 0.375) -> class 0 at 0.586 < 0.9: ignored, not forced to clear
    assert t.target.tolist() == [[[1, 255, 255]]]
    assert t.raw.tolist() == [[[0, 0, 0]]]


def test_adaptive_bounds_and_running_statistics() -> None:
    pol = AdaptivePolicy(3, threshold=0.9, momentum=0.5, max_ratio=4.0, min_scale=0.5)
    pol.observe_labeled(torch.tensor([[0, 0, 1, 2]]))
    assert pol.labeled_share.tolist() == pytest.approx([0.5, 0.25, 0.25])
    p = _probs([[0.9, 0.1, 0.0], [0.8, 0.2, 0.0]])
    pol.update(p, torch.ones(1, 1, 2, dtype=torch.bool))
    # first update replaces the initial guess: predicted share = mean probability
    assert pol.pred_share.tolist() == pytest.approx([0.85, 0.15, 0.0])
    assert pol.confidence[0].item() == pytest.approx(0.85)
    assert pol.ratio()[2].item() == pytest.approx(4.0)  # bounded although class 2 is never seen
    pol.update(_probs([[0.1, 0.9, 0.0]]), torch.ones(1, 1, 1, dtype=torch.bool))
    assert pol.pred_share[1].item() == pytest.approx(0.5 * 0.15 + 0.5 * 0.9)
    assert min(pol.class_thresholds().tolist()) >= 0.45
    state = pol.state_dict()
    fresh = AdaptivePolicy(3)
    fresh.load_state_dict(state)
    assert torch.equal(fresh.pred_share, pol.pred_share)


def test_cutmix_boxes() -> None:
    g = torch.Generator().manual_seed(0)
    m = box_mix_mask(4, 64, 64, g)
    assert m.shape == (4, 1, 64, 64) and set(m.unique().tolist()) <= {0.0, 1.0}
    area = m.mean((1, 2, 3))
    assert (area > 0.05).all() and (area <= 0.5).all()
