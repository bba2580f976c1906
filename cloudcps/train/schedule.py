"""How the weights move: the optimiser, the learning-rate schedule, the weight average (EMA)
and the BatchNorm statistics (training mode, frozen encoder statistics, recalibration)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from cloudcps.train.config import TrainConfig
from cloudcps.train.data import InfiniteSampler, SegmentationDataset
from cloudcps.train.setup import unwrap


class PolyLR:
    """``lr = base * (1 - it / total) ** power``, set explicitly each iteration (resumable)."""

    def __init__(self, optimizer: torch.optim.Optimizer, base: float, total: int, power: float):
        self.optimizer, self.base, self.total, self.power = optimizer, base, total, power

    def lr_at(self, it: int) -> float:
        return self.base * max(0.0, 1.0 - it / max(1, self.total)) ** self.power

    def set(self, it: int) -> float:
        lr = self.lr_at(it)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        return lr

    def state_dict(self) -> dict[str, Any]:
        return {"base": self.base, "total": self.total, "power": self.power}


def _param_groups(nets: list[nn.Module], weight_decay: float) -> list[dict[str, Any]]:
    """No weight decay on biases and normalisation parameters (TorchSemiSeg's group_weight)."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for net in nets:
        for p in net.parameters():
            if p.requires_grad:
                (no_decay if p.ndim <= 1 else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def make_optimizer(cfg: TrainConfig, nets: list[nn.Module], lr: float) -> torch.optim.Optimizer:
    """``--optimizer``: SGD with momentum, or AdamW (``--momentum`` as its first beta)."""
    groups = _param_groups(nets, cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=(cfg.momentum, 0.999))
    return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum)


def ema_copy(net: nn.Module) -> nn.Module:
    """A frozen copy of ``net`` in eval mode: the start of its weight average."""
    ema = copy.deepcopy(net)
    ema.eval()
    for p in ema.parameters():
        p.requires_grad_(False)
    return ema


@torch.no_grad()
def update_ema(
    ema_nets: list[nn.Module], nets: list[nn.Module], decay_cap: float, iteration: int
) -> None:
    """Move each average toward its network (``--ema`` decay); buffers are copied."""
    # warm-up: early weights are forgotten quickly
    decay = min(decay_cap, (1 + iteration) / (10 + iteration))
    for ema, net in zip(ema_nets, nets, strict=True):
        for e, p in zip(ema.parameters(), unwrap(net).parameters(), strict=True):
            e.mul_(decay).add_(p.detach(), alpha=1 - decay)
        for eb, b in zip(ema.buffers(), unwrap(net).buffers(), strict=True):
            eb.copy_(b)


def set_train_mode(net: nn.Module, encoder_norm: str) -> None:
    """Training mode; with ``encoder_norm="frozen"`` the encoder's BatchNorm layers keep their
    pretrained running statistics (eval mode) while their affine parameters still learn: batch
    statistics of 2-8 small crops are too noisy to replace ImageNet's."""
    net.train()
    if encoder_norm == "frozen":
        encoder = getattr(unwrap(net), "encoder", None)
        if isinstance(encoder, nn.Module):
            for m in encoder.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()


@torch.no_grad()
def recalibrate_batchnorm(
    nets: list[nn.Module],
    dataset: SegmentationDataset,
    cfg: TrainConfig,
    iteration: int,
    forward: Callable[[nn.Module, torch.Tensor], torch.Tensor],
    device: torch.device,
) -> bool:
    """Population statistics for the BatchNorm layers that train ("precise BN").

    With 2-8 small crops a step, running statistics follow the last few batches (snow,
    water, cloud, crops padded by the scale augmentation) and swing from one check to the
    next; the model validated and saved would be whichever the last batches left.
    ``bn_recalibrate`` batches of ``dataset`` (labelled crops at scale 1: no padding, as at
    prediction time; with training's synthetic and pasted clouds unless
    ``bn_recalibrate_synthetic`` is off: real images only), drawn from a stream fixed by the
    seed and the iteration (so a resumed run gets the same), give each layer the plain mean.
    The networks are left in training mode; False when nothing was recalibrated.
    """
    batches = min(cfg.bn_recalibrate, cfg.iters)  # scaled to the run: a 2-step test
    if batches <= 0:
        return False
    for net in nets:
        set_train_mode(net, cfg.encoder_norm)
    layers = [
        m
        for net in nets
        for m in net.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training and m.track_running_stats
    ]
    if not layers:
        return False
    momenta = [m.momentum for m in layers]
    for m in layers:
        m.reset_running_stats()
        m.momentum = None  # cumulative mean
    stream = iter(InfiniteSampler(len(dataset), seed=cfg.seed * 1000 + 3 + 7919 * iteration))
    size = max(2, cfg.batch_size)  # pooled BatchNorm layers need two values a channel
    for _ in range(batches):
        x = torch.stack([dataset[next(stream)]["image"] for _ in range(size)])
        x = x.to(device)
        for net in nets:
            forward(net, x)
    for m, mom in zip(layers, momenta, strict=True):
        m.momentum = mom
    return True
