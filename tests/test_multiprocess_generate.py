"""Many processes, one result: generation spread over 2 processes (torchrun, or SLURM's environment) and merged
equals a single-process run with the same seed (torchrun in the default suite: 3 tiny images, 2 short decodings per
view; the one-process reference and the merge run in the test's process); the launcher environment maps to shards."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from pseudo_ris.generation import runner
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


TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=0"]


def _run_here(*overrides: str) -> dict:
    """The tool's run in this process (same config composition): the one-process reference and the merge, without
    paying a process start and the model imports again."""
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("generate", overrides=[*FAST, *overrides])
    return runner.run(runner._plain(cfg))


@pytest.fixture(scope="module")
def pool(tmp_path_factory) -> Path:
    data = tmp_path_factory.mktemp("synthref")
    build_synthref(data, seed=0, num_images=0, pool_images=3, progress=False)  # 3 images: 2 + 1 per shard
    return data


def test_torchrun_two_processes_merged_equal_one_process(pool, tmp_path):
    single, multi = tmp_path / "single", tmp_path / "multi"
    _run_here(f"data_root={pool}", f"out_dir={single}")
    # torchrun: RANK / WORLD_SIZE per process, one shard each, both processes at once
    _generate("stage=generate", "shard=auto", f"data_root={pool}", f"out_dir={multi}", launcher=TORCHRUN)
    done = {p.name: len(p.read_text().splitlines()) for p in multi.glob("images.shard*")}
    assert done == {"images.shard0of2.jsonl": 2, "images.shard1of2.jsonl": 1}
    _run_here("stage=filter", "num_shards=2", f"data_root={pool}", f"out_dir={multi}")
    reference = _dataset(single)
    assert reference[1] and reference[2]
    assert _dataset(multi) == reference


@pytest.mark.slow  # 2 more tool processes: doubles the torchrun test's time
def test_srun_two_processes_merged_equal_one_process(pool, tmp_path):
    single, slurm = tmp_path / "single", tmp_path / "slurm"
    _run_here(f"data_root={pool}", f"out_dir={single}")
    # srun, simulated: two processes started together with SLURM_PROCID / SLURM_NTASKS
    procs = [subprocess.Popen([sys.executable, str(ROOT / "tools" / "generate.py"), *FAST, "stage=generate",
                               "shard=auto", f"data_root={pool}", f"out_dir={slurm}"], cwd=ROOT,
                              env=_env(SLURM_PROCID=str(r), SLURM_NTASKS="2", SLURM_LOCALID=str(r)),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in (0, 1)]
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
    _run_here("stage=filter", "num_shards=2", f"data_root={pool}", f"out_dir={slurm}")
    assert _dataset(slurm) == _dataset(single)


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
