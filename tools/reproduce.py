"""Reproduce the paper's claims in miniature on SynthRef and write docs/results.md (thin entry point).

    python tools/reproduce.py                     # profile=quick: 3 seeds x tiny CRIS + tiny LAVT x every row/dataset
    python tools/reproduce.py profile=full trainer=gpu device=cuda   # the same at 5x the steps (GPU)
    python tools/reproduce.py report_only=true    # the page from the runs finished so far
    python tools/reproduce.py override.rows=[human_100,full] override.max_steps=50

Options: conf/reproduce.yaml (key=value overrides, OmegaConf dot-list syntax). Resumable: rerun the same command.
The work is in ris_models.reproduction.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

from omegaconf import OmegaConf

from pseudo_ris.data.errors import PseudoRISError
from ris_models.reproduction import reproduce

CONF = Path(__file__).resolve().parents[1] / "conf" / "reproduce.yaml"


def main(argv: list[str]) -> None:
    base = OmegaConf.load(CONF)
    try:
        cfg = OmegaConf.merge(base, OmegaConf.from_dotlist(argv))
    except Exception as exc:  # bad dot-list syntax
        raise SystemExit(f"error: cannot parse overrides {argv}: {exc}") from exc
    unknown = sorted(set(cfg) - set(base))
    if unknown:
        raise SystemExit(f"error: unknown option(s) {unknown}; see {CONF}")
    try:
        reproduce(cfg, command="python tools/reproduce.py " + " ".join(shlex.quote(a) for a in argv))
    except PseudoRISError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from exc


if __name__ == "__main__":
    main(sys.argv[1:])
