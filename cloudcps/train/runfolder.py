"""The run folder (``--out``): who may write it, what it may replace, and how a run resumes.

One training process writes a run folder, under a lock, from the start of the run to the end
of ``fit()``. A new run refuses a folder that holds another run (unless ``--overwrite``), a
file it did not write, or an input of the run; ``--overwrite`` replaces only files cloudcps
train wrote (checked by content). Resuming takes the configuration saved in ``latest.pt``: the
options the saved networks, optimiser state and data pipeline were built with
(:data:`RESUME_FIXED`) cannot change.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
from pathlib import Path
from typing import Any

from cloudcps.contract import DataContract
from cloudcps.errors import InputError
from cloudcps.io import check_folder_path, contains, remove_stale_temps
from cloudcps.locks import RunLock
from cloudcps.models import GROUP_NORM_SUFFIX, ModelSpec, load_checkpoint
from cloudcps.train.config import (
    CONFIG_HEADER,
    TrainConfig,
    config_from_dict,
    load_config,
)

RUN_FILES = ("latest.pt", "best.pt", "metrics.jsonl", "config.yaml", "tb")


def _written_by_train(path: Path) -> bool:
    """Whether a run file was written by cloudcps train (checked by content, not name)."""
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

            text = path.read_text()
            data = yaml.safe_load(text)
            fields = {f.name for f in dataclasses.fields(TrainConfig)}
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
            base = config_from_dict({**BEFORE_DEFAULTS, **state["config"]})
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


# options whose default changed: a run saved before they existed resumes as it was trained
BEFORE_DEFAULTS: dict[str, Any] = {"trust_labels": False}

RESUME_FIXED = ("mode", "arch", "encoder", "optimizer", "encoder_norm", "ema", "synthetic_clouds",
                "synthetic_thin_alpha", "paste_clouds", "pseudo_labels", "crop")  # fmt: skip


def _check_init_spec(init: str, overrides: dict[str, Any]) -> None:
    """--init takes its networks from a checkpoint: an --arch or --encoder that differs from
    the checkpoint's would be ignored, so it is refused; the one exception is the checkpoint's
    architecture plus ``-gn`` (its decoder's BatchNorm converted to GroupNorm)."""
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
        if key == "arch" and str(value) == spec.arch + GROUP_NORM_SUFFIX:
            continue
        if str(value) != str(getattr(spec, key)):
            gn = spec.arch + GROUP_NORM_SUFFIX
            hint = f"; --arch {gn} converts its decoder to GroupNorm" if key == "arch" else ""
            raise InputError(
                f"--init {init} is a {spec.arch} with encoder {spec.encoder}, not --{key} "
                f"{value}; drop --{key} (fine-tuning keeps the checkpoint's networks{hint}) or "
                "train without --init"
            )


def check_config_file(config_file: str | None, out: Path) -> None:
    """``--config`` must not be a file the run writes (its resolved config.yaml would replace
    the user's)."""
    if config_file is None:
        return
    written = [out / name for name in RUN_FILES]
    if any(w.exists() and os.path.samefile(config_file, w) for w in written):
        raise InputError(
            f"--config {config_file} is a file this run writes in --out {out} (its "
            "resolved config.yaml would replace yours): copy it out of the run folder first"
        )


def check_resumed_classes(state: dict[str, Any], contract: DataContract, out: Path) -> None:
    """A run resumes on data of the classes it was trained for."""
    saved = DataContract.from_dict(state["contract"]).classes
    if tuple(saved) != tuple(contract.classes):
        raise InputError(
            f"{out / 'latest.pt'} was trained for classes {list(saved)} but the data "
            f"has {list(contract.classes)}; start a new run (another --out)"
        )


def trim_metrics(out: Path, iteration: int) -> None:
    """Drop the metrics rows past the checkpoint a run resumes from: they belong to the
    interrupted tail."""
    mpath = out / "metrics.jsonl"
    if not mpath.exists():
        return
    keep = []
    for line in mpath.read_text(errors="replace").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue  # a line torn by a kill (or anything not ours): dropped
        if isinstance(row, dict) and int(row.get("iter", 0) or 0) <= iteration:
            keep.append(line)
    mpath.write_text("".join(r + "\n" for r in keep))


def interrupted_message(out: Path) -> str:
    """What to do after Ctrl-C: resume from latest.pt, or start again when there is none."""
    latest = out / "latest.pt"
    if latest.is_file():
        return f"interrupted; {latest} holds the last saved iteration: continue with --resume"
    return (
        f"interrupted before the first checkpoint; nothing to resume in {out}: start "
        "again with --overwrite"
    )


class RunFolder:
    """The run folder of one training process: checked, locked, cleared for a new run, and
    released (removed again when a failed start created it).

    Args:
        cfg: the resolved configuration (``cfg.out`` is the folder; ``--data``, ``--voc``,
            ``--init`` and ``--encoder-weights`` are the inputs it must not hold).
    """

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg
        self.out = Path(cfg.out)
        self.lock: RunLock | None = None
        self.created = False

    def claim(self, resuming: bool, overwrite: bool) -> None:
        """Check the folder (nothing is changed before), then take it: one writer per run
        folder, from here to the end of fit()."""
        self._check_out(resuming, overwrite)
        self.created = not self.out.exists()
        self.lock = RunLock(self.out)
        self.lock.acquire()
        # what a SIGKILL of an earlier run left (checkpoints, metrics, config being written)
        remove_stale_temps([self.out / n for n in ("latest.pt", "best.pt", "config.yaml")])

    def release(self) -> None:
        """Let another process write the folder."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def abandon(self) -> None:
        """Release the folder after a failed start; a folder the start created goes too."""
        self.release()
        if self.created:
            with contextlib.suppress(OSError):
                self.out.rmdir()  # a failed start leaves no empty run folder behind

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
            self._check_inputs_not_replaced()
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

    def _check_inputs_not_replaced(self) -> None:
        """A new run replaces the run files of ``--out``: ``--init`` and ``--encoder-weights``
        must not be among them."""
        out, cfg = self.out, self.cfg
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

    def owned_files(self) -> list[Path]:
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

    def start_fresh(self, owned: list[Path]) -> None:
        """Remove the ``owned`` files of an earlier run (--overwrite), then check that no run
        file is left."""
        for path in owned:
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        self._check_fresh()

    def _check_fresh(self) -> None:
        """A new run starts in a folder without run files (a run that appeared meanwhile, or
        one another tool left, is not appended to)."""
        left = [n for n in ("latest.pt", "best.pt", "metrics.jsonl") if (self.out / n).exists()]
        if left:
            raise InputError(
                f"--out {self.out} holds {left[0]} of another run; choose another --out"
            )
