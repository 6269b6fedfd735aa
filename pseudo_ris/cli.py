"""How every tool in ``tools/`` reports a mistake the user can fix: one line on stderr, exit code 2.

A ``PseudoRISError`` is raised deliberately with a message naming the option or file at fault, so its traceback
only hides that message. Set ``PSEUDO_RIS_DEBUG=1`` in the environment to get the full traceback instead (bugs,
i.e. any other exception, always show theirs).
"""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from typing import Iterator

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
        print(f"error: {one_line(exc)}", file=sys.stderr, flush=True)
        raise SystemExit(EXIT_USER_ERROR) from None
