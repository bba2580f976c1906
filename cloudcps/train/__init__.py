"""The Cross Pseudo Supervision training loop, and the supervised baseline that shares it.

Two networks of one architecture (same pretrained encoder, differently initialised decoders) each
learn from the labelled pixels and from the other's pseudo-labels:

    loss = CE(p1, y) + CE(p2, y) + lambda * [CE(p1, pseudo(p2)) + CE(p2, pseudo(p1))]

``mode="supervised"`` trains one network on the labelled images with the same schedule: the
baseline CPS must beat. The pseudo-label policy (:mod:`cloudcps.train.pseudo`) and CutMix are
options.
Names follow UniMatch: ``img_x``/``mask_x`` labelled, ``img_u`` unlabelled.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import logging
import os
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from cloudcps.contract import DataContract, is_partial, partial_classes
from cloudcps.devices import pick_device
from cloudcps.errors import InputError, TrainingDivergedError
from cloudcps.io import check_folder_path, contains, remove_stale_temps
from cloudcps.locks import RunLock
from cloudcps.metrics import scores
from cloudcps.models import (
    ModelSpec,
    build_pair,
    init_from_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from cloudcps.synthetic.clouds import CLOUD_CLASSES, LayerThresholds, SyntheticClouds
from cloudcps.synthetic.paste import PastedClouds, cloud_bank
from cloudcps.train.config import TrainConfig, config_from_dict, dump_config, load_config
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
from cloudcps.train.pseudo import (
    PseudoLabelPolicy,
    balanced_class_weights,
    box_mix_mask,
    class_counts,
    make_policy,
    restrict_to_labels,
    supervised_loss,
)

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


def _amp_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    if cfg.amp == "none" or (cfg.amp == "auto" and device.type != "cuda"):
        return None
    if cfg.amp == "fp16":
        return torch.float16
    return torch.bfloat16


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


def build_data(cfg: TrainConfig) -> TrainData:
    """Datasets of a tile folder (``cfg.data``) or of PASCAL VOC (``cfg.voc``)."""
    aug = Augment(cfg.crop, cfg.scale_min, cfg.scale_max)
    if cfg.data is not None:
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
        source = f"tiles {cfg.data}"
    else:
        assert cfg.voc is not None and cfg.voc_split is not None
        voc = VOC(cfg.voc)
        contract = voc_contract(cfg.crop)
        lab, unl = voc.train_lists(cfg.voc_split)
        if not lab:
            raise InputError(f"--voc-split {cfg.voc_split} lists no images")
        lab_items = voc.items(lab)
        unl_items = voc.items(unl, labeled=False) if unl else []
        val_items = voc.items(voc.val_ids())
        source = f"VOC {cfg.voc} split {cfg.voc_split}"
    if cfg.val_max > 0:
        val_items = val_items[: cfg.val_max]
    mean, std = contract.mean, contract.std
    k = contract.num_classes
    # unlabelled images never show their labels; pooled labelled images keep theirs, which only
    # restrict pseudo-labels where they are partial (sets of classes)
    unl_items = [dataclasses.replace(it, label=None) for it in unl_items]
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
    return TrainData(
        contract=contract,
        labeled=labeled,
        calibration=SegmentationDataset(
            lab_items, calibration_aug, True, mean, std, k, synthetic, paste
        ),
        unlabeled=SegmentationDataset(unl_items, aug, True, mean, std, k) if unl_items else None,
        val=SegmentationDataset(val_items, None, True, mean, std, k) if val_items else None,
        source=source,
    )


def _stream(
    ds: SegmentationDataset, cfg: TrainConfig, rt: Runtime, start: int, stream: int
) -> Iterator[dict[str, Any]]:
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


# --------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------


def pad_to_multiple(x: torch.Tensor, multiple: int = 32) -> tuple[torch.Tensor, int, int]:
    """Pad (B, C, H, W) at the bottom/right to a multiple of ``multiple`` (reflect)."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph or pw:
        mode = "reflect" if ph < h and pw < w else "replicate"
        x = F.pad(x, (0, pw, 0, ph), mode=mode)
    return x, h, w


@torch.no_grad()
def evaluate_networks(
    nets: list[nn.Module],
    dataset: SegmentationDataset,
    num_classes: int,
    device: torch.device,
    amp: torch.dtype | None = None,
) -> dict[str, np.ndarray]:
    """Counts of (label value 0..255, predicted class) of each network and of their ensemble
    (mean softmax) on ``dataset``: rows below ``num_classes`` are the confusion matrix, the
    partial-label rows feed :func:`validation_scores`."""
    was_training = [n.training for n in nets]
    for n in nets:
        n.eval()
    names = [f"net{i + 1}" for i in range(len(nets))] + (["ensemble"] if len(nets) > 1 else [])
    cms = {k: np.zeros((256, num_classes), np.int64) for k in names}
    for i in range(len(dataset)):
        s = dataset[i]
        x, h, w = pad_to_multiple(s["image"][None].to(device))
        mask = s["mask"].to(device)
        mask = torch.where(s["valid"].to(device), mask, torch.full_like(mask, 255))
        probs = []
        for k, net in enumerate(nets):
            with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
                logits = net(x)[..., :h, :w]
            p = logits.float().softmax(1)
            probs.append(p)
            cms[f"net{k + 1}"] += label_pred_counts(p.argmax(1)[0], mask, num_classes)
        if len(nets) > 1:
            mean = torch.stack(probs).mean(0)
            cms["ensemble"] += label_pred_counts(mean.argmax(1)[0], mask, num_classes)
    for n, t in zip(nets, was_training, strict=True):
        n.train(t)
    return cms


