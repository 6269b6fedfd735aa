"""Export our pseudo labels, SynthRef or any REFER dataset to the layout CRIS-style code reads (thin entry point).

    python tools/export_refer.py data_root=<pseudo_root> dataset=pseudo out=<dir>
    python tools/export_refer.py dataset=synthref out=<dir>                 # the cached SynthRef build

Writes <out>/anns/<name>/<split>.json and <out>/masks/<name>/<ref_id>.png (as CRIS's tools/data_process.py does)
and prints the folder2lmdb.py commands that pack them. Options: conf/export_refer.yaml; the work is in
pseudo_ris.data.export_cris.
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from hydra.utils import to_absolute_path
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from pseudo_ris.data.errors import PseudoRISError
from pseudo_ris.data.export_cris import export_cris, lmdb_commands
from pseudo_ris.data.sources import open_dataset


def _path(value) -> Path:
    return Path(to_absolute_path(str(Path(str(value)).expanduser())))


@hydra.main(version_base="1.3", config_path="../conf", config_name="export_refer")
def main(cfg: DictConfig) -> None:
    try:
        params = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except MissingMandatoryValue as exc:
        print(f"error: option {exc.full_key}=... is required (see conf/export_refer.yaml)", file=sys.stderr)
        raise SystemExit(2) from None
    try:
        dataset = str(params["dataset"])
        if params["data_root"] is None:
            from ris_models.prepare import SYNTHREF_DATASETS, synthref_root

            if dataset not in SYNTHREF_DATASETS:
                print(f"error: dataset {dataset!r} needs data_root=<dir holding {dataset}/>", file=sys.stderr)
                raise SystemExit(2)
            data_root = synthref_root(params["cache_dir"], params.get("synthref"))
        else:
            data_root = _path(params["data_root"])
        ds = open_dataset(data_root, dataset, split_by=params["split_by"], splits=params["splits"])
        name = params["name"] or dataset
        out = _path(params["out"])
        counts = export_cris(ds, out, name=name, splits=params["splits"], overwrite=bool(params["overwrite"]))
    except PseudoRISError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from exc
    print(f"wrote {out / 'anns' / name}/ and {out / 'masks' / name}/: "
          + ", ".join(f"{split} {n} refs" for split, n in counts.items()))
    print("pack them for CRIS with:\n  " + "\n  ".join(lmdb_commands(out, name, ds.image_dir, list(counts))))


if __name__ == "__main__":
    main()
