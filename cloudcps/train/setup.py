"""What a training run is built from: where it runs, its data and its networks.

Where: the device, the rank and world size under torchrun, the autocast dtype, and how a
network is run on them (:class:`Forward`). The data: the datasets of a tile folder or of PASCAL
VOC (synthetic and pasted clouds included) and the seeded batch streams drawn from them. The
networks: built (or taken from ``--init``) and placed on the device (SyncBatchNorm and
DistributedDataParallel with several ranks), and the class weights of the supervised loss.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader

from cloudcps.contract import DataContract
from cloudcps.devices import pick_device
from cloudcps.errors import InputError
from cloudcps.models import ModelSpec, build_pair, init_from_checkpoint
from cloudcps.synthetic.clouds import CLOUD_CLASSES, LayerThresholds, SyntheticClouds
from cloudcps.synthetic.paste import PastedClouds, cloud_bank
from cloudcps.train.config import TrainConfig
from cloudcps.train.data import (
    VOC,
    Augment,
    InfiniteSampler,
    Item,
    SegmentationDataset,
    TileFolder,
    label_class_counts,
    voc_contract,
)
from cloudcps.train.pseudo import balanced_class_weights, class_counts

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# Devices and processes
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Runtime:
    """Where this process runs: device, rank and world size (torchrun sets the latter)."""

    device: torch.device
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_runtime(device: str) -> Runtime:
    """Read torchrun's environment and start the process group when there are several ranks."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = pick_device(device, local_rank)
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group(backend=backend)
    return Runtime(dev, rank, world, local_rank)


