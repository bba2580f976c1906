"""Losses and pseudo-label policies for Cross Pseudo Supervision.

CPS trains each network on the other's argmax pseudo-labels. Plain argmax reinforces confident
mistakes: a weak class (thin cloud) that both networks half-believe gets labelled as the
dominant class and disappears. The policies here decide which pseudo-labels a network is trained
on:

``plain``
    argmax of the other network everywhere the image is valid (the paper).
``threshold``
    as plain, but pixels whose confidence is under ``threshold`` are ignored.
``adaptive``
    class-wise thresholds that follow the class distribution, in the spirit of class-wise adaptive
    thresholds (FlexMatch, FreeMatch) and distribution-aligned pseudo-labels (DARS): class ``c``'s
    threshold is the probability that its likeliest ``q_c`` of the unlabelled pixels reach,
    ``q_c`` being the class's labelled share, measured as training goes. A pixel is labelled
    ``c`` only where ``c`` alone clears its threshold; where a weak class clears its (low) bar
    beside a confident class, or nothing clears, the pixel is ignored instead of being pushed
    toward the confident, possibly wrong, class.
``aligned``
    distribution alignment: each class's probability is scaled by its labelled share over its
    running mean probability on the unlabelled pixels before the argmax, so a class the
    networks begin to forget keeps its share of the pseudo-labels (ReMixMatch's distribution
    alignment, applied per pixel).

The CPS loss of kept pixels is normalised by *all* valid pixels, so ignoring a pixel removes its
vote rather than re-weighting the rest.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cloudcps.contract import IGNORE_INDEX, PARTIAL_BASE, partial_classes


def pixel_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-pixel cross-entropy (B, H, W); 0 where ``target`` is 255."""
    return F.cross_entropy(logits.float(), target, ignore_index=IGNORE_INDEX, reduction="none")


