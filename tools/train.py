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

import sys

import hydra
from hydra import compose
from omegaconf import DictConfig

from pseudo_ris.data.errors import PseudoRISError
from ris_models.training import train


def generation_config(cfg: DictConfig) -> DictConfig | None:
    """``conf/generate.yaml`` + ``pseudo_labels.generate`` overrides, for automatic pseudo labels (main job)."""
    if cfg.data.mode == "human" or cfg.get("pseudo_root") is not None:
        return None
    return compose(config_name="generate", overrides=list(cfg.pseudo_labels.generate))


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> None:
    try:
        train(cfg, generate_cfg=generation_config(cfg))
    except PseudoRISError as exc:  # bad data/config: a clear message, not a traceback
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from exc


if __name__ == "__main__":
    main()
