"""Train a referring-segmentation model (thin Hydra entry point; the work is in ``ris_models.training``).

    python tools/train.py                                   # SynthRef, human labels, lavt_tiny
    python tools/train.py data=pseudo                       # the main job: SynthRef -> pseudo labels -> RIS model
    python tools/train.py data=pseudo pseudo_root=<dir>     # pseudo labels made by tools/generate.py
    python tools/train.py data=mixed ratio=0.1 pseudo_root=<dir>
    python tools/train.py data=human model=cris_tiny
    python tools/train.py ckpt_path=runs/.../checkpoints/last.ckpt      # resume

See conf/train.yaml for every option; unknown keys are rejected by Hydra.
"""

from __future__ import annotations

import hydra
from hydra import compose
from omegaconf import DictConfig

from pseudo_ris.cli import user_errors
from ris_models.training import train


def generation_config(cfg: DictConfig) -> DictConfig | None:
    """``conf/generate.yaml`` + ``pseudo_labels.generate`` overrides, for automatic pseudo labels (main job)."""
    if cfg.data.mode == "human" or cfg.get("pseudo_root") is not None:
        return None
    return compose(config_name="generate", overrides=list(cfg.pseudo_labels.generate))


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> None:
    with user_errors():  # bad data/config: one line and exit code 2 (PSEUDO_RIS_DEBUG=1: traceback)
        train(cfg, generate_cfg=generation_config(cfg))


if __name__ == "__main__":
    main()
