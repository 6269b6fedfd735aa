"""Check a user's copy of a dataset and say exactly what is missing or wrong (thin entry point).

    python tools/doctor.py data_root=<dir> dataset=refcoco        # or refcoco+, refcocog, phrasecut
    python tools/doctor.py data_root=<dir> dataset=refcocog split_by=google decode=false

Reports the layout, per-split ref counts against the published ones, missing images, annotation geometry and
annotations that do not decode. Exit code 0: all checks passed; 1: problems found; 2: bad options.
Options: conf/doctor.yaml (key=value); the work is in pseudo_ris.data.doctor.
"""

from __future__ import annotations

import sys
from pathlib import Path

from pseudo_ris.cli import load_options
from pseudo_ris.data.doctor import diagnose

CONF = Path(__file__).resolve().parents[1] / "conf" / "doctor.yaml"


def main(argv: list[str]) -> None:
    params = load_options(CONF, argv, __doc__)
    report = diagnose(Path(str(params["data_root"])).expanduser().absolute(), str(params["dataset"]),
                      split_by=params["split_by"], decode=bool(params["decode"]), limit=int(params["limit"]))
    print(report.format())
    raise SystemExit(1 if report.problems else 0)


if __name__ == "__main__":
    main(sys.argv[1:])
