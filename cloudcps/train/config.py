"""Training configuration: a typed dataclass, read from YAML (safely), overridden by options."""

from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal

import yaml

from cloudcps.errors import InputError, first_line

Mode = Literal["cps", "supervised"]
Policy = Literal["plain", "threshold", "adaptive", "aligned"]
Optimizer = Literal["sgd", "adamw"]
EncoderNorm = Literal["batch", "frozen"]


@dataclass
class TrainConfig:
    """Everything a training run depends on; written resolved to ``RUN/config.yaml``.

    The learning rate follows TorchSemiSeg's rule: its configured rate is per GPU and is multiplied
    by the number of GPUs, i.e. 0.01 for a global batch of 8 labelled + 8 unlabelled images. Here
    ``lr`` is the rate for the whole (global) batch; left empty it is
    ``0.01 * global_batch / 8`` (linear scaling).
    """

    data: str | None = None
    voc: str | None = None
    voc_split: str | None = None
    val_split: str = "val"
    out: str = "run"
    mode: Mode = "cps"
    iters: int = 2000
    arch: str = "deeplabv3plus"
    encoder: str = "tu-efficientnet_lite0"
    encoder_weights: str = "imagenet"
    init: str | None = None
    cps_weight: float = 1.5
    cps_rampup: float = 0.0
    pseudo_labels: Policy = "adaptive"
    threshold: float = 0.9
    cutmix: bool = False
    trust_labels: bool = True  # CPS term on labelled images: the labels (issue 22)
    class_weights: str = "none"
    pool_labeled: bool = False
    synthetic_clouds: float = 0.0
    synthetic_thin_alpha: float = 0.04
    paste_clouds: float = 0.0
    batch_size: int = 8
    crop: int = 512
    scale_min: float = 0.5
    scale_max: float = 2.0
    lr: float | None = None
    optimizer: Optimizer = "sgd"
    encoder_norm: EncoderNorm = "batch"
    bn_recalibrate: int = 50
    # recalibration crops with training's synthetic / pasted clouds, as the weights were trained
    # under; off: real images only, as prediction meets them (a trade, docs/benchmarks.md item 25)
    bn_recalibrate_synthetic: bool = True
    ema: float = 0.0
    momentum: float = 0.9
    weight_decay: float = 5e-4
    lr_power: float = 0.9
    eval_every: int = 0
    log_every: int = 10
    val_max: int = 0
    device: str = "auto"
    amp: Literal["auto", "bf16", "fp16", "none"] = "auto"
    workers: int = 2
    seed: int = 0

    def validate(self) -> None:
        if (self.data is None) == (self.voc is None):
            raise InputError("give exactly one of --data (a tile folder) or --voc (VOC root)")
        if self.voc is not None and not self.voc_split:
            raise InputError("--voc needs --voc-split (a name such as 1-8, or a list file)")
        from cloudcps.synthetic.clouds import LayerThresholds

        thick_alpha = LayerThresholds.thick_alpha
        checks = [
            (self.iters >= 1, f"--iters {self.iters} must be at least 1"),
            (self.batch_size >= 1, f"--batch-size {self.batch_size} must be at least 1"),
            (
                self.crop >= 32 and self.crop % 32 == 0,
                f"--crop {self.crop} must be a multiple of 32",
            ),
            (self.cps_weight >= 0, f"--cps-weight {self.cps_weight} must be >= 0"),
            (
                0 <= self.synthetic_clouds <= 1,
                f"--synthetic-clouds {self.synthetic_clouds} must be a share in [0, 1]",
            ),
            (
                0 < self.synthetic_thin_alpha < thick_alpha,
                f"--synthetic-thin-alpha {self.synthetic_thin_alpha} must be in "
                f"(0, {thick_alpha}) (below the thick-cloud opacity)",
            ),
            (
                0 <= self.paste_clouds <= 1,
                f"--paste-clouds {self.paste_clouds} must be a share in [0, 1]",
            ),
            (0 <= self.cps_rampup <= 1, f"--cps-rampup {self.cps_rampup} must be in [0, 1]"),
            (0 < self.threshold < 1, f"--threshold {self.threshold} must be in (0, 1)"),
            (0 < self.scale_min <= self.scale_max, "scale_min must be > 0 and <= scale_max"),
            (self.lr is None or self.lr > 0, f"--lr {self.lr} must be > 0"),
            (0 <= self.momentum < 1, f"momentum {self.momentum} must be in [0, 1)"),
            (self.weight_decay >= 0, f"weight_decay {self.weight_decay} must be >= 0"),
            (self.lr_power >= 0, f"lr_power {self.lr_power} must be >= 0"),
            (self.log_every >= 1, f"--log-every {self.log_every} must be at least 1"),
            (self.eval_every >= 0, f"--eval-every {self.eval_every} must be >= 0 (0 = iters/10)"),
            (self.val_max >= 0, f"--val-max {self.val_max} must be >= 0 (0 = all)"),
            (0 <= self.ema < 1, f"--ema {self.ema} must be in [0, 1) (0 = off)"),
            (
                0 <= self.bn_recalibrate <= 10000,
                f"--bn-recalibrate {self.bn_recalibrate} must be in 0..10000 batches",
            ),
            (self.workers >= 0, f"--workers {self.workers} must be >= 0"),
            (self.crop <= 8192, f"--crop {self.crop} must be at most 8192"),
        ]
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, float) and not math.isfinite(v):
                config_only = f.name in (
                    "scale_min",
                    "scale_max",
                    "momentum",
                    "weight_decay",
                    "lr_power",
                )
                name = f"{f.name} (config)" if config_only else "--" + f.name.replace("_", "-")
                raise InputError(f"{name} is {v}; give a finite number")
        if self.class_weights not in ("none", "auto"):
            try:
                ws = [float(v) for v in self.class_weights.split(",")]
            except ValueError:
                ws = []
            if not ws or not all(math.isfinite(w) and w >= 0 for w in ws) or not any(ws):
                raise InputError(
                    f"--class-weights {self.class_weights!r}: give none, auto, or one weight "
                    "per class (comma-separated, >= 0)"
                )
        for ok, msg in checks:
            if not ok:
                raise InputError(msg)

    def base_lr(self, world_size: int) -> float:
        if self.lr is not None:
            return self.lr
        return 0.01 * self.batch_size * world_size / 8

    def cps_weight_at(self, it: int) -> float:
        """lambda at iteration ``it``: ramped up as exp(-5 (1 - t)^2) over ``cps_rampup`` of the
        run (the consistency ramp-up of mean teachers), then constant."""
        if self.cps_rampup <= 0:
            return self.cps_weight
        t = min(1.0, it / max(1.0, self.cps_rampup * self.iters))
        return self.cps_weight * math.exp(-5.0 * (1.0 - t) ** 2)

    def resolved_eval_every(self) -> int:
        return self.eval_every if self.eval_every > 0 else max(1, self.iters // 10)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _coerce(name: str, tp: Any, value: Any) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if value is None:
        if origin in (typing.Union, types.UnionType) and type(None) in args:
            return None
        raise InputError(f"config key {name!r} may not be empty")
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        return _coerce(name, inner[0], value)
    if origin is Literal:
        if value not in args:
            raise InputError(f"config key {name!r} is {value!r}; choose one of {list(args)}")
        return value
    try:
        if tp is bool:
            if isinstance(value, bool):
                return value
            raise TypeError
        if tp is int and isinstance(value, float) and not value.is_integer():
            raise TypeError
        return tp(value)
    except (TypeError, ValueError):
        raise InputError(f"config key {name!r} should be {tp.__name__}, got {value!r}") from None


def config_from_dict(d: dict[str, Any], base: TrainConfig | None = None) -> TrainConfig:
    """Apply the keys of ``d`` over ``base``; unknown keys are an error that names them."""
    hints = typing.get_type_hints(TrainConfig)
    known = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise InputError(f"unknown config key(s) {unknown}; known keys: {sorted(known)}")
    values = {k: _coerce(k, hints[k], v) for k, v in d.items()}
    return dataclasses.replace(base or TrainConfig(), **values)


def load_config(path: str | os.PathLike[str], base: TrainConfig | None = None) -> TrainConfig:
    """Read a YAML config with ``yaml.safe_load``."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"--config {p} does not exist")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise InputError(f"--config {p} is not valid YAML ({first_line(exc, None)})") from None
    if not isinstance(data, dict):
        raise InputError(f"--config {p} must hold a mapping of option: value")
    bad = [k for k in data if not isinstance(k, str)]
    if bad:
        raise InputError(
            f"--config {p}: key {bad[0]!r} is not an option name; keys are names such as iters"
        )
    return config_from_dict({k.replace("-", "_"): v for k, v in data.items()}, base)


def dump_config(cfg: TrainConfig, path: Path) -> None:
    """Write the resolved config through a temporary file (a kill leaves the old one whole)."""
    from cloudcps.io import atomic_file

    with atomic_file(path, overwrite=True) as tmp:
        tmp.write_text(CONFIG_HEADER + yaml.safe_dump(cfg.to_dict(), sort_keys=False))


CONFIG_HEADER = "# written by cloudcps train: the resolved options of this run\n"
