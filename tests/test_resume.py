"""Exact resume after SIGKILL, one writer per directory, atomic and validated checkpoints.

The kill test runs the real training in subprocesses (``tests/train_driver.py``), kills them with SIGKILL in the
middle of an epoch (one batch after a step checkpoint, so the resumed run must replay that batch), reruns the same
command, and compares weights and metrics bit for bit with an uninterrupted run. The model uses dropout and
flips, so every random state has to be restored, not only the data order.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

from ris_models.training import train

ROOT = Path(__file__).resolve().parents[1]
DRIVER = ROOT / "tests" / "train_driver.py"
# 20 train refs / batch 3 = 7 batches per epoch, 3 epochs = 21 steps; a step checkpoint every 2 steps
STEPS_PER_EPOCH, EPOCHS = 7, 3


def _overrides(data: dict, out: Path, *extra: str) -> list[str]:
    return ["dataset=synthref", f"dataset.name={data['dataset']}", f"data_root={data['data_root']}",
            "model=cris_tiny", "model.input_size=32", "+model.dropout=0.1", "trainer=cpu",
            "trainer.enable_progress_bar=false", "logger=none", "batch_size=3", "eval_batch_size=8",
            f"epochs={EPOCHS}", "lr=3e-3", "hflip_prob=0.5", "num_overlays=0", "checkpoint_every_n_steps=2",
            f"output_dir={out}", *extra]


def _cfg(overrides: list[str]):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}


def _start(steps: Path, pause_at: int, overrides: list[str]) -> subprocess.Popen:
    # output to files, not pipes: a full pipe would block the driver
    with open(f"{steps}.out", "w") as out, open(f"{steps}.err", "w") as err:
        return subprocess.Popen([sys.executable, str(DRIVER), str(steps), str(pause_at), *overrides], env=_env(),
                                stdout=out, stderr=err, text=True)


def _kill_when_paused(proc: subprocess.Popen, steps: Path, timeout: float = 900.0) -> None:
    marker = Path(f"{steps}.paused")
    deadline = time.monotonic() + timeout  # generous: only a broken driver gets anywhere near it
    while not marker.exists():
        if proc.poll() is not None:
            raise AssertionError(f"driver exited before the kill point:\n{Path(f'{steps}.err').read_text()[-3000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("driver never reached the kill point")
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    marker.unlink()
    assert proc.returncode == -signal.SIGKILL


def _trained_steps(steps: Path) -> list[int]:
    return [json.loads(line)["step"] for line in steps.read_text().splitlines()] if steps.exists() else []


def _ckpt(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def _max_abs_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) if a[k].numel() else 0.0 for k in a)


def test_sigkill_mid_epoch_then_same_command_gives_identical_weights_and_metrics(tiny_ris_data, tmp_path):
    total = STEPS_PER_EPOCH * EPOCHS
    # uninterrupted reference (in this process; same thread count as the driver)
    ref_out = tmp_path / "reference"
    reference = train(_cfg(_overrides(tiny_ris_data, ref_out)))
    assert reference["global_step"] == total
    ref_metrics = json.loads((ref_out / "checkpoints" / "metrics_tinyref.json").read_text())["splits"]
    assert any(v["mIoU"] > 0 for v in ref_metrics.values())  # the comparison below is not between zeros

    out, steps = tmp_path / "killed", tmp_path / "steps.jsonl"
    overrides = _overrides(tiny_ris_data, out)
    # kill 1: epoch 1, batch 6 of 7, one batch after the step-4 checkpoint
    _kill_when_paused(_start(steps, 5, overrides), steps)
    assert _ckpt(out / "checkpoints" / "last.ckpt")["global_step"] == 4
    assert not (out / "finished.json").exists()
    assert _trained_steps(steps) == [0, 1, 2, 3, 4]
    # kill 2 in the rerun of the same command: epoch 3, batch 4 of 7, after the step-16 checkpoint
    _kill_when_paused(_start(steps, 17, overrides), steps)
    assert _trained_steps(steps)[5:] == list(range(4, 17))  # continued at the checkpoint's next batch
    # the same command again: finishes
    proc = _start(steps, -1, overrides)
    proc.wait(timeout=900)
    assert proc.returncode == 0, Path(f"{steps}.err").read_text()[-3000:]
    assert _trained_steps(steps)[18:] == list(range(16, total))
    resumed_metrics = json.loads(Path(f"{steps}.out").read_text().strip().splitlines()[-1])["results"]

    for name in ("last.ckpt", "best.ckpt"):
        ref, got = _ckpt(ref_out / "checkpoints" / name), _ckpt(out / "checkpoints" / name)
        assert got["global_step"] == ref["global_step"]
        assert _max_abs_diff(ref["state_dict"], got["state_dict"]) == 0.0, name
    assert resumed_metrics == ref_metrics
    assert json.loads((out / "checkpoints" / "metrics_tinyref.json").read_text())["splits"] == ref_metrics

    # a finished run never trains again: the same command only re-evaluates, last.ckpt is untouched
    before = (out / "checkpoints" / "last.ckpt").read_bytes()
    again = train(_cfg(overrides))
    assert again["global_step"] == total and again["train_seconds"] == 0.0
    assert (out / "checkpoints" / "last.ckpt").read_bytes() == before
    assert again["results"] == ref_metrics
