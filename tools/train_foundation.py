"""Train a SynthRef foundation model: ``python tools/train_foundation.py model=sam|coca|clip steps=... out=...``.

Thin Hydra entry point over `pseudo_ris.foundation.train_sam` / `train_coca` / `train_clip`. Rerunning the same command resumes
from ``<out>/train_state.pt``. The config lives in conf/foundation.yaml; it is registered in Hydra's ConfigStore
rather than read from the conf/ search path so that ``model=...`` stays a plain key even though conf/ also has a
``model`` config group for the RIS trainers.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import hydra
import torch
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

CONF = Path(__file__).resolve().parents[1] / "conf" / "foundation.yaml"
ConfigStore.instance().store(name="foundation_cli", node=OmegaConf.load(CONF))


@hydra.main(version_base=None, config_path=None, config_name="foundation_cli")
def main(cfg: DictConfig) -> None:
    from pseudo_ris.foundation import evaluate_coca, evaluate_sam, train_coca, train_sam
    from pseudo_ris.foundation.clip_training import evaluate_clip, train_clip

    torch.set_num_threads(int(cfg.threads))
    trainers = {"sam": (train_sam, evaluate_sam), "coca": (train_coca, evaluate_coca), "clip": (train_clip, None)}
    if cfg.model not in trainers:
        print(f"error: model must be one of {sorted(trainers)}, got {cfg.model!r}", file=sys.stderr)
        raise SystemExit(2)
    section = OmegaConf.to_container(cfg[cfg.model], resolve=True)  # its seed is ${seed}
    if cfg.steps is not None:
        section["steps"] = int(cfg.steps)
    out = Path(hydra.utils.to_absolute_path(str(cfg.out)))
    train, evaluate = trainers[cfg.model]
    path = train(section, out_dir=out, progress=bool(cfg.progress))
    print(f"weights: {path}")
    if cfg.evaluate:
        options = OmegaConf.to_container(cfg.eval[cfg.model], resolve=True)
        if evaluate is None:  # the CLIP report is small: written here
            from pseudo_ris.data.io import atomic_write_json

            summary = evaluate_clip(path, arch=section["arch"], **options)
            atomic_write_json(out / "quality.json", {"summary": summary}, indent=1)
        else:
            summary = evaluate(path, **options, out_path=out / "quality.json", progress=bool(cfg.progress))["summary"]
        print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
