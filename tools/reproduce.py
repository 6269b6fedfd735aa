"""Reproduce the paper's claims in miniature on SynthRef and write the results page (thin entry point).

    python tools/reproduce.py                     # profile=quick: 3 seeds x tiny CRIS + tiny LAVT x every row/dataset
                                                  #   -> outputs/reproduce/, page docs/results.md
    python tools/reproduce.py profile=full trainer=gpu device=cuda   # the same at 5x the steps (GPU)
    python tools/reproduce.py report_only=true    # the page from the runs finished so far
    python tools/reproduce.py out_dir=<dir>       # another output folder: the page goes to <dir>/results.md
    python tools/reproduce.py override.rows=[human_100,full] override.max_steps=50

Options: conf/reproduce.yaml (key=value overrides, OmegaConf dot-list syntax). Resumable: rerun the same command.
The work is in ris_models.reproduction.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

from omegaconf import OmegaConf

from pseudo_ris.cli import user_errors
from pseudo_ris.validation import OptionError
from ris_models.reproduction import reproduce

CONF = Path(__file__).resolve().parents[1] / "conf" / "reproduce.yaml"


def main(argv: list[str]) -> None:
    if any(arg in ("-h", "--help") for arg in argv):
        print(__doc__.strip() + "\n\nOptions and their defaults (" + str(CONF.relative_to(CONF.parents[1])) + "):\n")
        print(CONF.read_text())
        return
    base = OmegaConf.load(CONF)
    with user_errors():
        try:
            cfg = OmegaConf.merge(base, OmegaConf.from_dotlist(argv))
        except Exception as exc:  # bad dot-list syntax
            raise OptionError(f"cannot parse overrides {argv}: {exc}") from None
        unknown = sorted(set(cfg) - set(base))
        if unknown:
            raise OptionError(f"unknown option(s) {unknown}; see python tools/reproduce.py --help")
        reproduce(cfg, command=" ".join(["python tools/reproduce.py", *(shlex.quote(a) for a in argv)]))


if __name__ == "__main__":
    main(sys.argv[1:])
