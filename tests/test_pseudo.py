"""Pseudo-label policies on hand-made probabilities: which pixels are kept, with which class."""

from __future__ import annotations

import math

import pytest
import torch

from cloudcps.train.pseudo import (
    AdaptivePolicy,
    PseudoLabelPolicy,
    ThresholdPolicy,
    box_mix_mask,
    restrict_to_labels,
)


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


def test_adaptive_thresholds_follow_the_labelled_shares() -> None:
    pol = AdaptivePolicy(2, threshold=0.9, momentum=0.5)
    pol.observe_labeled(torch.tensor([[0, 0, 0, 1]]))  # class 1 is 25 % of labelled pixels
    assert pol.labeled_share.tolist() == pytest.approx([0.75, 0.25])
    # 8 unlabelled pixels; the network never gives class 1 more than 0.45
    p1 = [0.05, 0.10, 0.15, 0.20, 0.30, 0.35, 0.40, 0.45]
    probs = _probs([[1 - v, v] for v in p1])
    valid = torch.ones(1, 1, 8, dtype=torch.bool)
    pol.update(probs, valid)
    t_expected = [
        torch.quantile(torch.tensor([1 - v for v in p1]), 0.25).item(),
        torch.quantile(torch.tensor(p1), 0.75).item(),
    ]
    assert pol.thresholds.tolist() == pytest.approx(t_expected)  # 0.6375 and 0.3625
    t = pol.targets(probs, valid)
    # class 1 is never the argmax, yet on its 2 likeliest pixels (its 25 %) it is the only class
    # that clears its bar: they become class 1 instead of being taught as class 0
    assert t.target.tolist() == [[[0, 0, 0, 0, 0, 0, 1, 1]]]
    assert t.raw.tolist() == [[[0] * 8]]
    # the EMA moves thresholds part of the way; bounds hold
    pol.update(_probs([[0.999, 0.001]] * 8), valid)
    assert pol.thresholds[0].item() == pytest.approx(0.5 * t_expected[0] + 0.5 * 0.9)
    assert pol.thresholds[1].item() == pytest.approx(0.5 * t_expected[1] + 0.5 * pol.floor)
    fresh = AdaptivePolicy(2)
    fresh.load_state_dict(pol.state_dict())
    assert torch.equal(fresh.thresholds, pol.thresholds)


def test_adaptive_keeps_a_pixel_only_when_one_class_clears_its_bar() -> None:
    pol = AdaptivePolicy(3)
    pol.thresholds = torch.tensor([0.9, 0.4, 0.5], dtype=torch.float64)
    rows = [
        [0.95, 0.03, 0.02],
        [0.7, 0.28, 0.02],
        [0.3, 0.45, 0.25],
        [0.3, 0.2, 0.5],
        [0.05, 0.45, 0.5],
    ]
    t = pol.targets(_probs(rows), torch.ones(1, 1, 5, dtype=torch.bool))
    # 0.95 >= 0.9 -> class 0; nothing clears its bar -> ignored, not pushed toward the confident
    # class; the unsure weak class 1 alone clears 0.4 -> class 1; 0.5 >= 0.5 -> class 2;
    # classes 1 and 2 both clear their bars -> ambiguous, ignored
    assert t.target.tolist() == [[[0, 255, 1, 2, 255]]]
    assert t.denominator.item() == 5


def test_adaptive_never_labels_noise() -> None:
    pol = AdaptivePolicy(4)
    probs = torch.full((1, 4, 2, 2), 0.01)
    probs[:, 0] = 0.97  # the network is sure of class 0 everywhere
    valid = torch.ones(1, 2, 2, dtype=torch.bool)
    pol.observe_labeled(torch.tensor([[0, 1, 2, 3]]))
    pol.update(probs, valid)
    assert (pol.thresholds[1:] == pol.floor).all()  # 0.01 never reaches the floor 0.125
    assert pol.targets(probs, valid).target.unique().tolist() == [0]


