"""Generate pseudo referring-segmentation labels (thin Hydra entry point; the work is in ``pseudo_ris.generation``).

    python tools/generate.py                                   # SynthRef pool, tiny models, all stages
    python tools/generate.py masks=gt max_images=20
    python tools/generate.py stage=generate shard=1 num_shards=4
    torchrun --nproc_per_node=8 tools/generate.py stage=generate shard=auto   # one shard per rank; then stage=filter
    python tools/generate.py stage=filter filter.threshold=1.2   # re-filter stored candidates, no captioning

Kill it any time and run the same command again: finished images are skipped, nothing is lost.
See conf/generate.yaml for every option.
"""

from __future__ import annotations

import os

import hydra
from hydra.utils import to_absolute_path
from omegaconf import DictConfig, OmegaConf

from pseudo_ris.cli import user_errors
from pseudo_ris.generation.runner import format_summary, run

_PATH_KEYS = ("data_root", "image_dir", "out_dir", "out_root", "cache_dir")


def _launcher_shard(params: dict) -> None:
    """``shard=auto``: one shard per process of a torchrun / SLURM launch (RANK, WORLD_SIZE or SLURM_PROCID, ...)."""
    if params.get("shard") != "auto":
        return
    for rank, world in (("RANK", "WORLD_SIZE"), ("SLURM_PROCID", "SLURM_NTASKS")):
        if rank in os.environ and world in os.environ:
            params["shard"], params["num_shards"] = int(os.environ[rank]), int(os.environ[world])
            local = os.environ.get("LOCAL_RANK", os.environ.get("SLURM_LOCALID"))
            if params.get("device") == "cuda" and local is not None:
                params["device"] = f"cuda:{local}"  # one GPU per process
            return
    params["shard"], params["num_shards"] = 0, int(params.get("num_shards") or 1)


@hydra.main(version_base="1.3", config_path="../conf", config_name="generate")
def main(cfg: DictConfig) -> None:
    params = OmegaConf.to_container(cfg, resolve=True)
    _launcher_shard(params)
    for key in _PATH_KEYS:
        if params.get(key) is not None and not str(params[key]).startswith("~"):
            params[key] = to_absolute_path(str(params[key]))
    for group in ("sam", "external"):
        for key in ("checkpoint", "detections"):
            if (params.get(group) or {}).get(key) not in (None, "", "shipped"):
                params[group][key] = to_absolute_path(str(params[group][key]))
    with user_errors():
        summary = run(params)
    print(format_summary(summary))


if __name__ == "__main__":
    main()
