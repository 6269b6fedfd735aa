"""Reading pickles and torch files without running code from them.

A refs file or a checkpoint downloaded from a mirror is untrusted input: ``pickle.load`` executes whatever
``__reduce__`` payload the file holds. Refs pickles are plain data (lists of dicts of str/int/float), so they are
read with an unpickler that resolves no global except the few that plain data needs; torch files are read with
``torch.load(weights_only=True)`` (tensors and plain containers only). Either way a file holding anything else is
refused with an `UnsafeFileError` naming it, before any of its code could run.

Allowed globals for pickles: ``builtins.set`` / ``frozenset`` / ``bytearray`` (plain containers) and
``_codecs.encode`` restricted to turning a str into bytes with latin-1 (how protocol 2 stores ``bytes``).
Python 2 pickles (the original REFER files) are read with ``encoding="latin1"`` when their byte strings are not UTF-8.
"""

from __future__ import annotations

import codecs
import io
import pickle
import re
from pathlib import Path
from typing import Any

from .errors import PseudoRISError


class UnsafeFileError(PseudoRISError):
    """A pickle or torch file holds something other than plain data / tensors (it could run code)."""


class UnreadableFileError(PseudoRISError):
    """A file that is missing, truncated or not in the expected format."""


def _latin1_bytes(text: str, encoding: str = "latin1") -> bytes:
    """What protocol 2 pickles call to rebuild ``bytes``; any other encoding request is refused."""
    if not isinstance(text, str) or codecs.lookup(encoding).name != "iso8859-1":
        raise pickle.UnpicklingError(f"_codecs.encode called with {type(text).__name__}, {encoding!r}")
    return codecs.encode(text, "latin1")


_ALLOWED: dict[tuple[str, str], Any] = {
    ("_codecs", "encode"): _latin1_bytes,
    **{(module, name): obj for module in ("builtins", "__builtin__")  # protocol <= 2 writes Python 2 names
       for name, obj in (("set", set), ("frozenset", frozenset), ("bytearray", bytearray))},
}


class _PlainUnpickler(pickle.Unpickler):
    """Resolves only `_ALLOWED` globals; anything else (``os.system``, a class to instantiate, ...) is refused."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"global '{module}.{name}' is not plain data") from None

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("persistent ids are not plain data")


def loads_plain(data: bytes, encoding: str = "ASCII") -> Any:
    """Unpickle plain data only (see module docstring); raises ``pickle.UnpicklingError`` on anything else."""
    return _PlainUnpickler(io.BytesIO(data), encoding=encoding).load()


def load_plain_pickle(path: str | Path, what: str = "pickle") -> Any:
    """Read ``path`` as a plain-data pickle; `UnsafeFileError` / `UnreadableFileError` name the file."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UnreadableFileError(f"{what} {path} cannot be read: {exc.strerror or exc}") from exc
    try:
        try:
            return loads_plain(data)
        except UnicodeDecodeError:  # pickled by Python 2 with non-ASCII byte strings
            return loads_plain(data, encoding="latin1")
    except pickle.UnpicklingError as exc:
        if "not plain data" in str(exc) or "_codecs.encode" in str(exc):
            raise UnsafeFileError(f"{what} {path} refused: it holds Python objects, not plain data ({exc}); "
                                  "it was not loaded (a pickle can run code)") from None
        raise UnreadableFileError(f"{what} {path} is truncated or not a pickle ({exc})") from None
    except (EOFError, ValueError, IndexError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise UnreadableFileError(f"{what} {path} is truncated or not a pickle "
                                  f"({type(exc).__name__}: {exc})") from None


def load_torch_file(path: str | Path, what: str = "checkpoint") -> Any:
    """``torch.load(path, weights_only=True)`` on CPU, with one-line errors that name the file.

    A file holding pickled Python objects beyond tensors and plain containers is refused (`UnsafeFileError`);
    a missing, truncated or foreign file raises `UnreadableFileError`.
    """
    import torch

    path = Path(path).expanduser()
    if not path.is_file():
        raise UnreadableFileError(f"{what} {path} not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        if found:  # torch's weights-only unpickler met a global it does not allow
            raise UnsafeFileError(f"{what} {path} refused: it holds Python objects beyond tensors and plain data "
                                  f"(global {found.group(1)}); it was not loaded (it could run code)") from None
        reason = next((line.strip() for line in first if "Unsupported" in line or "invalid" in line),
                      first[0] if first else "")
        raise UnreadableFileError(f"{what} {path} is truncated or not a torch file ({reason[:200]})") from None
    except OSError as exc:
        raise UnreadableFileError(f"{what} {path} cannot be read: {exc.strerror or exc}") from None
    except Exception as exc:  # torch raises RuntimeError / EOFError / ... for truncated or foreign files
        text = " ".join(str(exc).split())[:200]
        raise UnreadableFileError(f"{what} {path} is truncated or not a torch file ({type(exc).__name__}: {text})"
                                  ) from None
