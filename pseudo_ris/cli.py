"""Command-line plumbing shared by the tools in ``tools/``.

* `user_errors`: how every tool reports a mistake the user can fix: one line on stderr, exit code 2. A
  ``PseudoRISError`` is raised deliberately with a message naming the option or file at fault, so its traceback only
  hides that message. Set ``PSEUDO_RIS_DEBUG=1`` in the environment to get the full traceback instead (bugs, i.e.
  any other exception, always show theirs).
* `load_options`: options of the small non-Hydra tools: ``key=value`` overrides of one YAML file, checked before any
  work. Used where a Hydra config group would capture a key (``dataset=<any name>`` is a free-form name here, not
  the ``conf/dataset/`` group). ``--help`` prints the tool's docstring and its options; an unknown key, bad syntax or
  a required option left at ``???`` ends in one line and exit code 2.
"""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from omegaconf import OmegaConf
from omegaconf.errors import MissingMandatoryValue

from pseudo_ris.data.errors import PseudoRISError

DEBUG_ENV = "PSEUDO_RIS_DEBUG"
EXIT_USER_ERROR = 2


def debug_enabled() -> bool:
    """``PSEUDO_RIS_DEBUG`` set to anything but empty / 0 / false / no."""
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")


def one_line(message: object) -> str:
    """The message with every run of whitespace (newlines included) collapsed to one space."""
    return " ".join(str(message).split())


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn a `PseudoRISError` into ``error: <one line>`` and ``SystemExit(2)`` (traceback with PSEUDO_RIS_DEBUG=1)."""
    try:
        yield
    except PseudoRISError as exc:
        if debug_enabled():
            raise
        _fail(one_line(exc))


def _fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(EXIT_USER_ERROR)


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
        _fail(f"cannot parse options {argv}: {one_line(exc)}")
    unknown = sorted(set(cfg) - set(base))
    if unknown:
        _fail(f"unknown option(s) {unknown}; see {conf}")
    try:
        return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except MissingMandatoryValue as exc:
        _fail(f"option {exc.full_key}=... is required (see conf/{conf.name})")
    raise AssertionError("unreachable")
