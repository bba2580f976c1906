"""Fault injection, second hostile-input run: ``train`` (issue 17, points 1, 2, 5, 6, 7, 8).

Each case runs the real command line and checks exit status, one error line with the expected
words, and that inputs and unrelated files are byte-identical afterwards.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cloudcps.locks import LOCK_NAME, RunLock
from tests.conftest import cli_in_small_fs, scene_pair
from tests.test_faults import _train_args, fails, run, snapshot, tile_args

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def trained(tiles: Path, tmp_path: Path) -> Path:
    out = tmp_path / "R"
    r = run(*_train_args(tiles, out))
    assert r.exit_code == 0, r.output
    return out


# ---- 1. what --overwrite may replace, and inputs inside the run folder -----------------------


def test_init_from_the_run_it_would_overwrite_is_refused(trained: Path, tiles: Path) -> None:
    args = _train_args(tiles, trained, "--overwrite", "--init", str(trained))
    fails(trained.parent, args, "is in --out")
    assert (trained / "best.pt").is_file() and (trained / "latest.pt").is_file()


def test_encoder_weights_from_the_run_it_would_overwrite_is_refused(
    trained: Path, tiles: Path
) -> None:
    args = _train_args(tiles, trained, "--overwrite")
    args[args.index("--encoder-weights") + 1] = str(trained / "best.pt")
    fails(trained.parent, args, "--encoder-weights")


@pytest.mark.parametrize("name", ["latest.pt", "metrics.jsonl", "config.yaml"])
def test_overwrite_refuses_run_files_another_tool_wrote(
    trained: Path, tiles: Path, name: str
) -> None:
    foreign = trained / name
    if name == "latest.pt":
        torch.save({"epoch": 3, "weights": torch.zeros(3)}, foreign)  # another trainer's
    elif name == "metrics.jsonl":
        foreign.write_text("step,loss\n1,0.5\n")
    else:
        foreign.write_text("# my experiment\nlearning_rate: 0.1\nmodel: unet\n")
    msg = fails(trained.parent, _train_args(tiles, trained, "--overwrite"), name)
    assert "not written by cloudcps" in msg


def test_overwrite_replaces_its_own_run_and_keeps_other_files(trained: Path, tiles: Path) -> None:
    (trained / "notes.txt").write_text("mine")
    r = run(*_train_args(tiles, trained, "--overwrite"))
    assert r.exit_code == 0, r.output
    assert (trained / "notes.txt").read_text() == "mine"


def test_a_config_inside_the_run_folder_is_never_rewritten(tiles: Path, tmp_path: Path) -> None:
    out = tmp_path / "X"
    out.mkdir()
    cfg = out / "config.yaml"
    cfg.write_text("# my commented config\niters: 2  # short\n")
    fails(tmp_path, [*_train_args(tiles, out), "--config", cfg], "copy it out of the run folder")


@pytest.mark.parametrize("where", ["same", "inside"])
def test_out_may_not_overlap_the_data(tiles: Path, tmp_path: Path, where: str) -> None:
    out = tiles if where == "same" else tiles / "run"
    fails(tmp_path, _train_args(tiles, out), "overlap")


# ---- 2. one writer per run folder --------------------------------------------------------------


def test_a_run_folder_in_use_is_refused(tiles: Path, tmp_path: Path) -> None:
    out = tmp_path / "R"
    with RunLock(out):  # another run holds the folder (a real flock)
        msg = fails(tmp_path, _train_args(tiles, out), "in use by another cloudcps run")
        assert f"pid {os.getpid()}" in msg
    r = run(*_train_args(tiles, out))  # released: now it runs
    assert r.exit_code == 0, r.output
    assert not (out / LOCK_NAME).exists()


def test_two_train_processes_into_one_folder_never_both_run(tiles: Path, tmp_path: Path) -> None:
    out = tmp_path / "R"
    args = [str(a) for a in _train_args(tiles, out, "--iters", "6", "--eval-every", "3")]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "cloudcps.cli.main", "-q", *args]
    procs = [subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read() if p.stderr else "") for p in procs]
    assert sorted(code for code, _ in results) == [0, 1], results
    err = next(e for code, e in results if code == 1)
    assert "Traceback" not in err and err.count("Error: ") == 1, err
    assert "in use by another cloudcps run" in err or "already holds a run" in err, err
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    iters = [r["iter"] for r in rows if "event" not in r]
    assert iters == sorted(set(iters)), iters  # one run's rows, not two interleaved


def test_a_lock_left_by_a_killed_run_is_recognised_as_stale(tiles: Path, tmp_path: Path) -> None:
    out = tmp_path / "R"
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from cloudcps.locks import RunLock; lock = RunLock(sys.argv[1]); "
         "lock.acquire(); "
         "print('held', flush=True); time.sleep(60)", str(out)],
        env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    fails(tmp_path, _train_args(tiles, out), "in use by another cloudcps run")
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=30)
    assert (out / LOCK_NAME).exists()  # what the kill left
    r = run(*_train_args(tiles, out))
    assert r.exit_code == 0, r.output


# ---- 5. a validation split of partial labels (the README's coarse-label flow) ------------------


def test_validation_on_partial_labels_scores_the_groups_and_writes_best(tmp_path: Path) -> None:
    data = tmp_path / "data"
    scene_pair(data, "a", 96, 96)
    scene_pair(data, "b", 96, 96, seed=1, x0=600000.0)
    tiles = tmp_path / "tiles"
    args = tile_args(data, tiles, "--val", "b")
    args[args.index("--label-map") + 1] = "128:0|3,64:0|3,255:1|2,192:1|2"
    assert run(*args).exit_code == 0
    out = tmp_path / "run"
    r = run(*_train_args(tiles, out))
    assert r.exit_code == 0, r.output
    assert "by groups of the partial labels" in r.output, r.output
    assert "clear+cloud shadow" in r.output
    assert (out / "best.pt").is_file()


# ---- 6. paths outside the data -----------------------------------------------------------------


@pytest.mark.parametrize("kind", ["absolute", "dotdot", "symlink"])
def test_tile_paths_out_of_the_tile_folder_are_refused(
    tiles: Path, tmp_path: Path, kind: str
) -> None:
    secret = tmp_path / "secret.png"
    first = sorted((tiles / "images").iterdir())[0]
    secret.write_bytes(first.read_bytes())
    manifest = json.loads((tiles / "manifest.json").read_text())
    tile = manifest["tiles"][0]
    if kind == "absolute":
        tile["image"] = str(secret)
    elif kind == "dotdot":
        tile["image"] = "../secret.png"
    else:
        target = tiles / tile["image"]
        target.unlink()
        target.symlink_to(secret)
    (tiles / "manifest.json").write_text(json.dumps(manifest))
    expect = "leads out of the tile folder" if kind == "symlink" else "not a path inside"
    fails(tmp_path, _train_args(tiles, tmp_path / "run"), expect)


# ---- 7. a real full disk during a checkpoint save ----------------------------------------------


def test_a_real_full_disk_during_a_checkpoint_save(tiles: Path, tmp_path: Path) -> None:
    small = tmp_path / "small"
    before = snapshot(tiles)
    args = [str(a) for a in _train_args(tiles, small / "run")]
    code, out, err = cli_in_small_fs(small, 600, args)  # a checkpoint is ~100 MB: it cannot fit
    assert code == 1, (out, err)
    lines = [ln for ln in err.splitlines() if "Error: " in ln]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert "No space left on device" in lines[0] and ".pt; " in lines[0], err
    assert "free some space" in lines[0]
    assert "enforce fail" not in err
    left = out.split("--- left:", 1)[1]
    assert ".tmp-" not in left and LOCK_NAME not in left, left
    assert snapshot(tiles) == before


# ---- 8. early and clear checks -------------------------------------------------------------------


def test_a_missing_tile_image_is_found_before_training(tiles: Path, tmp_path: Path) -> None:
    lost = sorted((tiles / "images").iterdir())[-1]
    lost.unlink()
    out = tmp_path / "run"
    msg = fails(tmp_path, _train_args(tiles, out, "--iters", "1"), lost.name)
    assert "is missing" in msg
    assert not out.exists()


def test_a_failed_init_leaves_no_run_folder(tiles: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    fails(tmp_path, _train_args(tiles, out, "--init", str(tmp_path / "nope.pt")), "nope.pt")
    assert not out.exists()


@pytest.mark.parametrize("kind", ["onnx", "pickle"])
def test_init_with_a_file_that_is_not_a_checkpoint(tiles: Path, tmp_path: Path, kind: str) -> None:
    bad = tmp_path / ("model.onnx" if kind == "onnx" else "model.pt")
    if kind == "onnx":
        bad.write_bytes(b"\x08\x07\x12\x07pytorch" + bytes(200))
    else:
        torch.save({"x": Path("/etc")}, bad)  # a pickle of an arbitrary class
    msg = fails(tmp_path, _train_args(tiles, tmp_path / "run", "--init", str(bad)), bad.name)
    assert "weights_only" not in msg and "best.pt" in msg


def test_a_file_system_without_flock_falls_back_to_a_pid_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno
    import fcntl

    def no_flock(fd: int, op: int) -> None:
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_flock)
    first = RunLock(tmp_path / "R")
    first.acquire()
    with pytest.raises(Exception, match="in use by another cloudcps run"):
        RunLock(tmp_path / "R").acquire()
    first.release()
    assert not (tmp_path / "R" / LOCK_NAME).exists()
    (tmp_path / "R" / LOCK_NAME).write_text("")  # what a crash between create and write left
    again = RunLock(tmp_path / "R")
    again.acquire()
    again.release()


def test_workers_forked_by_a_killed_run_do_not_keep_its_folder_locked(tmp_path: Path) -> None:
    out = tmp_path / "R"
    script = (
        "import os, sys, time; from cloudcps.locks import RunLock; lock = RunLock(sys.argv[1]); "
        "lock.acquire(); pid = os.fork()\n"
        "if pid == 0: time.sleep(30); os._exit(0)\n"
        "print(pid, flush=True); time.sleep(60)"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", script, str(out)],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None
    child = int(holder.stdout.readline())
    try:
        with pytest.raises(Exception, match="in use"):
            RunLock(out).acquire()
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
        lock = RunLock(out)  # the forked child still runs, but holds no lock
        lock.acquire()
        lock.release()
    finally:
        os.kill(child, signal.SIGKILL)


def test_a_foreign_config_in_the_run_folder_is_not_replaced(tiles: Path, tmp_path: Path) -> None:
    out = tmp_path / "R"
    out.mkdir()
    (out / "config.yaml").write_text("# my plan for this run\niters: 5000\nlr: 0.02\n")
    msg = fails(tmp_path, _train_args(tiles, out), "config.yaml")
    assert "not written by cloudcps train" in msg