def label_pred_counts(pred: torch.Tensor, mask: torch.Tensor, num_classes: int) -> np.ndarray:
    """(256, k) pixel counts of label value by predicted class."""
    idx = mask.reshape(-1).long() * num_classes + pred.reshape(-1).long()
    counts = torch.bincount(idx, minlength=256 * num_classes)
    return counts.reshape(256, num_classes).cpu().numpy().astype(np.int64)


def validation_scores(counts: np.ndarray, names: tuple[str, ...] | list[str]) -> dict[str, Any]:
    """Scores of (label value, predicted class) counts: IoU per class on the exactly labelled
    pixels; where there are none, IoU per group of the partial labels (e.g. cloud vs not cloud
    for labels ``0|3`` and ``1|2``), so a validation split of coarse labels still selects
    best.pt. Overlapping groups give no score (``miou`` None)."""
    k = len(names)
    exact = counts[:k]
    if exact.sum() > 0:
        return scores(exact, names)
    sets = [
        partial_classes(code) for code in range(256) if is_partial(code) and counts[code].sum() > 0
    ]
    used = [c for st in sets for c in st]
    if not sets or len(used) != len(set(used)):
        return scores(exact, names)
    groups = sets + [(c,) for c in range(k) if c not in used]
    group_of = {c: g for g, st in enumerate(groups) for c in st}
    grouped = np.zeros((len(groups), len(groups)), np.int64)
    for code in range(256):
        if is_partial(code) and counts[code].sum() > 0:
            g = group_of[partial_classes(code)[0]]
            for j in range(k):
                grouped[g, group_of[j]] += counts[code, j]
    result = scores(grouped, ["+".join(names[c] for c in st) for st in groups])
    result["grouped"] = True
    return result


# --------------------------------------------------------------------------------------------
# The trainer
# --------------------------------------------------------------------------------------------


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


def _optimizer(cfg: TrainConfig, nets: list[nn.Module], lr: float) -> torch.optim.Optimizer:
    groups = _param_groups(nets, cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=(cfg.momentum, 0.999))
    return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum)


def _ema_copy(net: nn.Module) -> nn.Module:
    ema = copy.deepcopy(net)
    ema.eval()
    for p in ema.parameters():
        p.requires_grad_(False)
    return ema


def set_train_mode(net: nn.Module, encoder_norm: str) -> None:
    """Training mode; with ``encoder_norm="frozen"`` the encoder's BatchNorm layers keep their
    pretrained running statistics (eval mode) while their affine parameters still learn: batch
    statistics of 2-8 small crops are too noisy to replace ImageNet's."""
    net.train()
    if encoder_norm == "frozen":
        encoder = getattr(_unwrap(net), "encoder", None)
        if isinstance(encoder, nn.Module):
            for m in encoder.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()


RUN_FILES = ("latest.pt", "best.pt", "metrics.jsonl", "config.yaml", "tb")


def _written_by_train(path: Path) -> bool:
    """Whether a run file was written by cloudcps train (checked by content, not name)."""
    from cloudcps.train.config import TrainConfig as _Cfg

    try:
        if path.suffix == ".pt":
            return bool(load_checkpoint(path).get("config"))
        if path.name == "metrics.jsonl":
            lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
            rows = []
            for i, line in enumerate(lines):
                try:
                    rows.append(json.loads(line))
                except ValueError:
                    if i != len(lines) - 1:  # only the last line may be torn by a kill
                        return False
            return all(isinstance(r, dict) and "iter" in r for r in rows)
        if path.name == "config.yaml":
            import yaml

            from cloudcps.train.config import CONFIG_HEADER

            text = path.read_text()
            data = yaml.safe_load(text)
            fields = {f.name for f in dataclasses.fields(_Cfg)}
            if not isinstance(data, dict) or not set(data) <= fields:
                return False
            # ours: the header, or (runs before the header) a dump of every option of its day
            return text.startswith(CONFIG_HEADER) or len(data) >= len(fields) - 12
        if path.name == "tb":
            return path.is_dir() and all(
                p.is_dir() or p.name.startswith("events.out.tfevents.") for p in path.rglob("*")
            )
    except (InputError, OSError, ValueError):
        return False
    except Exception:  # yaml errors and the like: not ours
        return False
    return False


def _unwrap(net: nn.Module) -> nn.Module:
    inner = getattr(net, "module", None)
    return inner if isinstance(inner, nn.Module) else net


@dataclass
class TrainResult:
    out: Path
    iteration: int
    best_miou: float | None
    best_iteration: int | None
    last_val: dict[str, Any] | None = None
    history: list[dict[str, Any]] = field(default_factory=list)


