"""The method: Cross Pseudo Supervision, and the supervised baseline it must beat.

Cross Pseudo Supervision (Chen, Yuan, Zeng and Wang, "Semi-Supervised Semantic Segmentation
with Cross Pseudo Supervision", CVPR 2021) trains two networks of one architecture (same
pretrained encoder, differently initialised decoders). Each learns from the labelled pixels and
from the other's pseudo-labels on the unlabelled images:

    loss = CE(p1, y) + CE(p2, y) + lambda * [CE(p1, pseudo(p2)) + CE(p2, pseudo(p1))]

Which pseudo-labels a network learns from is a policy (:mod:`cloudcps.train.pseudo`: plain
argmax as in the paper, a confidence threshold, class-wise adaptive thresholds, distribution
alignment); where a label is partial (a set of classes) the pseudo-labels stay inside it. With
CutMix (the paper's strongest variant) the networks learn on unlabelled images mixed inside
random boxes, against the pseudo-labels of the clean images mixed the same way.

The baseline trains one network on the labelled images alone. Names follow UniMatch:
``img_x``/``mask_x`` labelled, ``img_u`` unlabelled. This module computes the losses of one
step; the optimiser, the schedule and the bookkeeping are :mod:`cloudcps.train.loop`'s.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from cloudcps.train.pseudo import (
    PseudoLabelPolicy,
    PseudoTargets,
    box_mix_mask,
    class_counts,
    restrict_to_labels,
    supervised_loss,
)

Forward = Callable[[nn.Module, torch.Tensor], torch.Tensor]
"""How a network runs on a batch (device, autocast): :class:`cloudcps.train.setup.Forward`."""


@dataclass
class Batch:
    """Images (B, C, H, W), labels (B, H, W; 255 ignored) and valid pixels (B, H, W) on the
    device."""

    image: torch.Tensor
    mask: torch.Tensor
    valid: torch.Tensor

    @classmethod
    def of(cls, batch: dict[str, Any], device: torch.device) -> Batch:
        return cls(
            batch["image"].to(device, non_blocking=True),
            batch["mask"].to(device, non_blocking=True),
            batch["valid"].to(device, non_blocking=True),
        )


@dataclass
class StepLosses:
    """The supervised and the CPS (unweighted) loss of one step, and pseudo-label statistics."""

    supervised: torch.Tensor
    cps: torch.Tensor
    stats: dict[str, Any]


def supervised_step(
    forward: Forward, net: nn.Module, x: Batch, class_weight: torch.Tensor | None
) -> StepLosses:
    """The baseline: cross-entropy of one network on the labelled pixels."""
    pred_x = forward(net, x.image)
    loss_x = supervised_loss(pred_x, x.mask, class_weight)
    return StepLosses(loss_x, torch.zeros((), device=x.image.device), {})


def cps_step(
    forward: Forward,
    nets: list[nn.Module],
    x: Batch,
    u: Batch | None,
    policy: PseudoLabelPolicy,
    class_weight: torch.Tensor | None,
    cutmix_generator: torch.Generator | None = None,
    trust_labels: bool = False,
) -> StepLosses:
    """Both networks on the labelled images and on the unlabelled ones (``u``; the labelled
    images themselves when there are none), each taught by the labels and by the other's
    pseudo-labels.

    ``cutmix_generator`` (seeded by the caller) draws the CutMix boxes; without it the networks
    see the unlabelled images as they are. ``trust_labels`` puts the ground truth instead of
    pseudo-labels where the labelled images in the CPS term have it (not with CutMix, whose
    CPS term sees only unlabelled images).
    """
    if u is None:  # CPS on the labelled images alone
        u = Batch(x.image, x.mask, x.valid)
    policy.observe_labeled(x.mask)
    if cutmix_generator is not None:
        cross = _cross_on_mixed(cutmix_generator, forward, nets, x, u, policy)
    else:
        cross = _cross_on_clean(forward, nets, x, u, policy, trust_labels)
    pred1, pred2, t_for_1, loss_u = cross
    bx = x.image.shape[0]
    loss_x = supervised_loss(pred1[:bx], x.mask, class_weight) + supervised_loss(
        pred2[:bx], x.mask, class_weight
    )
    return StepLosses(loss_x, loss_u, _pseudo_stats(t_for_1, u.image.shape[0], policy))


_Cross = tuple[torch.Tensor, torch.Tensor, PseudoTargets, torch.Tensor]
"""Both networks' logits on [labelled; unlabelled], net 1's pseudo-targets and the CPS loss."""


def _cross_on_clean(
    forward: Forward,
    nets: list[nn.Module],
    x: Batch,
    u: Batch,
    policy: PseudoLabelPolicy,
    trust_labels: bool,
) -> _Cross:
    """The CPS term on every image of the step, labelled and unlabelled, as they are."""
    net1, net2 = nets
    bx = x.image.shape[0]
    inputs = torch.cat([x.image, u.image])
    valid = torch.cat([x.valid, u.valid])
    pred1, pred2 = forward(net1, inputs), forward(net2, inputs)
    prob1, prob2 = pred1.detach().float().softmax(1), pred2.detach().float().softmax(1)
    # pseudo-labels stay inside what a partial label allows
    mask_all = torch.cat([x.mask, u.mask])
    prob1, prob2 = restrict_to_labels(prob1, mask_all), restrict_to_labels(prob2, mask_all)
    policy.update(((prob1 + prob2) / 2)[bx:], u.valid)
    t_for_1 = policy.targets(prob2, valid)
    t_for_2 = policy.targets(prob1, valid)
    if trust_labels:
        t_for_1, t_for_2 = t_for_1.trust_labels(x.mask), t_for_2.trust_labels(x.mask)
    return pred1, pred2, t_for_1, t_for_1.loss(pred1) + t_for_2.loss(pred2)


def _cross_on_mixed(
    generator: torch.Generator,
    forward: Forward,
    nets: list[nn.Module],
    x: Batch,
    u: Batch,
    policy: PseudoLabelPolicy,
) -> _Cross:
    """The CPS term on the unlabelled images mixed by CutMix; the pseudo-labels are those of
    the clean images, mixed the same way (boxes drawn from ``generator``)."""
    net1, net2 = nets
    bx = x.image.shape[0]
    img_mix, valid_mix, mix = cutmix(u.image, u.valid, generator)
    with torch.no_grad():
        prob1_u = restrict_to_labels(forward(net1, u.image).float().softmax(1), u.mask)
        prob2_u = restrict_to_labels(forward(net2, u.image).float().softmax(1), u.mask)
        prob1_u, prob2_u = mix(prob1_u), mix(prob2_u)
    inputs = torch.cat([x.image, img_mix])
    pred1, pred2 = forward(net1, inputs), forward(net2, inputs)
    policy.update((prob1_u + prob2_u) / 2, valid_mix)
    t_for_1 = policy.targets(prob2_u, valid_mix)
    t_for_2 = policy.targets(prob1_u, valid_mix)
    return pred1, pred2, t_for_1, t_for_1.loss(pred1[bx:]) + t_for_2.loss(pred2[bx:])


def cutmix(
    img_u: torch.Tensor, valid_u: torch.Tensor, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]:
    """Mix each unlabelled image with a partner inside random boxes (CPS + CutMix).

    The partner is the next image of the batch (or the mirrored image for a batch of one);
    ``mix`` applies the same boxes to anything computed on the clean images.
    """
    b, _, h, w = img_u.shape
    m = box_mix_mask(b, h, w, generator).to(img_u.device)

    def partner(t: torch.Tensor) -> torch.Tensor:
        return torch.roll(t, 1, 0) if b > 1 else torch.flip(t, [-1])

    def mix(t: torch.Tensor) -> torch.Tensor:
        mm = m if t.ndim == 4 else m[:, 0]
        return t * (1 - mm) + partner(t) * mm

    valid_mix = mix(valid_u.float()) > 0.5
    return mix(img_u), valid_mix, mix


def _pseudo_stats(
    t_for_1: PseudoTargets, n_unlabeled: int, policy: PseudoLabelPolicy
) -> dict[str, Any]:
    """Class counts of the pseudo-labels net 1 learns from, on the unlabelled images only."""
    k = policy.num_classes
    n_u = t_for_1.raw.shape[0]
    part = slice(n_u - n_unlabeled, n_u)
    return {
        "pseudo": class_counts(t_for_1.raw[part].cpu(), k),
        "kept": class_counts(t_for_1.target[part].cpu(), k),
        "valid_u": float(t_for_1.valid[part].sum()),
    }
