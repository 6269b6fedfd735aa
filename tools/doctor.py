"""Check a user's copy of a dataset and say exactly what is missing or wrong (thin Hydra entry point).

    python tools/doctor.py data_root=<dir> dataset=refcoco        # or refcoco+, refcocog, phrasecut
    python tools/doctor.py data_root=<dir> dataset=refcocog split_by=google decode=false

Reports the layout, per-split ref counts against the published ones, missing images, annotation geometry and
annotations that do not decode. Exit code 0: all checks passed; 1: problems found; 2: bad options.
The work is in pseudo_ris.data.doctor.
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from hydra.utils import to_absolute_path
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from pseudo_ris.data.doctor import diagnose


@hydra.main(version_base="1.3", config_path="../conf", config_name="doctor")
def main(cfg: DictConfig) -> None:
    try:
        params = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except MissingMandatoryValue as exc:
        print(f"error: option {exc.full_key}=... is required (see conf/doctor.yaml)", file=sys.stderr)
        raise SystemExit(2) from None
    data_root = Path(to_absolute_path(str(Path(str(params["data_root"])).expanduser())))
    report = diagnose(data_root, str(params["dataset"]), split_by=params["split_by"], decode=bool(params["decode"]),
                      limit=int(params["limit"]))
    print(report.format())
    raise SystemExit(1 if report.problems else 0)


if __name__ == "__main__":
    main()
