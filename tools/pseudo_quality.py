"""Score pseudo labels against SynthRef's ground truth (thin Hydra entry point; see pseudo_ris.evaluation.quality).

    python tools/pseudo_quality.py store=<candidate store dir> data_root=<synthref root>
    python tools/pseudo_quality.py store=<dir> data_root=<root> pseudo_dataset=<pseudo_root>/pseudo filter.threshold=1.5

Prints the mask-quality and referential-accuracy table and writes quality.json / quality.md (atomically).
"""

from __future__ import annotations

from pathlib import Path

import hydra
from hydra.utils import to_absolute_path
from omegaconf import DictConfig, OmegaConf

from pseudo_ris.cli import user_errors
from pseudo_ris.evaluation.quality import GroundTruth, dataset_quality, format_quality, store_quality, write_quality


def _path(value) -> Path | None:
    return None if value is None else Path(to_absolute_path(str(value))).expanduser()


@hydra.main(version_base="1.3", config_path="../conf", config_name="pseudo_quality")
def main(cfg: DictConfig) -> None:
    params = OmegaConf.to_container(cfg, resolve=True)
    with user_errors():
        data_root = _path(params["data_root"])
        if data_root is None:
            from ris_models.prepare import synthref_root

            data_root = synthref_root(params["cache_dir"], params.get("synthref"))
        truth = GroundTruth.from_root(data_root, params["gt_dataset"])
        store = _path(params["store"])
        report = store_quality(store, truth, variants=params.get("variants"), policy=params.get("filter"),
                               match_iou=float(params["match_iou"]), progress=bool(params["progress"]))
        written = None
        if params.get("pseudo_dataset"):
            ds_dir = _path(params["pseudo_dataset"])
            written = dataset_quality(ds_dir.parent, ds_dir.name, truth, match_iou=float(params["match_iou"]))
        out_dir = _path(params.get("out_dir")) or store
        title = f"Pseudo-label quality of {store}"
        print(format_quality(report, written, title))
        json_path, md_path = write_quality(report, out_dir, dataset=written, title=title)
        print(f"\nwrote {json_path} and {md_path}")


if __name__ == "__main__":
    main()