def test_cutmix_boxes() -> None:
    g = torch.Generator().manual_seed(0)
    m = box_mix_mask(4, 64, 64, g)
    assert m.shape == (4, 1, 64, 64) and set(m.unique().tolist()) <= {0.0, 1.0}
    area = m.mean((1, 2, 3))
    assert (area > 0.05).all() and (area <= 0.5).all()


def test_trust_labels_replaces_pseudo_labels_on_labelled_images() -> None:
    probs = torch.zeros(2, 2, 1, 3)
    probs[:, 0] = 0.9  # the other network says class 0 everywhere
    probs[:, 1] = 0.1
    t = PseudoLabelPolicy(2).targets(probs, torch.ones(2, 1, 3, dtype=torch.bool))
    mask = torch.tensor([[[1, 255, 0]]])  # image 0 is labelled (one pixel unlabelled)
    trusted = t.trust_labels(mask)
    assert trusted.target.tolist() == [[[1, 0, 0]], [[0, 0, 0]]]
    assert trusted.denominator.item() == t.denominator.item() == 6


def test_trust_labels_keeps_the_pseudo_label_inside_a_partial_label() -> None:
    """A partial label (a set of classes) is no class id: its pixels keep the pseudo-label,
    which restrict_to_labels has already kept inside the set (a code of 128+ as a target
    crashed the loss)."""
    from cloudcps.contract import partial_code

    probs = torch.zeros(1, 3, 1, 3)
    probs[:, 2] = 0.8  # the other network says class 2 everywhere
    probs[:, 1] = 0.2
    cloud = partial_code([1, 2])
    mask = torch.tensor([[[0, cloud, 255]]])
    kept = restrict_to_labels(probs, mask)
    t = PseudoLabelPolicy(3).targets(kept, torch.ones(1, 1, 3, dtype=torch.bool))
    trusted = t.trust_labels(mask)
    assert trusted.target.tolist() == [[[0, 2, 2]]]
    assert float(trusted.loss(torch.zeros(1, 3, 1, 3))) > 0


def test_aligned_lifts_a_class_the_networks_forget_back_to_its_labelled_share() -> None:
    from cloudcps.train.pseudo import AlignedPolicy

    pol = AlignedPolicy(2, momentum=0.5)
    pol.observe_labeled(torch.tensor([[0, 0, 0, 1]]))  # class 1: 25 % of the labelled pixels
    p1 = [0.05, 0.05, 0.05, 0.05, 0.05, 0.05, 0.28, 0.40]  # never the argmax; mean 0.1225
    probs = _probs([[1 - v, v] for v in p1])
    valid = torch.ones(1, 1, 8, dtype=torch.bool)
    assert PseudoLabelPolicy(2).targets(probs, valid).target.tolist() == [[[0] * 8]]
    pol.update(probs, valid)
    assert pol.predicted_share.tolist() == pytest.approx([0.8775, 0.1225])
    # factors 0.85 and 2.04: 0.40 -> 0.82 beats 0.60 -> 0.51; 0.28 -> 0.57 loses to 0.62
    assert pol.factors().tolist() == pytest.approx([0.75 / 0.8775, 0.25 / 0.1225])
    t = pol.targets(probs, valid)
    assert t.target.tolist() == [[[0, 0, 0, 0, 0, 0, 0, 1]]]
    assert t.denominator.item() == 8  # every valid pixel is kept, as in plain CPS
    # a class that is never predicted is lifted by at most max_factor
    pol.update(_probs([[1.0, 0.0]] * 8), valid)
    pol.update(_probs([[1.0, 0.0]] * 8), valid)
    assert pol.factors()[1].item() <= pol.max_factor
    fresh = AlignedPolicy(2)
    fresh.load_state_dict(pol.state_dict())
    assert torch.equal(fresh.predicted_share, pol.predicted_share)
    assert torch.equal(fresh.labeled_share, pol.labeled_share)
