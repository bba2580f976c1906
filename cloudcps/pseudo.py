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
    per-class, self-adjusting: the other network's probabilities are first aligned to the class
    distribution of the labelled data (distribution alignment: each class's probability is scaled
    by its labelled share over its running predicted share), then a pixel is kept only if its
    aligned confidence reaches its class's threshold, which is ``threshold`` scaled by how
    confident the networks are on that class relative to the most confident one (class-wise
    adaptive thresholds). A class the networks are unsure of thus gets a lower bar and a fair
    share of pseudo-labels instead of being overwritten by a confident wrong class.

The CPS loss of kept pixels is normalised by *all* valid pixels, so ignoring a pixel removes its
vote rather than re-weighting the rest.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cloudcps.tiling import IGNORE_INDEX


def pixel_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-pixel cross-entropy (B, H, W); 0 where ``target`` is 255."""
    return F.cross_entropy(logits.float(), target, ignore_index=IGNORE_INDEX, reduction="none")


def supervised_loss(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over labelled pixels (0 when a batch has none)."""
    n = (mask != IGNORE_INDEX).sum().clamp_min(1)
    return pixel_cross_entropy(logits, mask).sum() / n


@dataclass
class PseudoTargets:
    """Pseudo-labels for one network: class ids (255 = ignored) and the loss normaliser."""

    target: torch.Tensor
    denominator: torch.Tensor
    raw: torch.Tensor
    valid: torch.Tensor

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

    def keep(self, probs: torch.Tensor, pseudo: torch.Tensor) -> torch.Tensor:
        """Which pixels keep their pseudo-label (bool, B x H x W)."""
        return torch.ones_like(pseudo, dtype=torch.bool)

    def align(self, probs: torch.Tensor) -> torch.Tensor:
        return probs

    def targets(self, probs: torch.Tensor, valid: torch.Tensor) -> PseudoTargets:
        """Pseudo-labels from the other network's softmax ``probs`` (B, K, H, W), no gradient."""
        with torch.no_grad():
            probs = probs.detach().float()
            raw = probs.argmax(1)
            aligned = self.align(probs)
            pseudo = aligned.argmax(1)
            kept = self.keep(aligned, pseudo) & valid
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

    def keep(self, probs: torch.Tensor, pseudo: torch.Tensor) -> torch.Tensor:
        return probs.max(1).values >= self.threshold


class AdaptivePolicy(PseudoLabelPolicy):
    """Distribution alignment plus class-wise adaptive thresholds (see the module docstring).

    Args:
        num_classes: K.
        threshold: the bar for the most confident class.
        momentum: EMA momentum of the running statistics.
        max_ratio: bound on the distribution-alignment factor per class.
        min_scale: lowest fraction of ``threshold`` a class threshold may fall to.
    """

    name = "adaptive"

    def __init__(
        self,
        num_classes: int,
        threshold: float = 0.9,
        momentum: float = 0.99,
        max_ratio: float = 4.0,
        min_scale: float = 0.5,
    ) -> None:
        super().__init__(num_classes, threshold)
        self.momentum = momentum
        self.max_ratio = max_ratio
        self.min_scale = min_scale
        k = num_classes
        self.labeled_share = torch.full((k,), 1.0 / k, dtype=torch.float64)
        self.pred_share = torch.full((k,), 1.0 / k, dtype=torch.float64)
        self.confidence = torch.full((k,), 1.0 / k, dtype=torch.float64)
        self.seen = torch.zeros((), dtype=torch.float64)

    def _ema(self, old: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
        m = self.momentum if self.seen > 0 else 0.0
        return m * old + (1 - m) * new

    def observe_labeled(self, mask: torch.Tensor) -> None:
        counts = class_counts(mask.cpu(), self.num_classes)
        if counts.sum() > 0:
            m = self.momentum if self.seen > 0 else 0.0
            self.labeled_share = m * self.labeled_share + (1 - m) * counts / counts.sum()

    def ratio(self) -> torch.Tensor:
        r = self.labeled_share.clamp_min(1e-6) / self.pred_share.clamp_min(1e-6)
        return r.clamp(1.0 / self.max_ratio, self.max_ratio)

    def class_thresholds(self) -> torch.Tensor:
        scale = self.confidence / self.confidence.max().clamp_min(1e-6)
        return self.threshold * scale.clamp(self.min_scale, 1.0)

    def align(self, probs: torch.Tensor) -> torch.Tensor:
        r = self.ratio().to(probs.device, probs.dtype).view(1, -1, 1, 1)
        aligned = probs * r
        return aligned / aligned.sum(1, keepdim=True).clamp_min(1e-12)

    def keep(self, probs: torch.Tensor, pseudo: torch.Tensor) -> torch.Tensor:
        tau = self.class_thresholds().to(probs.device, probs.dtype)[pseudo]
        return probs.max(1).values >= tau

    def update(self, probs: torch.Tensor, valid: torch.Tensor) -> None:
        with torch.no_grad():
            p = probs.detach().float().permute(0, 2, 3, 1)[valid].double().cpu()  # (N, K)
            if p.shape[0] == 0:
                return
            share = p.mean(0)
            conf, cls = p.max(1)
            sums = torch.zeros(self.num_classes, dtype=torch.float64).index_add_(0, cls, conf)
            counts = torch.bincount(cls, minlength=self.num_classes).double()
            # classes not predicted in this batch keep their running confidence
            mean_conf = torch.where(counts > 0, sums / counts.clamp_min(1), self.confidence)
            self.pred_share = self._ema(self.pred_share, share)
            self.confidence = self._ema(self.confidence, mean_conf)
            self.seen += 1

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {
            "labeled_share": self.labeled_share.clone(),
            "pred_share": self.pred_share.clone(),
            "confidence": self.confidence.clone(),
            "seen": self.seen.clone(),
        }

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for key in ("labeled_share", "pred_share", "confidence", "seen"):
            if key in state:
                setattr(self, key, state[key].to(torch.float64).cpu())


POLICIES: dict[str, type[PseudoLabelPolicy]] = {
    "plain": PseudoLabelPolicy,
    "threshold": ThresholdPolicy,
    "adaptive": AdaptivePolicy,
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
