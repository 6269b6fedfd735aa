"""Options of the small non-Hydra tools: ``key=value`` overrides of one YAML file, checked before any work.

Used where a Hydra config group would capture a key (``dataset=<any name>`` is a free-form name here, not the
``conf/dataset/`` group). ``--help`` prints the tool's docstring and its options; an unknown key, bad syntax or a
required option left at ``???`` ends in one line and exit code 2.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import MissingMandatoryValue


def _fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def load_options(conf: Path, argv: list[str], doc: str | None = None) -> dict[str, Any]:
    """Plain dict of ``conf`` merged with ``argv`` (``key=value``, dotted keys for nested options)."""
    if any(a in ("-h", "--help") for a in argv):
        print((doc or "").strip() + f"\n\nOptions ({conf.name}):\n\n" + conf.read_text())
        raise SystemExit(0)
    base = OmegaConf.load(conf)
    bad = [a for a in argv if "=" not in a]
    if bad:
        _fail(f"expected key=value options, got {bad}; see {conf}")
    try:
        cfg = OmegaConf.merge(base, OmegaConf.from_dotlist(argv))
    except Exception as exc:  # bad dot-list syntax
        _fail(f"cannot parse options {argv}: {exc}")
    unknown = sorted(set(cfg) - set(base))
    if unknown:
        _fail(f"unknown option(s) {unknown}; see {conf}")
    try:
        return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except MissingMandatoryValue as exc:
        _fail(f"option {exc.full_key}=... is required (see conf/{conf.name})")
    raise AssertionError("unreachable")
