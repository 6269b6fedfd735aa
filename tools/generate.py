"""Generate pseudo referring-segmentation labels (thin Hydra entry point; the work is in ``pseudo_ris.generation``).

    python tools/generate.py                                   # SynthRef pool, tiny models, all stages
    python tools/generate.py masks=gt max_images=20
    python tools/generate.py stage=generate shard=1 num_shards=4     # shards 0..3, in any processes / machines
    python tools/generate.py stage=filter num_shards=4               # merge + filter once every shard is done
    torchrun --nproc_per_node=8 tools/generate.py stage=generate shard=auto   # one shard per rank, then:
    python tools/generate.py stage=filter num_shards=8
    srun --ntasks=8 python tools/generate.py stage=generate shard=auto        # SLURM: one shard per task
    python tools/generate.py stage=filter num_shards=4 filter.threshold=1.2   # re-filter, no captioning

Kill it any time and run the same command again: finished images are skipped, nothing is lost.
See conf/generate.yaml for every option.
"""

from __future__ import annotations

import os

import hydra
from hydra.utils import to_absolute_path
from omegaconf import DictConfig, OmegaConf

from pseudo_ris.cli import user_errors
from pseudo_ris.generation.launch import launcher_shard
from pseudo_ris.generation.runner import format_summary, run

_PATH_KEYS = ("data_root", "image_dir", "out_dir", "out_root", "cache_dir")


@hydra.main(version_base="1.3", config_path="../conf", config_name="generate")
def main(cfg: DictConfig) -> None:
    params = OmegaConf.to_container(cfg, resolve=True)
    with user_errors():
        launcher_shard(params, os.environ)
        for key in _PATH_KEYS:
            if params.get(key) is not None and not str(params[key]).startswith("~"):
                params[key] = to_absolute_path(str(params[key]))
        for group in ("sam", "external"):
            for key in ("checkpoint", "detections"):
                if (params.get(group) or {}).get(key) not in (None, "", "shipped"):
                    params[group][key] = to_absolute_path(str(params[group][key]))
        summary = run(params)
    print(format_summary(summary))


if __name__ == "__main__":
    main()