def amp_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``--amp`` on ``device`` (None: full precision)."""
    if cfg.amp == "none" or (cfg.amp == "auto" and device.type != "cuda"):
        return None
    if cfg.amp == "fp16":
        return torch.float16
    return torch.bfloat16


@dataclass(frozen=True)
class Forward:
    """Run a network on a batch already on ``device``: channels-last on CUDA, under autocast
    when ``amp`` is set."""

    device: torch.device
    amp: torch.dtype | None

    def __call__(self, net: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self.device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(
            self.device.type, dtype=self.amp or torch.float32, enabled=self.amp is not None
        ):
            out: torch.Tensor = net(x)
        return out


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


@dataclass
class TrainData:
    contract: DataContract
    labeled: SegmentationDataset
    calibration: SegmentationDataset  # BatchNorm recalibration: labelled crops at scale 1
    unlabeled: SegmentationDataset | None
    val: SegmentationDataset | None
    source: str


def _need_cloud_classes(option: str, contract: DataContract, source: str) -> None:
    """Clouds laid over samples label thick, thin and shadow: ``option`` needs those classes."""
    if tuple(contract.classes) != CLOUD_CLASSES:
        raise InputError(
            f"{option} needs the classes {', '.join(CLOUD_CLASSES)}; {source} has "
            f"{', '.join(contract.classes)}: pass {option} 0"
        )


def _pasted_clouds(
    cfg: TrainConfig, contract: DataContract, items: Sequence[Item], source: str
) -> PastedClouds:
    """``--paste-clouds``: the bank is every labelled item with some, not only, cloud."""
    _need_cloud_classes("--paste-clouds", contract, source)
    reader = SegmentationDataset(items, None, True)
    bank = cloud_bank([reader.load(i)[1] if it.label else None for i, it in enumerate(items)])
    if not bank:
        raise InputError(
            f"--paste-clouds: no labelled tile of {source} has cloud on 2-90 % of its pixels to "
            "cut clouds from; label some cloudy tiles or pass --paste-clouds 0"
        )
    log.info("pasted clouds: cut from %d of %d labelled tiles", len(bank), len(items))
    return PastedClouds(cfg.paste_clouds, contract.stretch, bank)


@dataclass
class _Items:
    """The items of a source before they become datasets."""

    contract: DataContract
    labeled: list[Item]
    unlabeled: list[Item]
    val: list[Item]
    source: str


def _tile_items(cfg: TrainConfig) -> _Items:
    """The labelled, unlabelled and validation tiles of ``--data``."""
    assert cfg.data is not None
    folder = TileFolder(cfg.data)
    contract = folder.contract
    lab_ids = folder.split("labeled")
    unl_ids = folder.split("unlabeled")
    val_ids = folder.split(cfg.val_split)
    if not lab_ids:
        raise InputError(
            f"the labeled split of --data {cfg.data} is empty; re-tile with --label-dir and "
            "a larger --labeled-fraction"
        )
    lab_items, unl_items, val_items = (
        folder.items(lab_ids),
        folder.items(unl_ids),
        folder.items(val_ids),
    )
    if cfg.crop > contract.tile_size:
        log.warning(
            "--crop %d is larger than the %d px tiles: crops are padded (padding is ignored)",
            cfg.crop,
            contract.tile_size,
        )
    return _Items(contract, lab_items, unl_items, val_items, f"tiles {cfg.data}")


def _voc_items(cfg: TrainConfig) -> _Items:
    """The labelled, unlabelled and validation images of ``--voc`` and ``--voc-split``."""
    assert cfg.voc is not None and cfg.voc_split is not None
    voc = VOC(cfg.voc)
    contract = voc_contract(cfg.crop)
    lab, unl = voc.train_lists(cfg.voc_split)
    if not lab:
        raise InputError(f"--voc-split {cfg.voc_split} lists no images")
    lab_items = voc.items(lab)
    unl_items = voc.items(unl, labeled=False) if unl else []
    val_items = voc.items(voc.val_ids())
    return _Items(contract, lab_items, unl_items, val_items, f"VOC {cfg.voc} split {cfg.voc_split}")


def build_data(cfg: TrainConfig) -> TrainData:
    """Datasets of a tile folder (``cfg.data``) or of PASCAL VOC (``cfg.voc``)."""
    aug = Augment(cfg.crop, cfg.scale_min, cfg.scale_max)
    items = _tile_items(cfg) if cfg.data is not None else _voc_items(cfg)
    contract, source, lab_items = items.contract, items.source, items.labeled
    val_items = items.val[: cfg.val_max] if cfg.val_max > 0 else items.val
    mean, std = contract.mean, contract.std
    k = contract.num_classes
    # unlabelled images never show their labels; pooled labelled images keep theirs, which only
    # restrict pseudo-labels where they are partial (sets of classes)
    unl_items = [dataclasses.replace(it, label=None) for it in items.unlabeled]
    if cfg.pool_labeled:
        unl_items = unl_items + list(lab_items)
    synthetic = None
    if cfg.synthetic_clouds > 0:
        _need_cloud_classes("--synthetic-clouds", contract, source)
        synthetic = SyntheticClouds(
            cfg.synthetic_clouds,
            contract.stretch,
            LayerThresholds(thin_alpha=cfg.synthetic_thin_alpha),
        )
    paste = None
    if cfg.paste_clouds > 0:
        paste = _pasted_clouds(cfg, contract, lab_items, source)
    calibration_aug = Augment(min(cfg.crop, contract.tile_size), 1.0, 1.0)
    labeled = SegmentationDataset(lab_items, aug, True, mean, std, k, synthetic, paste)
    # BatchNorm statistics with training's layers (the batches the weights learnt under), or of
    # the real images alone (--bn-recalibrate-real); the choice moves a model by several mIoU
    # either way (docs/benchmarks.md, issue 22 item 25)
    layers = cfg.bn_recalibrate_synthetic
    calibration = SegmentationDataset(
        lab_items, calibration_aug, True, mean, std, k, synthetic if layers else None,
        paste if layers else None,
    )  # fmt: skip
    return TrainData(
        contract=contract,
        labeled=labeled,
        calibration=calibration,
        unlabeled=SegmentationDataset(unl_items, aug, True, mean, std, k) if unl_items else None,
        val=SegmentationDataset(val_items, None, True, mean, std, k) if val_items else None,
        source=source,
    )


def batch_stream(
    ds: SegmentationDataset, cfg: TrainConfig, rt: Runtime, start: int, stream: int
) -> Iterator[dict[str, Any]]:
    """Endless batches of ``ds``: stream ``stream`` of the seed, from sample ``start`` on (so a
    resumed run draws the batches an uninterrupted one would have drawn)."""
    sampler = InfiniteSampler(
        len(ds), seed=cfg.seed * 1000 + stream, rank=rt.rank, world=rt.world, start=start
    )
    workers = max(0, cfg.workers)
    loader = DataLoader(
        ds,
        batch_size=cfg.batch_size,
        sampler=sampler,
        num_workers=workers,
        pin_memory=rt.device.type == "cuda",
        persistent_workers=workers > 0,
        # a private generator: loader start-up must not draw from the global RNG (resume)
        generator=torch.Generator().manual_seed(cfg.seed),
    )
    return iter(loader)


def batch_streams(
    data: TrainData, cfg: TrainConfig, rt: Runtime, iteration: int
) -> tuple[Iterator[dict[str, Any]], Iterator[dict[str, Any]] | None]:
    """The labelled and (for CPS, when there are unlabelled images) unlabelled batches of a run
    at ``iteration``."""
    start = iteration * cfg.batch_size
    it_x = batch_stream(data.labeled, cfg, rt, start, 1)
    it_u = (
        batch_stream(data.unlabeled, cfg, rt, start, 2)
        if cfg.mode == "cps" and data.unlabeled is not None
        else None
    )
    return it_x, it_u


# --------------------------------------------------------------------------------------------
# Networks
# --------------------------------------------------------------------------------------------


def build_networks(
    cfg: TrainConfig, contract: DataContract, resuming: bool
) -> tuple[list[nn.Module], ModelSpec, str]:
    """The networks of the run (two for CPS, one for the baseline), their spec and a description
    of their encoder weights; ``--init`` (not when resuming) sets ``cfg.arch``/``cfg.encoder``
    to the checkpoint's."""
    count = 2 if cfg.mode == "cps" else 1
    if cfg.init is not None and not resuming:
        nets, spec, weights_desc = init_from_checkpoint(
            cfg.init, contract, cfg.seed, count, arch=cfg.arch
        )
        cfg.arch, cfg.encoder = spec.arch, spec.encoder
    else:
        spec = ModelSpec(cfg.arch, cfg.encoder, contract.num_classes)
        nets, weights_desc = build_pair(spec, cfg.encoder_weights, cfg.seed, count=count)
    if cfg.encoder_norm == "frozen" and cfg.encoder_weights == "none" and cfg.init is None:
        log.warning(
            "--encoder-norm frozen with --encoder-weights none keeps the BatchNorm statistics "
            "of a random encoder (mean 0, variance 1) for the whole run; use --encoder-norm "
            "batch, or pretrained --encoder-weights"
        )
    return nets, spec, weights_desc


