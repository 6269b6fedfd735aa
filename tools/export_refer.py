"""Export our pseudo labels, SynthRef or any REFER dataset to the layout CRIS-style code reads (thin entry point).

    python tools/export_refer.py data_root=<pseudo_root> dataset=pseudo out=<dir>
    python tools/export_refer.py dataset=synthref out=<dir>                 # the cached SynthRef build

Writes <out>/anns/<name>/<split>.json and <out>/masks/<name>/<ref_id>.png (as CRIS's tools/data_process.py does)
and prints the folder2lmdb.py commands that pack them. Options: conf/export_refer.yaml (key=value); the work is
in pseudo_ris.data.export_cris.
"""

from __future__ import annotations

import sys
from pathlib import Path

from pseudo_ris.cli import load_options
from pseudo_ris.data.errors import PseudoRISError

CONF = Path(__file__).resolve().parents[1] / "conf" / "export_refer.yaml"


def main(argv: list[str]) -> None:
    params = load_options(CONF, argv, __doc__)
    from pseudo_ris.data.export_cris import export_cris, lmdb_commands
    from pseudo_ris.data.sources import open_dataset

    dataset = str(params["dataset"])
    name = params["name"] or dataset
    out = Path(str(params["out"])).expanduser().absolute()
    try:
        if params["data_root"] is None:
            from ris_models.prepare import SYNTHREF_DATASETS, DataRootError, synthref_root

            if dataset not in SYNTHREF_DATASETS:
                raise DataRootError(f"dataset {dataset!r} needs data_root=<dir holding {dataset}/>")
            data_root = synthref_root(params["cache_dir"], params.get("synthref"))
        else:
            data_root = Path(str(params["data_root"])).expanduser().absolute()
        ds = open_dataset(data_root, dataset, split_by=params["split_by"], splits=params["splits"])
        counts = export_cris(ds, out, name=name, splits=params["splits"], overwrite=bool(params["overwrite"]))
    except PseudoRISError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from exc
    print(f"wrote {out / 'anns' / name}/ and {out / 'masks' / name}/: "
          + ", ".join(f"{split} {n} refs" for split, n in counts.items()))
    print("pack them for CRIS with:\n  " + "\n  ".join(lmdb_commands(out, name, ds.image_dir, list(counts))))


if __name__ == "__main__":
    main(sys.argv[1:])