def allowed_classes(mask: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(B, K, H, W) bool: the classes each label value allows (one for a class id, several for
    a partial label, none for 255 or a value outside the class set)."""
    return _allowed_table(num_classes).to(mask.device)[mask.clamp(0, 255)].permute(0, 3, 1, 2)


@functools.lru_cache(maxsize=8)
def _allowed_table(num_classes: int) -> torch.Tensor:
    table = torch.zeros(256, num_classes, dtype=torch.bool)
    for code in range(256):
        for c in partial_classes(code):
            if c < num_classes:
                table[code, c] = True
    return table


def has_partial(mask: torch.Tensor) -> bool:
    """Whether a label batch holds partial labels (sets of classes)."""
    return bool(((mask > PARTIAL_BASE) & (mask < IGNORE_INDEX)).any())


def supervised_loss(
    logits: torch.Tensor, mask: torch.Tensor, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean cross-entropy over labelled pixels (0 when a batch has none).

    A partial label (a set ``S`` of classes, see :func:`cloudcps.tiling.partial_code`) costs
    ``-log sum_{c in S} p_c``: the network is taught that the pixel is one of ``S`` and nothing
    about which; for a single class this is the cross-entropy.

    ``weight`` (K,) weighs each pixel by its class (a partial label by the smallest weight of its
    classes); the mean is over the weights, as in ``F.cross_entropy(weight=...)``.
    """
    partial = has_partial(mask)
    if not partial and weight is None:  # the common case: plain cross-entropy, no lookup
        n = (mask != IGNORE_INDEX).sum().clamp_min(1)
        return pixel_cross_entropy(logits, mask).sum() / n
    logits = logits.float()
    allowed = allowed_classes(mask, logits.shape[1])
    labelled = allowed.any(1)
    if not partial:
        per_pixel = pixel_cross_entropy(logits, mask)
    else:
        lse_all = torch.logsumexp(logits, 1)
        lse_allowed = torch.logsumexp(logits.masked_fill(~allowed, float("-inf")), 1)
        per_pixel = torch.where(labelled, lse_all - lse_allowed, torch.zeros_like(lse_all))
    if weight is None:
        return per_pixel.sum() / labelled.sum().clamp_min(1)
    w = weight.to(logits.device).view(1, -1, 1, 1).expand_as(logits)
    w = torch.where(allowed, w, torch.full_like(w, float("inf"))).amin(1)
    w = torch.where(labelled, w, torch.zeros_like(w))
    return (per_pixel * w).sum() / w.sum().clamp_min(1e-12)


def balanced_class_weights(
    counts: torch.Tensor, power: float = 0.5, cap: float = 10.0
) -> torch.Tensor:
    """Class weights ``(1 / share) ** power``, scaled so that the mean weight of a labelled pixel
    is 1 and capped at ``cap`` times the smallest; classes never seen get the largest weight."""
    counts = counts.double()
    share = counts / counts.sum().clamp_min(1)
    w = torch.where(share > 0, share.clamp_min(1e-12) ** -power, torch.zeros_like(share))
    if (w > 0).any():
        w = torch.where(w > 0, w, w.max())
        w = w.clamp(max=float(w.min()) * cap)
        w = w / (share * w).sum().clamp_min(1e-12)
    else:
        w = torch.ones_like(share)
    return w.float()


def restrict_to_labels(probs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Probabilities renormalised over the classes a partial label allows (other pixels as they
    are), so a pseudo-label never contradicts what a coarse label says."""
    if not has_partial(mask):
        return probs
    allowed = allowed_classes(mask, probs.shape[1])
    partial = ((mask > PARTIAL_BASE) & (mask < IGNORE_INDEX)).unsqueeze(1)
    kept = probs * allowed
    kept = kept / kept.sum(1, keepdim=True).clamp_min(1e-12)
    return torch.where(partial, kept, probs)


@dataclass
class PseudoTargets:
    """Pseudo-labels for one network: class ids (255 = ignored) and the loss normaliser."""

    target: torch.Tensor
    denominator: torch.Tensor
    raw: torch.Tensor
    valid: torch.Tensor

    def trust_labels(self, mask: torch.Tensor) -> PseudoTargets:
        """Use the ground truth instead of pseudo-labels on the first ``len(mask)`` images, where
        it names one class: a network is never taught against a label. Where a partial label
        allows several classes, the pseudo-label (already kept inside them) stays."""
        n = mask.shape[0]
        target = self.target.clone()
        target[:n] = torch.where(mask < PARTIAL_BASE, mask, target[:n])
        return PseudoTargets(target, self.denominator, self.raw, self.valid)

    def loss(self, logits: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of ``logits`` against the kept pseudo-labels, over all valid pixels."""
        return pixel_cross_entropy(logits, self.target).sum() / self.denominator


def class_counts(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Pixel count per class of a label map (255 and other out-of-range values skipped)."""
    flat = labels.reshape(-1)
    flat = flat[(flat >= 0) & (flat < num_classes)]
    return torch.bincount(flat, minlength=num_classes).to(torch.float64)


class PseudoLabelPolicy:
    """``plain`` (argmax) pseudo-labels; the base of the other policies."""

    name = "plain"

    def __init__(self, num_classes: int, threshold: float = 0.9) -> None:
        self.num_classes = num_classes
        self.threshold = threshold

    def observe_labeled(self, mask: torch.Tensor) -> None:
        """See the labels of a labelled batch (for policies that track class shares)."""

    def select(self, probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The pseudo-label of every pixel and whether it is kept (both B x H x W)."""
        pseudo = probs.argmax(1)
        return pseudo, torch.ones_like(pseudo, dtype=torch.bool)

    def targets(self, probs: torch.Tensor, valid: torch.Tensor) -> PseudoTargets:
        """Pseudo-labels from the other network's softmax ``probs`` (B, K, H, W), no gradient."""
        with torch.no_grad():
            probs = probs.detach().float()
            raw = probs.argmax(1)
            pseudo, kept = self.select(probs)
            kept = kept & valid
            target = torch.where(kept, pseudo, torch.full_like(pseudo, IGNORE_INDEX))
            raw = torch.where(valid, raw, torch.full_like(raw, IGNORE_INDEX))
            denom = valid.sum().clamp_min(1).float()
        return PseudoTargets(target=target, denominator=denom, raw=raw, valid=valid)

    def update(self, probs: torch.Tensor, valid: torch.Tensor) -> None:
        """Update running statistics from a batch of unlabelled probabilities."""

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        del state


class ThresholdPolicy(PseudoLabelPolicy):
    """Ignore pixels whose confidence is under a fixed ``threshold``."""

    name = "threshold"

    def select(self, probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        conf, pseudo = probs.max(1)
        return pseudo, conf >= self.threshold


class AdaptivePolicy(PseudoLabelPolicy):
    """Class-wise thresholds aligned to the labelled class distribution (see the module doc).

    For each class ``c`` the threshold ``t_c`` is the ``1 - q_c`` quantile of the class-``c``
    probability over recent unlabelled pixels, where ``q_c`` is the class's share of the labelled
    pixels: about ``q_c`` of the pixels are at least that class-``c``-like. A pixel is
    pseudo-labelled ``c`` only if ``c`` is the one class whose probability clears its threshold;
    pixels that clear none, or several, are ignored. A weak class the networks are unsure of
    (never the argmax) still gets its likeliest pixels; where it competes with a confident class,
    the pixel is left alone instead of being taught as the confident class. Thresholds are
    bounded to ``[floor, threshold]``: no class needs more than ``threshold`` confidence, and none
    is taken below ``floor`` (half the uniform probability), so noise never becomes a label.

    Args:
        num_classes: K.
        threshold: upper bound of every class threshold.
        momentum: EMA momentum of the running statistics (per iteration).
    """

    name = "adaptive"

    def __init__(self, num_classes: int, threshold: float = 0.9, momentum: float = 0.9) -> None:
        super().__init__(num_classes, threshold)
        self.momentum = momentum
        self.floor = 0.5 / num_classes
        k = num_classes
        self.labeled_share = torch.full((k,), 1.0 / k, dtype=torch.float64)
        self.thresholds = torch.full((k,), threshold, dtype=torch.float64)
        self.seen = torch.zeros((), dtype=torch.float64)
        self.seen_labeled = torch.zeros((), dtype=torch.float64)

    def observe_labeled(self, mask: torch.Tensor) -> None:
        counts = class_counts(mask.cpu(), self.num_classes)
        if counts.sum() > 0:
            m = self.momentum if self.seen_labeled > 0 else 0.0
            self.labeled_share = m * self.labeled_share + (1 - m) * counts / counts.sum()
            self.seen_labeled += 1

    def select(self, probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = self.thresholds.to(probs.device, probs.dtype).view(1, -1, 1, 1)
        passed = probs >= t
        pseudo = (probs / t).argmax(1)
        return pseudo, passed.sum(1) == 1

    def update(self, probs: torch.Tensor, valid: torch.Tensor) -> None:
        with torch.no_grad():
            p = probs.detach().float().permute(0, 2, 3, 1)[valid]  # (N, K)
            if p.shape[0] == 0:
                return
            if p.shape[0] > 200_000:  # quantiles of a fixed-stride subsample are enough
                p = p[:: p.shape[0] // 200_000 + 1]
            q = (1.0 - self.labeled_share).clamp(0.0, 1.0).to(p.device, p.dtype)
            t = torch.stack([torch.quantile(p[:, c], q[c]) for c in range(self.num_classes)])
            t = t.double().cpu().clamp(self.floor, self.threshold)
            m = self.momentum if self.seen > 0 else 0.0
            self.thresholds = m * self.thresholds + (1 - m) * t
            self.seen += 1

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {
            "labeled_share": self.labeled_share.clone(),
            "thresholds": self.thresholds.clone(),
            "seen": self.seen.clone(),
            "seen_labeled": self.seen_labeled.clone(),
        }

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for key in ("labeled_share", "thresholds", "seen", "seen_labeled"):
            if key in state:
                setattr(self, key, state[key].to(torch.float64).cpu())


class AlignedPolicy(AdaptivePolicy):
    """Distribution alignment (ReMixMatch's, per pixel): the other network's probabilities are
    multiplied by ``labelled share / predicted share`` of each class and renormalised before the
    argmax, the predicted share being the running mean of the class's probability over the
    unlabelled pixels.

    A class the networks start to forget (its mean probability on unlabelled pixels falls below
    its share of the labelled pixels) is lifted back, so its likeliest pixels stay its
    pseudo-labels instead of going to the dominant class, which CPS would then teach both
    networks. Every valid pixel is kept, as in plain CPS. The factor is bounded to
    ``[1 / max_factor, max_factor]``.
    """

    name = "aligned"
    max_factor = 10.0

    def __init__(self, num_classes: int, threshold: float = 0.9, momentum: float = 0.9) -> None:
        super().__init__(num_classes, threshold, momentum)
        self.predicted_share = torch.full((num_classes,), 1.0 / num_classes, dtype=torch.float64)

    def factors(self) -> torch.Tensor:
        ratio = self.labeled_share / self.predicted_share.clamp_min(1e-12)
        return ratio.clamp(1.0 / self.max_factor, self.max_factor)

    def select(self, probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        w = self.factors().to(probs.device, probs.dtype).view(1, -1, 1, 1)
        pseudo = (probs * w).argmax(1)
        return pseudo, torch.ones_like(pseudo, dtype=torch.bool)

    def update(self, probs: torch.Tensor, valid: torch.Tensor) -> None:
        with torch.no_grad():
            p = probs.detach().float().permute(0, 2, 3, 1)[valid]  # (N, K)
            if p.shape[0] == 0:
                return
            mean = p.mean(0).double().cpu()
            m = self.momentum if self.seen > 0 else 0.0
            self.predicted_share = m * self.predicted_share + (1 - m) * mean
            self.seen += 1

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {**super().state_dict(), "predicted_share": self.predicted_share.clone()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        super().load_state_dict(state)
        if "predicted_share" in state:
            self.predicted_share = state["predicted_share"].to(torch.float64).cpu()


POLICIES: dict[str, type[PseudoLabelPolicy]] = {
    "plain": PseudoLabelPolicy,
    "threshold": ThresholdPolicy,
    "adaptive": AdaptivePolicy,
    "aligned": AlignedPolicy,
}


def make_policy(name: str, num_classes: int, threshold: float) -> PseudoLabelPolicy:
    try:
        return POLICIES[name](num_classes, threshold)
    except KeyError:
        raise ValueError(
            f"unknown pseudo-label policy {name!r}; choose {sorted(POLICIES)}"
        ) from None


def box_mix_mask(
    batch: int,
    height: int,
    width: int,
    generator: torch.Generator,
    prop_range: tuple[float, float] = (0.25, 0.5),
    n_boxes: int = 3,
) -> torch.Tensor:
    """CutMix masks (B, 1, H, W): ``n_boxes`` boxes covering about ``prop_range`` of the area.

    1 inside the boxes (take the partner image), 0 elsewhere.
    """
    masks = torch.zeros(batch, 1, height, width)
    for b in range(batch):
        prop = float(torch.empty(1).uniform_(*prop_range, generator=generator))
        for _ in range(n_boxes):
            area = prop / n_boxes
            aspect = float(torch.empty(1).uniform_(0.5, 2.0, generator=generator))
            bh = min(height, max(1, round(height * (area * aspect) ** 0.5)))
            bw = min(width, max(1, round(width * (area / aspect) ** 0.5)))
            y = int(torch.randint(0, height - bh + 1, (1,), generator=generator))
            x = int(torch.randint(0, width - bw + 1, (1,), generator=generator))
            masks[b, 0, y : y + bh, x : x + bw] = 1.0
    return masks
