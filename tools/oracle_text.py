"""Oracle-text upper bound of a SynthRef pseudo-label dataset (thin Hydra entry point; see
pseudo_ris.evaluation.oracle_text).

    python tools/oracle_text.py pseudo_dataset=<pseudo_root>/pseudo out_root=<dir>
    python tools/train.py data=pseudo pseudo_root=<dir>

Keeps the pseudo masks, replaces their sentences with SynthRef's own expressions of the object each mask matches,
drops masks that match no object; prints what it did.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import hydra
from hydra.utils import to_absolute_path
from omegaconf import DictConfig, OmegaConf

from pseudo_ris.cli import user_errors
from pseudo_ris.data.errors import PseudoRISError
from pseudo_ris.evaluation.oracle_text import write_oracle_text_dataset
from pseudo_ris.evaluation.quality import GroundTruth


def _path(value) -> Path:
    return Path(to_absolute_path(str(value))).expanduser()


@hydra.main(version_base="1.3", config_path="../conf", config_name="oracle_text")
def main(cfg: DictConfig) -> None:
    with user_errors():
        params = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
        for key in ("pseudo_dataset", "out_root"):
            if params.get(key) in (None, "???"):
                raise PseudoRISError(f"{key}= is required (see conf/oracle_text.yaml)")
        source = _path(params["pseudo_dataset"])
        if not source.is_dir():
            raise PseudoRISError(f"pseudo_dataset={source}: no such dataset directory")
        data_root = params["data_root"]
        if data_root is None:
            from ris_models.prepare import synthref_root

            data_root = synthref_root(params["cache_dir"], params.get("synthref"))
        truth = GroundTruth.from_root(_path(data_root), params["gt_dataset"])
        summary = write_oracle_text_dataset(source.parent, source.name, truth, _path(params["out_root"]),
                                            params.get("out_name"), style=str(params["style"]),
                                            seed=int(params["seed"]), match_iou=float(params["match_iou"]))
        print(json.dumps(asdict(summary), indent=2))
        print(f"train on it: python tools/train.py data=pseudo pseudo_root={_path(params['out_root'])}"
              + ("" if not params.get("out_name") else f" data.pseudo_name={params['out_name']}"))


if __name__ == "__main__":
    main()
