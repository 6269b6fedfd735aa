"""Train a SynthRef foundation model: ``python tools/train_foundation.py model=sam|coca|clip|swin|bert steps=... out=...``.

Thin Hydra entry point over `pseudo_ris.foundation.train_sam` / `train_coca` / `train_clip` and, for the encoders the
tiny LAVT can start from, `ris_models.pretraining` (`train_swin` / `train_bert`). Rerunning the same command resumes
from ``<out>/train_state.pt``. The config lives in conf/foundation.yaml; it is registered in Hydra's ConfigStore
rather than read from the conf/ search path so that ``model=...`` stays a plain key even though conf/ also has a
``model`` config group for the RIS trainers.
"""

from __future__ import annotations

import json
from pathlib import Path

import hydra
import torch
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from pseudo_ris.cli import user_errors
from pseudo_ris.validation import check_choice, check_int, check_writable_dir

CONF = Path(__file__).resolve().parents[1] / "conf" / "foundation.yaml"
ConfigStore.instance().store(name="foundation_cli", node=OmegaConf.load(CONF))


@hydra.main(version_base=None, config_path=None, config_name="foundation_cli")
def main(cfg: DictConfig) -> None:
    from pseudo_ris.foundation import evaluate_coca, evaluate_sam, train_coca, train_sam
    from pseudo_ris.foundation.clip_training import evaluate_clip, train_clip
    from ris_models.pretraining.bert import evaluate_bert, train_bert
    from ris_models.pretraining.swin import evaluate_swin, train_swin

    trainers = {"sam": (train_sam, evaluate_sam), "coca": (train_coca, evaluate_coca), "clip": (train_clip, None),
                "swin": (train_swin, None), "bert": (train_bert, None)}
    small_reports = {"clip": lambda path, section, options: evaluate_clip(path, arch=section["arch"], **options),
                     "swin": lambda path, section, options: evaluate_swin(path, preset=section["preset"], **options),
                     "bert": lambda path, section, options: evaluate_bert(path, preset=section["preset"], **options)}
    with user_errors():
        check_choice(cfg.model, "model", sorted(trainers))
        check_int(cfg.threads, "threads", minimum=1)
        check_int(cfg.steps, "steps", minimum=1, allow_none=True)
        out = check_writable_dir(Path(hydra.utils.to_absolute_path(str(cfg.out))), "out")
        torch.set_num_threads(int(cfg.threads))
        section = OmegaConf.to_container(cfg[cfg.model], resolve=True)  # its seed is ${seed}
        if cfg.steps is not None:
            section["steps"] = int(cfg.steps)
        train, evaluate = trainers[cfg.model]
        path = train(section, out_dir=out, progress=bool(cfg.progress))
    print(f"weights: {path}")
    if cfg.evaluate:
        options = OmegaConf.to_container(cfg.eval[cfg.model], resolve=True)
        if evaluate is None:  # small reports (CLIP, Swin, BERT) are written here
            from pseudo_ris.data.io import atomic_write_json

            summary = small_reports[cfg.model](path, section, options)
            atomic_write_json(out / "quality.json", {"summary": summary}, indent=1)
        else:
            summary = evaluate(path, **options, out_path=out / "quality.json", progress=bool(cfg.progress))["summary"]
        print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
