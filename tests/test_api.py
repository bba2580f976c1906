"""The public API: every name ``cloudcps`` exports resolves, importing it is cheap, and the
README's Python example runs as written (on generated scenes, with a 2-iteration schedule)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio

from tests.conftest import scene_pair

ROOT = Path(__file__).resolve().parents[1]


def readme_python_example() -> str:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Python API") :]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "README's Python API section has no python block"
    return match.group(1)


def test_every_public_name_resolves() -> None:
    import cloudcps

    for name in cloudcps.__all__:
        assert getattr(cloudcps, name) is not None, name
    assert set(cloudcps.__all__) <= set(dir(cloudcps))
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        cloudcps.nope  # noqa: B018


def test_importing_the_package_is_cheap() -> None:
    code = "import sys, cloudcps; print('torch' in sys.modules, 'rasterio' in sys.modules)"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["False", "False"]


def test_the_readme_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for i, name in enumerate("abcd"):
        scene_pair(tmp_path, name, 128, 128, seed=i, x0=500000.0 + 1e4 * i)
    (tmp_path / "masks").mkdir()
    code = readme_python_example()
    # the same calls on a schedule a test can afford: small tiles, 2 iterations, a tiny encoder
    for old, new in [
        ("tile_size=512", "tile_size=64"),
        (
            "iters=2000",
            "iters=2, eval_every=2, encoder='resnet18', encoder_weights='none', crop=64, "
            "batch_size=2, device='cpu', workers=0",
        ),
    ]:
        assert old in code, old
        code = code.replace(old, new)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CLOUDCPS_CACHE", str(tmp_path / "cache"))
    namespace: dict[str, object] = {}
    exec(compile(code, "README.md", "exec"), namespace)
    with (
        rasterio.open(tmp_path / "masks" / "d.tif") as mask,
        rasterio.open(tmp_path / "scenes" / "d.tif") as scene,
    ):
        assert mask.crs == scene.crs and mask.transform == scene.transform
        assert mask.shape == scene.shape
    classes = namespace["classes"]
    probabilities = namespace["probabilities"]
    assert isinstance(classes, np.ndarray) and classes.shape == (128, 128)
    assert isinstance(probabilities, np.ndarray) and probabilities.shape == (4, 128, 128)
    assert (tmp_path / "tiles" / "manifest.json").exists()
    assert (tmp_path / "runs" / "cps" / "latest.pt").exists()
