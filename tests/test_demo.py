"""`cloudcps demo --quick` runs the whole pipeline offline; the README's commands parse."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import rasterio
from click.testing import CliRunner

from cloudcps.cli.main import cli

ROOT = Path(__file__).resolve().parents[1]


def test_quick_demo_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    r = CliRunner().invoke(cli, ["-q", "demo", "--quick", "--out", str(out), "--device", "cpu"])
    assert r.exit_code == 0, r.output
    masks = sorted(out.glob("masks/*/*mask*.tif"))
    assert len(masks) == 2
    scene = next(out.glob("scenes/images/*.tif"))
    with rasterio.open(masks[0]) as m, rasterio.open(scene) as s:
        assert m.crs == s.crs and m.crs is not None
    report = json.loads((out / "report" / "report.json").read_text())
    assert set(report["results"]) == {"supervised", "cps"}
    assert (out / "report" / "samples.png").stat().st_size > 0
    assert "IoU % on the held-out scene" in r.output and "supervised" in r.output
    r = CliRunner().invoke(cli, ["-q", "demo", "--quick", "--out", str(out)])
    assert r.exit_code == 1 and "already exists" in r.output


def _readme_commands() -> list[list[str]]:
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```(?:bash|sh|console)?\n(.*?)```", text, flags=re.S)
    commands = []
    for block in blocks:
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = line.strip().lstrip("$ ").strip()
            for part in re.split(r"&&|\|", line):
                words = shlex.split(part.strip(), comments=True)
                if words and words[0].endswith("cloudcps") and len(words) > 1:
                    commands.append(words[1:])
    return commands


def test_readme_commands_parse() -> None:
    commands = _readme_commands()
    assert {c[0] for c in commands if not c[0].startswith("-")} >= {
        "tile",
        "train",
        "predict",
        "evaluate",
        "demo",
    }
    for args in commands:
        args = [a for a in args]
        while args and args[0] in ("-q", "-v", "--quiet", "--verbose"):
            args.pop(0)
        if args[0] in ("--help", "--version"):
            continue
        sub = cli.commands[args[0]]
        # parsing runs every option's conversion: an unknown option or a bad value raises
        sub.make_context(args[0], list(args[1:]))


def test_held_out_scene_has_every_class(tmp_path: Path) -> None:
    import numpy as np
    from rasterio.transform import from_origin

    from cloudcps.demo import held_out_index

    def label(name: str, classes: list[int]) -> tuple[Path, Path]:
        a = np.zeros((40, 40), np.uint8)
        for k, c in enumerate(classes):
            a[k * 10 : (k + 1) * 10] = c
        path = tmp_path / name
        profile = {"driver": "GTiff", "height": 40, "width": 40, "count": 1, "dtype": "uint8"}
        with rasterio.open(path, "w", **profile, transform=from_origin(0, 0, 1, 1)) as dst:
            dst.write(a, 1)
        return path, path

    pairs = [label("a.tif", [0, 1, 2, 3]), label("b.tif", [0, 1, 2, 3]), label("c.tif", [0, 1])]
    assert held_out_index(pairs, 4) == 1  # the last scene with all four classes
    pairs = [label("d.tif", [0, 1, 3]), label("e.tif", [0, 255]), label("f.tif", [0, 1])]
    assert held_out_index(pairs, 4) == 0  # else the one with the most classes