def resolve_config(
    overrides: dict[str, Any], config_file: str | None, resume: bool
) -> tuple[TrainConfig, dict[str, Any] | None]:
    """Defaults < checkpoint's config (when resuming) < YAML file < command-line options."""
    base = TrainConfig()
    state = None
    if resume:
        out = Path(overrides.get("out") or base.out)
        latest = out / "latest.pt"
        if not latest.is_file():
            if (out / "metrics.jsonl").exists():
                raise InputError(
                    f"--resume: {out} holds no latest.pt (the run stopped before its first "
                    "checkpoint); start over with --overwrite instead of --resume"
                )
            raise InputError(f"--resume: {latest} does not exist; start a run without --resume")
        state = load_checkpoint(latest)
        try:
            base = config_from_dict(state["config"])
        except (KeyError, TypeError, AttributeError):
            raise InputError(
                f"--resume: {latest} holds no training config; it is not a cloudcps train "
                "checkpoint"
            ) from None
        # what the saved networks, optimizer state and data pipeline were built with
        for key in RESUME_FIXED:
            given = overrides.get(key)
            if given is not None and str(given) != str(getattr(base, key)):
                option = "--" + key.replace("_", "-")
                raise InputError(
                    f"--resume: {out} was trained with {option} {getattr(base, key)}, not "
                    f"{given}; drop {option}, or start a new run in another --out"
                )
    if config_file:
        base = load_config(config_file, base)
    cfg = config_from_dict({k: v for k, v in overrides.items() if v is not None}, base)
    cfg.validate()
    if cfg.init is not None and state is None:
        _check_init_spec(cfg.init, overrides)
    return cfg, state


RESUME_FIXED = ("mode", "arch", "encoder", "optimizer", "encoder_norm", "ema", "synthetic_clouds",
                "synthetic_thin_alpha", "paste_clouds", "pseudo_labels", "crop")  # fmt: skip


def _check_init_spec(init: str, overrides: dict[str, Any]) -> None:
    """--init takes its networks from a checkpoint: an --arch or --encoder that differs from
    the checkpoint's would be ignored, so it is refused."""
    given = {k: overrides.get(k) for k in ("arch", "encoder") if overrides.get(k) is not None}
    if not given:
        return
    from cloudcps.modelfiles import resolve_checkpoint

    ckpt = resolve_checkpoint(init, option="--init")
    try:
        spec = ModelSpec.from_dict(load_checkpoint(ckpt)["model"])
    except (KeyError, TypeError, ValueError):
        return  # init_from_checkpoint names what the checkpoint lacks
    for key, value in given.items():
        if str(value) != str(getattr(spec, key)):
            raise InputError(
                f"--init {init} is a {spec.arch} with encoder {spec.encoder}, not --{key} "
                f"{value}; drop --{key} (fine-tuning keeps the checkpoint's networks) or train "
                "without --init"
            )


