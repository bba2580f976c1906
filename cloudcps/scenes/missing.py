"""The one check for files given on the command line that do not exist: every missing one is
named at once, before any work. ``tile`` and ``predict`` name scenes
(:func:`check_scenes_exist`); ``evaluate`` names its option values, ``--pred`` and ``--ref``
(:func:`check_options_exist`)."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

from cloudcps.errors import InputError
from cloudcps.io import is_virtual_path

PathLike = str | os.PathLike[str]


def _missing(groups: Sequence[tuple[str, Sequence[PathLike]]]) -> list[tuple[str, Path]]:
    """``(option, path)`` of every path that does not exist, in the order given; GDAL virtual
    names (``/vsizip/...``) are left to GDAL."""
    return [
        (opt, Path(p))
        for opt, group in groups
        for p in group
        if not is_virtual_path(p) and not Path(p).exists()
    ]


def _shown(missing: list[tuple[str, Path]], name: Callable[[str, Path], str]) -> str:
    """The first five named, then how many more."""
    shown = ", ".join(name(o, p) for o, p in missing[:5])
    if len(missing) > 5:
        shown += f" and {len(missing) - 5} more"
    return shown


def check_scenes_exist(
    scenes: Sequence[PathLike],
    command: str,
    others: Sequence[tuple[str, Sequence[PathLike]]] = (),
    consequence: str = "",
) -> None:
    """Name every scene that does not exist (a typo, a shell pattern that matched no file) at
    once, before any work; GDAL virtual names (``/vsizip/...``) are left to GDAL.

    Args:
        scenes: the scenes given as arguments of ``cloudcps COMMAND``; one that starts with
            ``-`` is an option given after ``--``, which is said first.
        others: ``(option, paths)`` of scenes given through an option (tile's ``--clear``).
        consequence: said after the fix (``" (nothing was tiled)"``).
    """
    missing = _missing((("scene", scenes), *others))
    if not missing:
        return
    dashed = next((str(p) for opt, p in missing if opt == "scene" and str(p).startswith("-")), "")
    if dashed:
        raise InputError(
            f"scene {dashed} does not exist: after -- every argument is a scene, options "
            f"too; give the options before --, e.g. cloudcps {command} --out DIR -- "
            f"-name.tif"
        )

    def name(opt: str, p: Path) -> str:
        prefix = "" if opt == "scene" else f"{opt} "
        if any(c in p.name for c in "*?["):
            return f"{prefix}{p} (a pattern that matched no file)"
        return f"{prefix}{p}"

    shown = _shown(missing, name)
    if len(missing) == 1:
        raise InputError(f"scene {shown} does not exist; check the path{consequence}")
    raise InputError(f"{len(missing)} scenes do not exist: {shown}; check the paths{consequence}")


def check_options_exist(
    groups: Sequence[tuple[str, Sequence[PathLike]]], consequence: str = ""
) -> None:
    """Name every file given through an option that does not exist, each after its option, at
    once, before any work: ``--pred a.tif, --ref b.tif do not exist; check the paths``.

    Args:
        groups: ``(option, paths)``, e.g. ``[("--pred", preds), ("--ref", refs)]``.
        consequence: said after the fix (``" (nothing was scored)"``).
    """
    missing = _missing(groups)
    if missing:
        shown = _shown(missing, lambda opt, p: f"{opt} {p}")
        verb = "does" if len(missing) == 1 else "do"
        raise InputError(f"{shown} {verb} not exist; check the paths{consequence}")
