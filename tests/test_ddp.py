"""DDP: RISMetrics synced over 2 CPU processes (gloo) equals 1 process seeing all predictions."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ris_models.metrics import METRIC_KEYS, RISMetrics


def _random_masks(seed: int, n: int = 24, size: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    preds = torch.rand(n, size, size, generator=g) > 0.55
    targets = torch.rand(n, size, size, generator=g) > 0.5
    preds[0] = False
    targets[0] = False  # one empty-vs-empty sample
    preds[1] = targets[1]  # one perfect sample
    return preds, targets


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, queue) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        preds, targets = _random_masks(0)
        metric = RISMetrics()
        # uneven split and several updates per rank: rank 0 gets samples 0..14, rank 1 gets 15..23
        idx = list(range(0, 15)) if rank == 0 else list(range(15, 24))
        for chunk in (idx[: len(idx) // 2], idx[len(idx) // 2:]):
            metric.update(preds[chunk], targets[chunk])
        out = {k: float(v) for k, v in metric.compute().items()}
        if rank == 0:
            queue.put(out)
    finally:
        dist.destroy_process_group()


def test_two_process_sync_equals_single_process():
    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    mp.start_processes(_worker, args=(2, _free_port(), queue), nprocs=2, join=True, start_method="spawn")
    synced = queue.get()

    single = RISMetrics()
    single.update(*_random_masks(0))
    expected = {k: float(v) for k, v in single.compute().items()}
    assert set(synced) == set(METRIC_KEYS)
    for key in METRIC_KEYS:
        assert synced[key] == pytest.approx(expected[key], abs=1e-12), key
    assert 0.0 < expected["mIoU"] < 1.0  # the data is not degenerate


@pytest.mark.slow
def test_train_cli_ddp_two_cpu_processes_matches_single_process_eval(tiny_ris_data, tmp_path):
    """`trainer=ddp` on CPU (gloo, 2 processes) trains, and its distributed final evaluation equals a 1-process one."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "ddp"
    common = [f"dataset.name={tiny_ris_data['dataset']}", f"data_root={tiny_ris_data['data_root']}",
              "model=cris_tiny", "model.input_size=32", "trainer.enable_progress_bar=false"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, str(root / "tools" / "train.py"), *common, "batch_size=4", "epochs=2",
                    "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "logger=none",
                    f"output_dir={out}"], check=True, cwd=tmp_path, env=env, timeout=600)
    ckpt_dir = out / "checkpoints"
    distributed = json.loads((ckpt_dir / "metrics_tinyref.json").read_text())["splits"]
    assert distributed["val"]["n"] == 8  # every sentence once: no padding duplicates from the sampler
    single_dir = tmp_path / "single"
    subprocess.run([sys.executable, str(root / "tools" / "evaluate.py"), f"ckpt={ckpt_dir / 'best.ckpt'}",
                    "trainer=cpu", "trainer.enable_progress_bar=false", f"out_dir={single_dir}"],
                   check=True, cwd=tmp_path, env=env, timeout=600)
    single = json.loads((single_dir / "metrics_tinyref.json").read_text())["splits"]
    for split in ("val", "testA"):
        for key in METRIC_KEYS:
            assert distributed[split][key] == pytest.approx(single[split][key], abs=1e-12), (split, key)
