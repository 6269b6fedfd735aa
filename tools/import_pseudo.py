"""Import official Pseudo-RIS outputs (masks + captions) as our pseudo-label dataset (thin Hydra entry point).

    python tools/import_pseudo.py masks=<dir of <img_id>/<j>.png> captions=<jsonl or csv> images=<dir> out=<dir>
    python tools/train.py data=pseudo pseudo_root=<out>

Options: conf/import_pseudo.yaml. The work (and the official semantics it follows) is in
pseudo_ris.generation.official_import.
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from hydra.utils import to_absolute_path
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from pseudo_ris.data.errors import PseudoRISError
from pseudo_ris.generation.official_import import format_summary, import_official


def _path(value) -> Path:
    return Path(to_absolute_path(str(Path(str(value)).expanduser())))


@hydra.main(version_base="1.3", config_path="../conf", config_name="import_pseudo")
def main(cfg: DictConfig) -> None:
    try:
        params = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except MissingMandatoryValue as exc:
        print(f"error: option {exc.full_key}=... is required (see conf/import_pseudo.yaml)", file=sys.stderr)
        raise SystemExit(2) from None
    try:
        summary = import_official(_path(params["masks"]), _path(params["captions"]), _path(params["images"]),
                                  _path(params["out"]), name=str(params["name"]), filter_cfg=params["filter"],
                                  overwrite=bool(params["overwrite"]))
    except PseudoRISError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from exc
    out = _path(params["out"])
    print(format_summary(summary))
    print(f"wrote {out / params['name']}; train with: python tools/train.py data=pseudo pseudo_root={out}"
          + (f" data.pseudo_name={params['name']}" if params["name"] != "pseudo" else ""))


if __name__ == "__main__":
    main()
