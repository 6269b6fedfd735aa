"""Evaluate a trained checkpoint, or masks predicted by any model (thin Hydra entry point; the work is in
``ris_models.evaluation``).

    python tools/evaluate.py ckpt=runs/synthref/cris_tiny_human_r1.0_s0/checkpoints/best.ckpt
    python tools/evaluate.py ckpt=<path> dataset=refcocog data_root=<dir> split=test eval=lavt
    python tools/evaluate.py predictions=<folder of <sent_id>.png | COCO-RLE .json> dataset=refcoco \
        data_root=<dir> split=val eval=cris

Prints the evaluation protocol and mIoU / oIoU / P@0.5..0.9 per split and writes metrics_<dataset>[_<protocol>]
.json / .md (and PNG overlays) next to the checkpoint or the predictions.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from pseudo_ris.cli import user_errors
from ris_models.evaluation import evaluate


@hydra.main(version_base="1.3", config_path="../conf", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    with user_errors():
        evaluate(cfg)


if __name__ == "__main__":
    main()
