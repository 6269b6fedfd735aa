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
