"""Import an official CRIS (CRIS.pytorch) or LAVT (LAVT-RIS) checkpoint as a checkpoint of this framework.

    python tools/import_checkpoint.py source=cris model=cris_r50 path=<best_model.pth> out=cris_r50.ckpt
    python tools/import_checkpoint.py source=cris model=cris_r50 dataset=refcocog path=<pth> out=<ckpt>
    python tools/import_checkpoint.py source=lavt model=lavt_swin_b model.bert_path=<dir> path=<pth> out=<ckpt>

The import is strict: every tensor of the preset is filled, every official tensor is mapped or on the documented
list of intentionally dropped ones (``ris_models.official.common.DROPPED_TENSORS``), and shapes agree; otherwise
one line names the tensor and both shapes (exit code 2). Files are read with ``torch.load(weights_only=True)``.
The output evaluates with ``tools/evaluate.py ckpt=<out>`` and fine-tunes with ``tools/train.py init_from=<out>``.
"""

from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig

from pseudo_ris.cli import user_errors


def run(cfg: DictConfig) -> None:
    from ris_models.official.common import CheckpointImportError
    from ris_models.official.importer import check_request, import_official_checkpoint
    from ris_models.training import build_ris_model

    for key in ("source", "path", "out"):
        if not cfg.get(key):
            raise CheckpointImportError(f"{key}=... is required (see tools/import_checkpoint.py --help)")
    if not Path(str(cfg.path)).expanduser().is_file():  # before the (possibly large) model is built
        raise CheckpointImportError(f"path={cfg.path}: no such file")
    check_request(str(cfg.source), str(cfg.model.name))
    model = build_ris_model(cfg.model, cfg.get("dataset"), load_pretrained=False)
    dataset = cfg.get("dataset")
    data_info = {"dataset": str(dataset.name), "split_by": dataset.get("split_by")} if dataset else None
    report = import_official_checkpoint(str(cfg.source), model, cfg.path, cfg.out, data_info=data_info)
    print(f"imported {report.mapped} tensors of official {report.source.upper()} into {report.preset}; "
          f"dropped on purpose: {report.dropped or 'none'}; wrote {report.out}")


@hydra.main(version_base="1.3", config_path="../conf", config_name="import_checkpoint")
def main(cfg: DictConfig) -> None:
    with user_errors():  # bad input: one line and exit code 2 (PSEUDO_RIS_DEBUG=1: traceback)
        run(cfg)


if __name__ == "__main__":
    main()
