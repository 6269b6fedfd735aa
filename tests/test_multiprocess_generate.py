"""Many processes, one result: generation spread over 2 processes (torchrun, or SLURM's environment) and merged
equals a single-process run with the same seed; the launcher environment maps to shards."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from pseudo_ris.generation.launch import LaunchError, launcher_shard
from pseudo_ris.synthref import build_synthref

ROOT = Path(__file__).resolve().parents[1]
FAST = ["decoding.settings=[{kind: beam, value: 2}, {kind: topk, value: 3, distinctive: true}]",
        "decoding.max_len=6", "decoding.min_len=3", "progress=false", "report.enabled=false", "masks=gt"]


def _env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_PROCID",
                                                             "SLURM_NTASKS", "SLURM_LOCALID")}
    return {**env, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **extra}


def _generate(*args: str, env: dict | None = None, launcher: list[str] | None = None) -> subprocess.CompletedProcess:
    cmd = (launcher or [sys.executable]) + [str(ROOT / "tools" / "generate.py"), *FAST, *args]
    proc = subprocess.run(cmd, cwd=ROOT, env=env or _env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc


def _dataset(out: Path) -> tuple[bytes, list, list]:
    with open(out / "pseudo" / "refs(pseudo).p", "rb") as handle:
        refs = pickle.load(handle)
    cands = [json.loads(line) for line in (out / "candidates.jsonl").read_text().splitlines()]
    for row in cands:
        row.pop("seconds", None)
    return (out / "pseudo" / "instances.json").read_bytes(), refs, cands


@pytest.mark.slow  # 6 tool processes: ~100 CPU-seconds
def test_two_processes_merged_equal_one_process(tmp_path):
    data = tmp_path / "synthref"
    build_synthref(data, seed=0, num_images=0, pool_images=5, progress=False)
    single, multi, slurm = tmp_path / "single", tmp_path / "multi", tmp_path / "slurm"
    _generate(f"data_root={data}", f"out_dir={single}")
    # torchrun: RANK / WORLD_SIZE per process, one shard each
    _generate("stage=generate", "shard=auto", f"data_root={data}", f"out_dir={multi}",
              launcher=[sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=0"])
    assert sorted(p.name for p in multi.glob("images.shard*")) == ["images.shard0of2.jsonl", "images.shard1of2.jsonl"]
    _generate("stage=filter", "num_shards=2", f"data_root={data}", f"out_dir={multi}")
    # srun, simulated: two processes started together with SLURM_PROCID / SLURM_NTASKS
    procs = [subprocess.Popen([sys.executable, str(ROOT / "tools" / "generate.py"), *FAST, "stage=generate",
                               "shard=auto", f"data_root={data}", f"out_dir={slurm}"], cwd=ROOT,
                              env=_env(SLURM_PROCID=str(r), SLURM_NTASKS="2", SLURM_LOCALID=str(r)),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in (0, 1)]
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
    _generate("stage=filter", "num_shards=2", f"data_root={data}", f"out_dir={slurm}")
    reference = _dataset(single)
    assert reference[1] and reference[2]
    assert _dataset(multi) == reference
    assert _dataset(slurm) == reference


def test_launcher_environment_maps_to_shards():
    params = {"shard": "auto", "num_shards": 1, "device": "cuda"}
    launcher_shard(params, {"SLURM_PROCID": "3", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1"})
    assert params == {"shard": 3, "num_shards": 8, "device": "cuda:1"}
    params = {"shard": "auto", "num_shards": 1, "device": "cpu"}
    launcher_shard(params, {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "SLURM_PROCID": "0",
                            "SLURM_NTASKS": "1"})
    assert params == {"shard": 1, "num_shards": 2, "device": "cpu"}  # torchrun inside a SLURM job wins
    params = {"shard": "auto", "num_shards": 4}
    launcher_shard(params, {})
    assert params == {"shard": 0, "num_shards": 4}
    with pytest.raises(LaunchError, match="num_shards=4 but the launcher started 2 processes"):
        launcher_shard({"shard": "auto", "num_shards": 4}, {"RANK": "0", "WORLD_SIZE": "2"})
