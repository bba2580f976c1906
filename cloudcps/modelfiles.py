"""Where model files are found: a run folder's best.pt, a checkpoint file, or ``default`` (the
starter cloud model that ships inside the package). Imported by both :mod:`cloudcps.models` and
:mod:`cloudcps.predict.backends`, so neither needs the other at import time."""

from __future__ import annotations

import os
from pathlib import Path

from cloudcps.errors import InputError

DEFAULT_MODEL = "default"
DEFAULT_MODEL_FILE = "starter.pt"


def default_model_path() -> Path:
    """The starter cloud model that ships inside the package (``--model default``)."""
    from importlib.resources import files

    path = Path(str(files("cloudcps") / "weights" / DEFAULT_MODEL_FILE))
    if not path.is_file():
        raise InputError(
            f"the default model {path} is not installed; reinstall cloudcps, or give --model "
            "RUN_OR_CKPT"
        )
    return path


def resolve_checkpoint(
    path: str | os.PathLike[str], prefer: str = "best.pt", option: str = "--model"
) -> Path:
    """A checkpoint file, ``prefer`` (then ``latest.pt``) inside a run folder, or ``default``
    (the starter model that ships with cloudcps); ``option`` names it in errors."""
    if str(path) == DEFAULT_MODEL and not Path(path).exists():
        return default_model_path()
    p = Path(path)
    if p.is_dir():
        for name in (prefer, "latest.pt", "best.pt"):
            if (p / name).is_file():
                return p / name
        raise InputError(f"{option} {p} holds no best.pt or latest.pt; give a run folder or a .pt")
    if not p.is_file():
        raise InputError(f"{option} {p} does not exist; give a run folder or a checkpoint file")
    if p.suffix.lower() == ".onnx":
        raise InputError(
            f"{option} {p} is an ONNX graph; {option} takes a run folder, a checkpoint (.pt) of "
            "cloudcps train (best.pt, latest.pt) or default (a graph is made from the checkpoint, "
            "and NAME.onnx beside NAME.pt is used when it holds that checkpoint's weights)"
        )
    return p
