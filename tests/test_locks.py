"""One writer per output directory: a second process is refused at once, naming the holder; nothing is written."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pseudo_ris.data.locks import DirectoryInUse, directory_lock, file_lock

ROOT = Path(__file__).resolve().parents[1]
HOLD = ("import sys, time; from pseudo_ris.data.locks import directory_lock\n"
        "with directory_lock(sys.argv[1]):\n"
        "    open(sys.argv[2], 'w').close(); time.sleep(120)\n")


@pytest.fixture
def held_dir(tmp_path):
    """A directory whose lock another process holds (its pid is yielded)."""
    target, ready = tmp_path / "out", tmp_path / "ready"
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(target), str(ready)],
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    deadline = time.monotonic() + 60
    while not ready.exists():
        assert proc.poll() is None and time.monotonic() < deadline, "lock holder did not start"
        time.sleep(0.02)
    yield target, proc.pid
    proc.kill()
    proc.wait()


def test_second_writer_is_refused_with_the_holders_pid_and_command(held_dir, tiny_ris_data):
    target, pid = held_dir
    with pytest.raises(DirectoryInUse, match=rf"{target} is in use by pid {pid} \(.*python.* -c .*\)"):
        with directory_lock(target):
            pass
    # training: refused before anything is written into the directory
    from test_train import _train_cfg

    from ris_models.training import train

    with pytest.raises(DirectoryInUse, match=f"pid {pid}"):
        train(_train_cfg(tiny_ris_data, target))
    assert sorted(p.name for p in target.iterdir()) == [".lock"]
    # generation and SynthRef builds into the same directory
    from pseudo_ris.generation.runner import run
    from pseudo_ris.synthref.build import build_synthref

    with pytest.raises(DirectoryInUse, match=f"pid {pid}"):
        run({"out_dir": str(target), "stage": "all", "allow_download": True})
    with pytest.raises(DirectoryInUse, match=f"pid {pid}"):
        run({"out_dir": str(target), "stage": "generate", "shard": 1, "num_shards": 2, "allow_download": True})
    with pytest.raises(DirectoryInUse, match=f"pid {pid}"):
        build_synthref(target, num_images=2, pool_images=1, progress=False)
    assert sorted(p.name for p in target.iterdir()) == [".lock"]


def test_train_cli_second_writer_exits_2_with_one_line(held_dir, tiny_ris_data):
    target, pid = held_dir
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "train.py"), f"output_dir={target}",
                           f"data_root={tiny_ris_data['data_root']}", f"dataset.name={tiny_ris_data['dataset']}"],
                          capture_output=True, text=True, timeout=900,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "WANDB_MODE": "offline"})
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {target} is in use by pid {pid} (")


def test_lock_is_released_when_the_holder_dies_and_is_reentrant_in_one_process(tmp_path):
    target = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(target), str(tmp_path / "ready")],
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    while not (tmp_path / "ready").exists():
        time.sleep(0.02)
    with file_lock(target / ".lock", blocking=False) as mine:
        assert mine is False
    proc.kill()  # SIGKILL: no cleanup code runs, the kernel drops the lock
    proc.wait()
    with directory_lock(target):
        with directory_lock(target):  # nested in one process (a reproduction run training into its directory)
            pass
        with file_lock(target / ".lock", blocking=False) as mine:
            assert mine is True