class Trainer:
    """Train CPS (or the supervised baseline) as configured by ``cfg``.

    Args:
        cfg: the resolved configuration (``cfg.out`` is the run folder).
        resume_state: the ``latest.pt`` state to continue from, if resuming.
        overwrite: start over in an existing run folder.
        progress: show a tqdm progress bar.
    """

    def __init__(
        self,
        cfg: TrainConfig,
        resume_state: dict[str, Any] | None = None,
        overwrite: bool = False,
        progress: bool = False,
    ) -> None:
        cfg.validate()
        self.cfg = cfg
        self.progress = progress
        self.out = Path(cfg.out)
        self.rt = init_runtime(cfg.device)
        self.amp = _amp_dtype(cfg, self.rt.device)
        resuming = resume_state is not None
        self.lock: RunLock | None = None
        created = False
        owned: list[Path] = []
        if self.rt.main:
            self._check_out(resuming, overwrite)
            created = not self.out.exists()
            self.lock = RunLock(self.out)
            self.lock.acquire()  # one writer per run folder, from here to the end of fit()
            # what a SIGKILL of an earlier run left (checkpoints, metrics, config being written)
            remove_stale_temps([self.out / n for n in ("latest.pt", "best.pt", "config.yaml")])
        try:
            if self.rt.main and not resuming and overwrite:
                owned = self._owned_run_files()  # every file it would replace is checked first
            self._setup(cfg, resume_state)
            if self.rt.main and not resuming:
                if overwrite:
                    self._clear_run(owned)
                self._check_fresh()
        except BaseException:
            self.close()
            if self.rt.main and created:
                with contextlib.suppress(OSError):
                    self.out.rmdir()  # a failed start leaves no empty run folder behind
            raise

    def _setup(self, cfg: TrainConfig, resume_state: dict[str, Any] | None) -> None:
        """Read the data and build (or restore) the networks: every input is read here, before
        the run folder is changed."""
        self.data = build_data(cfg)
        self.k = self.data.contract.num_classes
        if resume_state is not None:
            saved = DataContract.from_dict(resume_state["contract"]).classes
            if tuple(saved) != tuple(self.data.contract.classes):
                raise InputError(
                    f"{self.out / 'latest.pt'} was trained for classes {list(saved)} but the data "
                    f"has {list(self.data.contract.classes)}; start a new run (another --out)"
                )
        self.cps = cfg.mode == "cps"
        if self.cps and self.data.unlabeled is None:
            log.warning("no unlabelled images: CPS runs on the labelled images alone")
        count = 2 if self.cps else 1
        if cfg.init is not None and resume_state is None:
            nets, self.spec, self.weights_desc = init_from_checkpoint(
                cfg.init, self.data.contract, cfg.seed, count
            )
            cfg.arch, cfg.encoder = self.spec.arch, self.spec.encoder
        else:
            self.spec = ModelSpec(cfg.arch, cfg.encoder, self.k)
            nets, self.weights_desc = build_pair(
                self.spec, cfg.encoder_weights, cfg.seed, count=count
            )
        if cfg.encoder_norm == "frozen" and cfg.encoder_weights == "none" and cfg.init is None:
            log.warning(
                "--encoder-norm frozen with --encoder-weights none keeps the BatchNorm statistics "
                "of a random encoder (mean 0, variance 1) for the whole run; use --encoder-norm "
                "batch, or pretrained --encoder-weights"
            )
        self.nets = [self._place(n) for n in nets]
        # an exponential moving average of the weights is what validates, ships and predicts
        self.ema_nets = [_ema_copy(_unwrap(n)) for n in self.nets] if cfg.ema > 0 else []
        self.optimizer = _optimizer(cfg, self.nets, cfg.base_lr(self.rt.world))
        self.schedule = PolyLR(self.optimizer, cfg.base_lr(self.rt.world), cfg.iters, cfg.lr_power)
        self.scaler = torch.amp.GradScaler(self.rt.device.type, enabled=self.amp == torch.float16)
        self.policy: PseudoLabelPolicy = make_policy(cfg.pseudo_labels, self.k, cfg.threshold)
        self.class_weight = self._class_weights()
        self.iteration = 0
        self.best: dict[str, Any] = {"miou": None, "iteration": None}
        if resume_state is not None:
            self._restore(resume_state)
        self.last_val: dict[str, Any] | None = None
        self._warned_no_score = False

    def close(self) -> None:
        """Release the run folder (fit() does this on every exit path)."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    # ---- set-up helpers ----------------------------------------------------------------------

    def _class_weights(self) -> torch.Tensor | None:
        """``none``, ``auto`` (balanced from the labelled pixels) or one weight per class."""
        spec = self.cfg.class_weights
        if spec == "none":
            return None
        if spec == "auto":
            ds = self.data.labeled
            if ds.synthetic is not None or ds.paste is not None:
                # the loss sees the composites' labels, not the label files: count those
                sampler = iter(InfiniteSampler(len(ds), seed=self.cfg.seed * 1000 + 5))
                total = torch.zeros(self.k, dtype=torch.float64)
                for _ in range(min(256, 4 * len(ds))):
                    total += class_counts(ds[next(sampler)]["mask"], self.k)
                counts = total.numpy()
            else:
                counts = label_class_counts(ds.items, self.k)
            if counts.sum() == 0:
                log.warning(
                    "--class-weights auto: the labelled tiles hold no exactly labelled pixel "
                    "(partial labels only), so there is nothing to balance and the classes weigh "
                    "the same; give one weight per class to weigh them"
                )
            w = balanced_class_weights(torch.from_numpy(counts))
        else:
            values = [float(v) for v in spec.split(",")]
            if len(values) != self.k:
                raise InputError(
                    f"--class-weights gives {len(values)} weights for {self.k} classes "
                    f"({', '.join(self.data.contract.classes)})"
                )
            w = torch.tensor(values)
        log.info("class weights: %s", ", ".join(f"{v:.3g}" for v in w.tolist()))
        return w.to(self.rt.device)

    def _check_out(self, resuming: bool, overwrite: bool) -> None:
        """Refuse a run folder that is a file, holds or lies in an input, or holds a run that
        neither --resume nor --overwrite was asked for; nothing is changed here."""
        out, cfg = self.out, self.cfg
        if out.exists() and not out.is_dir():
            raise InputError(f"--out {out} is a file; give a folder for the run")
        check_folder_path(out)
        for option, value in (("--data", cfg.data), ("--voc", cfg.voc)):
            if value is not None and (contains(out, Path(value)) or contains(Path(value), out)):
                raise InputError(
                    f"--out {out} and {option} {value} overlap; the run would write into its "
                    f"input (or the input into the run): choose an --out outside {option}"
                )
        if not resuming:
            replaced = {(out / name).absolute() for name in RUN_FILES}
            for option, value in (("--init", cfg.init), ("--encoder-weights", cfg.encoder_weights)):
                if value is None or value in ("default", "imagenet", "none"):
                    continue
                given = Path(value)
                if given.is_dir() and given.resolve() == out.resolve():
                    hit = True
                else:
                    hit = given.absolute() in replaced or (
                        given.exists()
                        and any(r.exists() and os.path.samefile(given, r) for r in replaced)
                    )
                if hit:
                    raise InputError(
                        f"{option} {value} is in --out {out}, which this run writes; train "
                        f"into another --out (e.g. {out}-ft)"
                    )
        if not out.is_dir():
            return
        for name in ("config.yaml", "tb"):  # rewritten by every run, resumed ones too
            path = out / name
            if (path.exists() or path.is_symlink()) and (
                path.is_symlink() or not _written_by_train(path)
            ):
                raise InputError(
                    f"--out {path} was not written by cloudcps train, which would replace it: "
                    "move it away or choose another --out"
                )
        if resuming:
            return
        has_ckpt = (out / "latest.pt").exists()
        if (has_ckpt or (out / "metrics.jsonl").exists()) and not overwrite:
            if not has_ckpt:
                raise InputError(
                    f"--out {out} holds a run that stopped before its first checkpoint "
                    "(no latest.pt); pass --overwrite to start over, or choose another --out"
                )
            raise InputError(
                f"--out {out} already holds a run; pass --resume to continue it, "
                "--overwrite to start over, or choose another --out"
            )

    def _owned_run_files(self) -> list[Path]:
        """The files of an earlier run that --overwrite replaces, each checked to be
        cloudcps's own; a file of the same name that cloudcps did not write is refused."""
        owned = []
        for name in RUN_FILES:
            path = self.out / name
            if not path.exists() and not path.is_symlink():
                continue
            if path.is_symlink() or not _written_by_train(path):
                raise InputError(
                    f"--out {path} was not written by cloudcps train; --overwrite only replaces "
                    "a run's own files: move it away or choose another --out"
                )
            owned.append(path)
        owned += list(self.out.glob(".*.pt.tmp-*"))
        return owned

    def _clear_run(self, owned: list[Path]) -> None:
        for path in owned:
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)

    def _check_fresh(self) -> None:
        """A new run starts in a folder without run files (a run that appeared meanwhile, or
        one another tool left, is not appended to)."""
        left = [n for n in ("latest.pt", "best.pt", "metrics.jsonl") if (self.out / n).exists()]
        if left:
            raise InputError(
                f"--out {self.out} holds {left[0]} of another run; choose another --out"
            )

    def _place(self, net: nn.Module) -> nn.Module:
        dev = self.rt.device
        if self.rt.distributed and dev.type == "cuda":
            net = nn.SyncBatchNorm.convert_sync_batchnorm(net)  # type: ignore[no-untyped-call]
        net = net.to(dev)
        if dev.type == "cuda":
            net = net.to(memory_format=torch.channels_last)
        net.train()
        if self.rt.distributed:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [dev.index] if dev.type == "cuda" else None
            net = DDP(net, device_ids=ids)
        return net

    def _restore(self, state: dict[str, Any]) -> None:
        for net, sd in zip(self.nets, state.get("train_nets") or state["nets"], strict=True):
            _unwrap(net).load_state_dict(sd)
        for ema, sd in zip(self.ema_nets, state["nets"], strict=False):
            ema.load_state_dict(sd)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.policy.load_state_dict(state.get("policy", {}))
        self.iteration = int(state["iteration"])
        self.best = dict(state.get("best") or self.best)
        rng = state.get("rng", {})
        if "torch" in rng:
            torch.set_rng_state(rng["torch"])
        if (
            "cuda" in rng
            and torch.cuda.is_available()
            and len(rng["cuda"]) == torch.cuda.device_count()
        ):
            torch.cuda.set_rng_state_all(rng["cuda"])
        # metrics rows past the checkpoint belong to the interrupted tail: drop them
        mpath = self.out / "metrics.jsonl"
        if self.rt.main and mpath.exists():
            keep = []
            for line in mpath.read_text(errors="replace").splitlines():
                try:
                    row = json.loads(line)
                except ValueError:
                    continue  # a line torn by a kill (or anything not ours): dropped
                if isinstance(row, dict) and int(row.get("iter", 0) or 0) <= self.iteration:
                    keep.append(line)
            mpath.write_text("".join(r + "\n" for r in keep))
        log.info("resumed %s at iteration %d", self.out / "latest.pt", self.iteration)

    # ---- checkpoints -------------------------------------------------------------------------

    def _state(self, full: bool) -> dict[str, Any]:
        state: dict[str, Any] = {
            "model": self.spec.to_dict(),
            "nets": [n.state_dict() for n in self.eval_nets()],
            "iteration": self.iteration,
            "config": self.cfg.to_dict(),
            "contract": self.data.contract.to_dict(),
            "best": dict(self.best),
            "val": self.last_val,
            "encoder_weights": self.weights_desc,
        }
        if full:
            if self.ema_nets:  # the weights being trained, to resume from
                state["train_nets"] = [_unwrap(n).state_dict() for n in self.nets]
            rng: dict[str, Any] = {"torch": torch.get_rng_state()}
            if torch.cuda.is_available():
                rng["cuda"] = torch.cuda.get_rng_state_all()
            state.update(
                optimizer=self.optimizer.state_dict(),
                scheduler=self.schedule.state_dict(),
                scaler=self.scaler.state_dict(),
                policy=self.policy.state_dict(),
                rng=rng,
            )
        return state

    def save(self, name: str = "latest.pt") -> None:
        if self.rt.main:
            save_checkpoint(self.out / name, self._state(full=name == "latest.pt"))

    # ---- one iteration -----------------------------------------------------------------------

    def _forward(self, net: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self.rt.device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(
            self.rt.device.type, dtype=self.amp or torch.float32, enabled=self.amp is not None
        ):
            out: torch.Tensor = net(x)
        return out

    def step(self, batch_x: dict[str, Any], batch_u: dict[str, Any] | None) -> dict[str, Any]:
        """One optimisation step; returns the losses and the pseudo-label statistics."""
        dev = self.rt.device
        img_x = batch_x["image"].to(dev, non_blocking=True)
        mask_x = batch_x["mask"].to(dev, non_blocking=True)
        valid_x = batch_x["valid"].to(dev, non_blocking=True)
        bx = img_x.shape[0]
        stats: dict[str, Any] = {"labeled": class_counts(mask_x.cpu(), self.k)}
        for net in self.nets:  # validation in between leaves the networks in train mode
            set_train_mode(net, self.cfg.encoder_norm)
        self.optimizer.zero_grad(set_to_none=True)

        if not self.cps:
            pred_x = self._forward(self.nets[0], img_x)
            loss_x = supervised_loss(pred_x, mask_x, self.class_weight)
            loss_u = torch.zeros((), device=dev)
        else:
            if batch_u is None:  # CPS on the labelled images alone
                img_u, valid_u = img_x, valid_x
            else:
                img_u = batch_u["image"].to(dev, non_blocking=True)
                valid_u = batch_u["valid"].to(dev, non_blocking=True)
            mask_u = batch_u["mask"].to(dev, non_blocking=True) if batch_u is not None else mask_x
            self.policy.observe_labeled(mask_x)
            net1, net2 = self.nets
            if self.cfg.cutmix:
                img_mix, valid_mix, mix = self._cutmix(img_u, valid_u)
                with torch.no_grad():
                    prob1_u = restrict_to_labels(
                        self._forward(net1, img_u).float().softmax(1), mask_u
                    )
                    prob2_u = restrict_to_labels(
                        self._forward(net2, img_u).float().softmax(1), mask_u
                    )
                    prob1_u, prob2_u = mix(prob1_u), mix(prob2_u)
                inputs = torch.cat([img_x, img_mix])
                pred1, pred2 = self._forward(net1, inputs), self._forward(net2, inputs)
                self.policy.update((prob1_u + prob2_u) / 2, valid_mix)
                t_for_1 = self.policy.targets(prob2_u, valid_mix)
                t_for_2 = self.policy.targets(prob1_u, valid_mix)
                loss_u = t_for_1.loss(pred1[bx:]) + t_for_2.loss(pred2[bx:])
            else:
                inputs = torch.cat([img_x, img_u])
                valid = torch.cat([valid_x, valid_u])
                pred1, pred2 = self._forward(net1, inputs), self._forward(net2, inputs)
                prob1, prob2 = pred1.detach().float().softmax(1), pred2.detach().float().softmax(1)
                # pseudo-labels stay inside what a partial label allows
                mask_all = torch.cat([mask_x, mask_u])
                prob1, prob2 = (
                    restrict_to_labels(prob1, mask_all),
                    restrict_to_labels(prob2, mask_all),
                )
                self.policy.update(((prob1 + prob2) / 2)[bx:], valid_u)
                t_for_1 = self.policy.targets(prob2, valid)
                t_for_2 = self.policy.targets(prob1, valid)
                if self.cfg.trust_labels:
                    t_for_1, t_for_2 = t_for_1.trust_labels(mask_x), t_for_2.trust_labels(mask_x)
                loss_u = t_for_1.loss(pred1) + t_for_2.loss(pred2)
            loss_x = supervised_loss(pred1[:bx], mask_x, self.class_weight) + supervised_loss(
                pred2[:bx], mask_x, self.class_weight
            )
            # statistics on the unlabelled images only (the pseudo-labels net 1 learns from)
            n_u = t_for_1.raw.shape[0]
            part = slice(n_u - img_u.shape[0], n_u)
            stats["pseudo"] = class_counts(t_for_1.raw[part].cpu(), self.k)
            stats["kept"] = class_counts(t_for_1.target[part].cpu(), self.k)
            stats["valid_u"] = float(t_for_1.valid[part].sum())

        cps_weight = self.cfg.cps_weight_at(self.iteration)
        loss = loss_x + cps_weight * loss_u
        bad = torch.tensor([0.0 if torch.isfinite(loss) else 1.0], device=dev)
        if self.rt.distributed:
            dist.all_reduce(bad, op=dist.ReduceOp.MAX)
        if bad.item() > 0:
            raise TrainingDivergedError(
                f"the loss became {loss.item()} at iteration {self.iteration + 1}; "
                f"{self.out / 'latest.pt'} keeps the last good state: lower --lr or use --amp none"
            )
        self.scaler.scale(loss).backward()  # type: ignore[no-untyped-call]
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.ema_nets:
            # warm-up: early weights are forgotten quickly
            decay = min(self.cfg.ema, (1 + self.iteration) / (10 + self.iteration))
            with torch.no_grad():
                for ema, net in zip(self.ema_nets, self.nets, strict=True):
                    for e, p in zip(ema.parameters(), _unwrap(net).parameters(), strict=True):
                        e.mul_(decay).add_(p.detach(), alpha=1 - decay)
                    for eb, b in zip(ema.buffers(), _unwrap(net).buffers(), strict=True):
                        eb.copy_(b)
        stats.update(
            cps_weight=cps_weight,
            loss=float(loss.detach()),
            loss_sup=float(loss_x.detach()),
            loss_cps=float(loss_u.detach()),
        )
        return stats

    def _cutmix(
        self, img_u: torch.Tensor, valid_u: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, Any]:
        """Mix each unlabelled image with a partner inside random boxes (CPS + CutMix).

        The partner is the next image of the batch (or the mirrored image for a batch of one);
        ``mix`` applies the same boxes to anything computed on the clean images.
        """
        b, _, h, w = img_u.shape
        gen = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + self.iteration)
        m = box_mix_mask(b, h, w, gen).to(img_u.device)

        def partner(t: torch.Tensor) -> torch.Tensor:
            return torch.roll(t, 1, 0) if b > 1 else torch.flip(t, [-1])

        def mix(t: torch.Tensor) -> torch.Tensor:
            mm = m if t.ndim == 4 else m[:, 0]
            return t * (1 - mm) + partner(t) * mm

        valid_mix = mix(valid_u.float()) > 0.5
        return mix(img_u), valid_mix, mix

    # ---- the loop ------------------------------------------------------------------------------

    @torch.no_grad()
    def recalibrate_norm(self) -> None:
        """Population statistics for the BatchNorm layers that train ("precise BN").

        With 2-8 small crops a step, running statistics follow the last few batches (snow,
        water, cloud, crops padded by the scale augmentation) and swing from one check to the
        next; the model validated and saved would be whichever the last batches left.
        ``bn_recalibrate`` batches of labelled crops at scale 1 (no padding, as at prediction
        time; synthetic clouds as in training), drawn from a stream fixed by the seed and the
        iteration (so a resumed run gets the same), give each layer the plain mean over all.
        """
        n = min(self.cfg.bn_recalibrate, self.cfg.iters)  # scaled to the run: a 2-step test
        if n <= 0:
            return
        nets = self.eval_nets()
        for net in nets:
            set_train_mode(net, self.cfg.encoder_norm)
        layers = [
            m
            for net in nets
            for m in net.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm)
            and m.training
            and m.track_running_stats
        ]
        if not layers:
            return
        momenta = [m.momentum for m in layers]
        for m in layers:
            m.reset_running_stats()
            m.momentum = None  # cumulative mean
        ds = self.data.calibration
        stream = iter(
            InfiniteSampler(len(ds), seed=self.cfg.seed * 1000 + 3 + 7919 * self.iteration)
        )
        size = max(2, self.cfg.batch_size)  # pooled BatchNorm layers need two values a channel
        for _ in range(n):
            x = torch.stack([ds[next(stream)]["image"] for _ in range(size)])
            x = x.to(self.rt.device)
            for net in nets:
                self._forward(net, x)
        for m, mom in zip(layers, momenta, strict=True):
            m.momentum = mom
        if self.ema_nets:
            for net in self.ema_nets:
                net.eval()

    def eval_nets(self) -> list[nn.Module]:
        """The networks that validate and are saved: the weight averages when ``ema`` is on."""
        return self.ema_nets or [_unwrap(n) for n in self.nets]

    def validate(self) -> dict[str, Any] | None:
        if self.data.val is None:
            return None
        nets = self.eval_nets()
        cms = evaluate_networks(nets, self.data.val, self.k, self.rt.device, self.amp)
        names = self.data.contract.classes
        result = {name: validation_scores(cm, names) for name, cm in cms.items()}
        key = "ensemble" if "ensemble" in result else "net1"
        result["selected"] = key  # type: ignore[assignment]
        return result

    def fit(self, stop_at: int | None = None) -> TrainResult:
        """Train until ``cfg.iters`` (or ``stop_at``); save ``latest.pt``/``best.pt`` on the way.
        The run folder is released on every way out."""
        try:
            return self._fit(stop_at)
        finally:
            self.close()

    def _fit(self, stop_at: int | None) -> TrainResult:
        from tqdm import tqdm

        cfg, rt = self.cfg, self.rt
        if rt.main:
            dump_config(cfg, self.out / "config.yaml")
            log.info(
                "training %s on %s: %s %s, encoder weights: %s, device %s%s",
                cfg.mode,
                self.data.source,
                cfg.arch,
                cfg.encoder,
                self.weights_desc,
                rt.device,
                f" x{rt.world}" if rt.distributed else "",
            )
        start = self.iteration
        it_x = _stream(self.data.labeled, cfg, rt, start * cfg.batch_size, 1)
        it_u = (
            _stream(self.data.unlabeled, cfg, rt, start * cfg.batch_size, 2)
            if self.cps and self.data.unlabeled is not None
            else None
        )
        writer = self._tensorboard()
        end = min(cfg.iters, stop_at) if stop_at is not None else cfg.iters
        every_eval = cfg.resolved_eval_every()
        acc = _Accumulator(self.k)
        bar = tqdm(
            total=cfg.iters,
            initial=start,
            unit="it",
            desc=cfg.mode,
            disable=not (self.progress and rt.main),
        )
        history: list[dict[str, Any]] = []
        try:
            while self.iteration < end:
                lr = self.schedule.set(self.iteration)
                t0 = time.perf_counter()
                stats = self.step(next(it_x), next(it_u) if it_u is not None else None)
                self.iteration += 1
                acc.add(stats, time.perf_counter() - t0)
                bar.update(1)
                bar.set_postfix(loss=f"{stats['loss']:.3f}", refresh=False)
                last = self.iteration == cfg.iters
                if self.iteration % cfg.log_every == 0 or last or self.iteration == end:
                    row = {
                        "iter": self.iteration,
                        "lr": lr,
                        **acc.summary(self.data.contract.classes),
                    }
                    acc = _Accumulator(self.k)
                    self._log(row, writer)
                    history.append(row)
                if self.iteration % every_eval == 0 or last:
                    self.recalibrate_norm()
                    self._evaluate_and_keep(writer, history)
                    self.save("latest.pt")
                elif self.iteration == end:
                    self.save("latest.pt")
        except KeyboardInterrupt:
            self.save("latest.pt")
            raise
        finally:
            bar.close()
            if writer is not None:
                writer.close()
        if self.iteration >= cfg.iters and rt.main and self.best.get("miou") is None:
            # nothing to select by (no validation split, or one whose labels give no score):
            # the final model is the best we know
            self.save("best.pt")
        if rt.distributed:
            dist.barrier()
        return TrainResult(
            out=self.out,
            iteration=self.iteration,
            best_miou=self.best.get("miou"),
            best_iteration=self.best.get("iteration"),
            last_val=self.last_val,
            history=history,
        )

    def _evaluate_and_keep(self, writer: Any, history: list[dict[str, Any]]) -> None:
        if self.rt.main:
            result = self.validate()
            if result is not None:
                self.last_val = result
                key = str(result["selected"])
                miou = result[key]["miou"]
                row: dict[str, Any] = {"iter": self.iteration, "event": "val", "selected": key}
                for name in [k for k in result if k != "selected"]:
                    row[f"miou_{name}"] = result[name]["miou"]
                    row[f"iou_{name}"] = result[name]["iou"]
                self._log(row, writer)
                history.append(row)
                if miou is None and not self._warned_no_score:
                    self._warned_no_score = True
                    log.warning(
                        "the validation split %r gives no score (no exactly labelled pixel, and "
                        "no partial labels of disjoint classes): best.pt will be the final "
                        "iteration; tile with --val scenes that have labels",
                        self.cfg.val_split,
                    )
                if miou is not None and (self.best["miou"] is None or miou > self.best["miou"]):
                    self.best = {"miou": miou, "iteration": self.iteration, "net": key}
                    self.save("best.pt")
        if self.rt.distributed:
            dist.barrier()

    def _log(self, row: dict[str, Any], writer: Any) -> None:
        if not self.rt.main:
            return
        with open(self.out / "metrics.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        if writer is not None:
            for k, v in row.items():
                if isinstance(v, (int, float)) and k != "iter":
                    writer.add_scalar(k, v, row["iter"])

    def _tensorboard(self) -> Any:
        if not self.rt.main:
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except Exception:  # tensorboard is optional
            return None
        return SummaryWriter(str(self.out / "tb"))


class _Accumulator:
    """Running means of losses and pseudo-label class counts between two log rows."""

    def __init__(self, k: int) -> None:
        self.k = k
        self.n = 0
        self.sums = {
            "loss": 0.0,
            "loss_sup": 0.0,
            "loss_cps": 0.0,
            "cps_weight": 0.0,
            "seconds": 0.0,
        }
        self.counts = {
            "labeled": torch.zeros(k, dtype=torch.float64),
            "pseudo": torch.zeros(k, dtype=torch.float64),
            "kept": torch.zeros(k, dtype=torch.float64),
        }
        self.valid_u = 0.0

    def add(self, stats: dict[str, Any], seconds: float) -> None:
        self.n += 1
        for key in ("loss", "loss_sup", "loss_cps"):
            self.sums[key] += float(stats[key])
        self.sums["cps_weight"] += float(stats.get("cps_weight", 0.0))
        self.sums["seconds"] += seconds
        for key in self.counts:
            if key in stats:
                self.counts[key] += stats[key]
        self.valid_u += float(stats.get("valid_u", 0.0))

    def summary(self, classes: tuple[str, ...]) -> dict[str, Any]:
        n = max(1, self.n)
        row: dict[str, Any] = {k: v / n for k, v in self.sums.items()}
        row["seconds_per_iter"] = row.pop("seconds")

        def share(c: torch.Tensor, total: float) -> list[float]:
            return [round(float(v) / total, 5) if total > 0 else 0.0 for v in c]

        row["labeled_share"] = share(self.counts["labeled"], float(self.counts["labeled"].sum()))
        if self.valid_u > 0:
            row["pseudo_share"] = share(self.counts["pseudo"], self.valid_u)
            # kept share: of all valid unlabelled pixels, those kept with each class
            row["kept_share"] = share(self.counts["kept"], self.valid_u)
        row["classes"] = list(classes)
        return row