def place(net: nn.Module, rt: Runtime) -> nn.Module:
    """``net`` on the device in training mode (channels-last on CUDA); with several ranks its
    BatchNorm layers synchronised and the network wrapped in DistributedDataParallel."""
    dev = rt.device
    if rt.distributed and dev.type == "cuda":
        net = nn.SyncBatchNorm.convert_sync_batchnorm(net)  # type: ignore[no-untyped-call]
    net = net.to(dev)
    if dev.type == "cuda":
        net = net.to(memory_format=torch.channels_last)
    net.train()
    if rt.distributed:
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [dev.index] if dev.type == "cuda" else None
        net = DDP(net, device_ids=ids)
    return net


def unwrap(net: nn.Module) -> nn.Module:
    """The network inside a DistributedDataParallel wrapper (or ``net`` itself)."""
    inner = getattr(net, "module", None)
    return inner if isinstance(inner, nn.Module) else net


def loss_class_weights(
    cfg: TrainConfig, data: TrainData, device: torch.device
) -> torch.Tensor | None:
    """``--class-weights``: ``none``, ``auto`` (balanced from the labelled pixels) or one weight
    per class."""
    spec = cfg.class_weights
    k = data.contract.num_classes
    if spec == "none":
        return None
    if spec == "auto":
        ds = data.labeled
        if ds.synthetic is not None or ds.paste is not None:
            # the loss sees the composites' labels, not the label files: count those
            sampler = iter(InfiniteSampler(len(ds), seed=cfg.seed * 1000 + 5))
            total = torch.zeros(k, dtype=torch.float64)
            for _ in range(min(256, 4 * len(ds))):
                total += class_counts(ds[next(sampler)]["mask"], k)
            counts = total.numpy()
        else:
            counts = label_class_counts(ds.items, k)
        if counts.sum() == 0:
            log.warning(
                "--class-weights auto: the labelled tiles hold no exactly labelled pixel "
                "(partial labels only), so there is nothing to balance and the classes weigh "
                "the same; give one weight per class to weigh them"
            )
        w = balanced_class_weights(torch.from_numpy(counts))
    else:
        values = [float(v) for v in spec.split(",")]
        if len(values) != k:
            raise InputError(
                f"--class-weights gives {len(values)} weights for {k} classes "
                f"({', '.join(data.contract.classes)})"
            )
        w = torch.tensor(values)
    log.info("class weights: %s", ", ".join(f"{v:.3g}" for v in w.tolist()))
    return w.to(device)
