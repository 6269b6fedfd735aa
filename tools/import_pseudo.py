"""Import official Pseudo-RIS outputs (masks + captions) as our pseudo-label dataset (thin entry point).

    python tools/import_pseudo.py masks=<dir of <img_id>/<j>.png> captions=<jsonl or csv> images=<dir> out=<dir>
    python tools/train.py data=pseudo pseudo_root=<out>

Options: conf/import_pseudo.yaml (key=value). The work, and the official semantics it follows, is in
pseudo_ris.generation.official_import.
"""

from __future__ import annotations

import sys
from pathlib import Path

from pseudo_ris.cli import load_options
from pseudo_ris.data.errors import PseudoRISError

CONF = Path(__file__).resolve().parents[1] / "conf" / "import_pseudo.yaml"


def main(argv: list[str]) -> None:
    params = load_options(CONF, argv, __doc__)
    from pseudo_ris.generation.official_import import format_summary, import_official

    path = {k: Path(str(params[k])).expanduser().absolute() for k in ("masks", "captions", "images", "out")}
    try:
        summary = import_official(path["masks"], path["captions"], path["images"], path["out"],
                                  name=str(params["name"]), filter_cfg=params["filter"],
                                  overwrite=bool(params["overwrite"]))
    except PseudoRISError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from exc
    print(format_summary(summary))
    print(f"wrote {path['out'] / params['name']}; train with: python tools/train.py data=pseudo "
          f"pseudo_root={path['out']}" + (f" data.pseudo_name={params['name']}" if params["name"] != "pseudo" else ""))


if __name__ == "__main__":
    main(sys.argv[1:])
