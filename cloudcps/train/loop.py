"""The training loop: iterations of :mod:`cloudcps.train.method`'s steps, with the learning-rate
schedule, the weight average, periodic metrics rows, validation, ``latest.pt``/``best.pt`` and
exact resumption (the RNG state, the batch streams and the pseudo-label policy's statistics are
saved and restored, so a resumed run ends with the weights of an uninterrupted one)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from cloudcps.errors import TrainingDivergedError
from cloudcps.models import save_checkpoint
from cloudcps.train.config import TrainConfig, dump_config
from cloudcps.train.logbook import Accumulator, Logbook, validation_row
from cloudcps.train.method import Batch, cps_step, supervised_step
from cloudcps.train.pseudo import PseudoLabelPolicy, class_counts, make_policy
from cloudcps.train.runfolder import (
    RunFolder,
    check_config_file,
    check_resumed_classes,
    interrupted_message,
    resolve_config,
    trim_metrics,
)
from cloudcps.train.schedule import (
    PolyLR,
    ema_copy,
    make_optimizer,
    recalibrate_batchnorm,
    set_train_mode,
    update_ema,
)
from cloudcps.train.setup import (
    Forward,
    Runtime,
    amp_dtype,
    batch_streams,
    build_data,
    build_networks,
    init_runtime,
    loss_class_weights,
    place,
    unwrap,
)
from cloudcps.train.validation import Selection, validate

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    out: Path
    iteration: int
    best_miou: float | None
    best_iteration: int | None
    last_val: dict[str, Any] | None = None
    history: list[dict[str, Any]] = field(default_factory=list)


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
        self.amp = amp_dtype(cfg, self.rt.device)
        self.forward = Forward(self.rt.device, self.amp)
        resuming = resume_state is not None
        self.run_folder = RunFolder(cfg)
        if self.rt.main:
            self.run_folder.claim(resuming, overwrite)
        try:
            owned: list[Path] = []
            if self.rt.main and not resuming and overwrite:
                owned = self.run_folder.owned_files()  # every file it would replace is checked
            self._setup(cfg, resume_state)
            if self.rt.main and not resuming:
                self.run_folder.start_fresh(owned)
        except BaseException:
            self.run_folder.abandon()
            raise

    def _setup(self, cfg: TrainConfig, resume_state: dict[str, Any] | None) -> None:
        """Read the data and build (or restore) the networks: every input is read here, before
        the run folder is changed."""
        self.data = build_data(cfg)
        self.k = self.data.contract.num_classes
        if resume_state is not None:
            check_resumed_classes(resume_state, self.data.contract, self.out)
        self.cps = cfg.mode == "cps"
        if self.cps and self.data.unlabeled is None:
            log.warning("no unlabelled images: CPS runs on the labelled images alone")
        nets, self.spec, self.weights_desc = build_networks(
            cfg, self.data.contract, resume_state is not None
        )
        self.nets = [place(n, self.rt) for n in nets]
        # an exponential moving average of the weights is what validates, ships and predicts
        self.ema_nets = [ema_copy(unwrap(n)) for n in self.nets] if cfg.ema > 0 else []
        self.optimizer = make_optimizer(cfg, self.nets, cfg.base_lr(self.rt.world))
        self.schedule = PolyLR(self.optimizer, cfg.base_lr(self.rt.world), cfg.iters, cfg.lr_power)
        self.scaler = torch.amp.GradScaler(self.rt.device.type, enabled=self.amp == torch.float16)
        self.policy: PseudoLabelPolicy = make_policy(cfg.pseudo_labels, self.k, cfg.threshold)
        self.class_weight = loss_class_weights(cfg, self.data, self.rt.device)
        self.iteration = 0
        self.selection = Selection(cfg.val_split)
        if resume_state is not None:
            self._restore(resume_state)

    def close(self) -> None:
        """Release the run folder (fit() does this on every exit path)."""
        self.run_folder.release()

    # ---- checkpoints -------------------------------------------------------------------------

    def _restore(self, state: dict[str, Any]) -> None:
        for net, sd in zip(self.nets, state.get("train_nets") or state["nets"], strict=True):
            unwrap(net).load_state_dict(sd)
        for ema, sd in zip(self.ema_nets, state["nets"], strict=False):
            ema.load_state_dict(sd)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.policy.load_state_dict(state.get("policy", {}))
        self.iteration = int(state["iteration"])
        self.selection.best = dict(state.get("best") or self.selection.best)
        _restore_rng(state.get("rng", {}))
        if self.rt.main:
            trim_metrics(self.out, self.iteration)
        log.info("resumed %s at iteration %d", self.out / "latest.pt", self.iteration)

    def _state(self, full: bool) -> dict[str, Any]:
        state: dict[str, Any] = {
            "model": self.spec.to_dict(),
            "nets": [n.state_dict() for n in self.eval_nets()],
            "iteration": self.iteration,
            "config": self.cfg.to_dict(),
            "contract": self.data.contract.to_dict(),
            "best": dict(self.selection.best),
            "val": self.selection.last_val,
            "encoder_weights": self.weights_desc,
        }
        if full:
            if self.ema_nets:  # the weights being trained, to resume from
                state["train_nets"] = [unwrap(n).state_dict() for n in self.nets]
            state.update(
                optimizer=self.optimizer.state_dict(),
                scheduler=self.schedule.state_dict(),
                scaler=self.scaler.state_dict(),
                policy=self.policy.state_dict(),
                rng=_rng_state(),
            )
        return state

    def save(self, name: str = "latest.pt") -> None:
        if self.rt.main:
            save_checkpoint(self.out / name, self._state(full=name == "latest.pt"))

    # ---- one iteration -----------------------------------------------------------------------

    def step(self, batch_x: dict[str, Any], batch_u: dict[str, Any] | None) -> dict[str, Any]:
        """One optimisation step; returns the losses and the pseudo-label statistics."""
        dev = self.rt.device
        x = Batch.of(batch_x, dev)
        stats: dict[str, Any] = {"labeled": class_counts(x.mask.cpu(), self.k)}
        for net in self.nets:  # validation in between leaves the networks in train mode
            set_train_mode(net, self.cfg.encoder_norm)
        self.optimizer.zero_grad(set_to_none=True)
        if self.cps:
            u = Batch.of(batch_u, dev) if batch_u is not None else None
            boxes = None
            if self.cfg.cutmix:  # CutMix boxes fixed by the seed and the iteration (resume)
                boxes = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + self.iteration)
            losses = cps_step(
                self.forward, self.nets, x, u, self.policy, self.class_weight,
                boxes, self.cfg.trust_labels,
            )  # fmt: skip
        else:
            losses = supervised_step(self.forward, self.nets[0], x, self.class_weight)
        stats.update(losses.stats)
        cps_weight = self.cfg.cps_weight_at(self.iteration)
        loss = losses.supervised + cps_weight * losses.cps
        _stop_if_diverged(loss, self.rt, self.iteration, self.out / "latest.pt")
        self.scaler.scale(loss).backward()  # type: ignore[no-untyped-call]
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.ema_nets:
            update_ema(self.ema_nets, self.nets, self.cfg.ema, self.iteration)
        stats.update(
            cps_weight=cps_weight,
            loss=float(loss.detach()),
            loss_sup=float(losses.supervised.detach()),
            loss_cps=float(losses.cps.detach()),
        )
        return stats

    # ---- validation --------------------------------------------------------------------------

    def recalibrate_norm(self) -> None:
        """BatchNorm statistics of the networks that validate and are saved, recalibrated
        (:func:`~cloudcps.train.schedule.recalibrate_batchnorm`); the averages stay in eval
        mode."""
        done = recalibrate_batchnorm(
            self.eval_nets(), self.data.calibration, self.cfg, self.iteration, self.forward,
            self.rt.device,
        )  # fmt: skip
        if done and self.ema_nets:
            for net in self.ema_nets:
                net.eval()

    def eval_nets(self) -> list[nn.Module]:
        """The networks that validate and are saved: the weight averages when ``ema`` is on."""
        return self.ema_nets or [unwrap(n) for n in self.nets]

    def validate(self) -> dict[str, Any] | None:
        """Scores of :meth:`eval_nets` on the validation split (None without one)."""
        if self.data.val is None:
            return None
        classes = self.data.contract.classes
        return validate(self.eval_nets(), self.data.val, classes, self.rt.device, self.amp)

    def _evaluate_and_keep(self, logbook: Logbook, history: list[dict[str, Any]]) -> None:
        """Validate (main process), write the row, and save best.pt when it is the best yet."""
        if self.rt.main:
            result = self.validate()
            if result is not None:
                row = validation_row(self.iteration, result)
                logbook.write(row)
                history.append(row)
                if self.selection.record(result, self.iteration):
                    self.save("best.pt")
        if self.rt.distributed:
            dist.barrier()

    # ---- the loop ----------------------------------------------------------------------------

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
            self._announce()
        it_x, it_u = batch_streams(self.data, cfg, rt, self.iteration)
        logbook = Logbook(self.out, rt.main)
        end = min(cfg.iters, stop_at) if stop_at is not None else cfg.iters
        acc = Accumulator(self.k)
        bar = tqdm(
            total=cfg.iters,
            initial=self.iteration,
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
                acc = self._after_step(lr, acc, end, logbook, history)
        except KeyboardInterrupt:
            self.save("latest.pt")
            raise
        finally:
            bar.close()
            logbook.close()
        return self._finish(history)

    def _announce(self) -> None:
        cfg, rt = self.cfg, self.rt
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

    def _after_step(
        self,
        lr: float,
        acc: Accumulator,
        end: int,
        logbook: Logbook,
        history: list[dict[str, Any]],
    ) -> Accumulator:
        """A metrics row every ``log_every`` iterations; validation and latest.pt every
        ``eval_every`` (and at the end). Returns the accumulator of the next row."""
        cfg = self.cfg
        last = self.iteration == cfg.iters
        if self.iteration % cfg.log_every == 0 or last or self.iteration == end:
            row = {"iter": self.iteration, "lr": lr, **acc.summary(self.data.contract.classes)}
            acc = Accumulator(self.k)
            logbook.write(row)
            history.append(row)
        if self.iteration % cfg.resolved_eval_every() == 0 or last:
            self.recalibrate_norm()
            self._evaluate_and_keep(logbook, history)
            self.save("latest.pt")
        elif self.iteration == end:
            self.save("latest.pt")
        return acc

    def _finish(self, history: list[dict[str, Any]]) -> TrainResult:
        best = self.selection.best
        if self.iteration >= self.cfg.iters and self.rt.main and best.get("miou") is None:
            # nothing to select by (no validation split, or one whose labels give no score):
            # the final model is the best we know
            self.save("best.pt")
        if self.rt.distributed:
            dist.barrier()
        return TrainResult(
            out=self.out,
            iteration=self.iteration,
            best_miou=best.get("miou"),
            best_iteration=best.get("iteration"),
            last_val=self.selection.last_val,
            history=history,
        )


def _stop_if_diverged(loss: torch.Tensor, rt: Runtime, iteration: int, latest: Path) -> None:
    """Stop on a loss that is not finite (on any rank) before it reaches the weights."""
    bad = torch.tensor([0.0 if torch.isfinite(loss) else 1.0], device=rt.device)
    if rt.distributed:
        dist.all_reduce(bad, op=dist.ReduceOp.MAX)
    if bad.item() > 0:
        raise TrainingDivergedError(
            f"the loss became {loss.item()} at iteration {iteration + 1}; "
            f"{latest} keeps the last good state: lower --lr or use --amp none"
        )


def _rng_state() -> dict[str, Any]:
    """The global RNG states a resumed run continues from."""
    rng: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return rng


def _restore_rng(rng: dict[str, Any]) -> None:
    if "torch" in rng:
        torch.set_rng_state(rng["torch"])
    if (
        "cuda" in rng
        and torch.cuda.is_available()
        and len(rng["cuda"]) == torch.cuda.device_count()
    ):
        torch.cuda.set_rng_state_all(rng["cuda"])


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during a run; the message says how to go on (resume, or start again)."""


def run_training(
    overrides: dict[str, Any],
    config_file: str | None,
    resume: bool,
    overwrite: bool,
    progress: bool,
    threads: int | None = None,
) -> tuple[Trainer, TrainResult]:
    """``cloudcps train``: resolve the configuration (defaults < the checkpoint's when
    resuming < ``config_file`` < ``overrides``), train, and return the trainer and its result.
    ``threads`` caps the CPU threads of the process. Ctrl-C once the run has started raises
    :class:`TrainingInterrupted`."""
    if threads is not None:
        torch.set_num_threads(threads)
    cfg, state = resolve_config(overrides, config_file, resume)
    check_config_file(config_file, Path(cfg.out))
    try:
        trainer = Trainer(cfg, resume_state=state, overwrite=overwrite, progress=progress)
        return trainer, trainer.fit()
    except KeyboardInterrupt:
        raise TrainingInterrupted(interrupted_message(Path(cfg.out))) from None
