"""One writer per output directory: advisory ``flock`` locks that name their holder.

Two processes writing one output directory silently mix their files (checkpoints of one run, the table printed by
the other). Every tool that owns a directory (training, generation, evaluation, SynthRef builds) holds
``<dir>/.lock`` for as long as it writes there; a second process is refused at once with the holder's pid and
command, which the holder writes into the lock file. The lock belongs to the open file, so the kernel releases it
when the holder dies (even by SIGKILL): a stale lock file never blocks anyone.

Within one process the same lock may be taken again (nested calls such as a reproduction run that trains into its
own run directory); it is released when the outermost holder exits.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path
from typing import IO, Iterator

from .errors import PseudoRISError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no advisory locks, every lock succeeds
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = ".lock"
#: locks this process holds: (pid, absolute path) -> (open handle, nesting depth); the pid keeps a forked child
#: from believing it holds its parent's locks
_HELD: dict[tuple[int, Path], tuple[IO[str], int]] = {}


class DirectoryInUse(PseudoRISError):
    """Another process holds the lock of a directory this process wants to write."""


class LockFileError(PseudoRISError):
    """The lock file cannot be created (read-only or missing parent directory)."""


def lock_holder(path: str | os.PathLike) -> str:
    """``pid N (command)`` of the process that last took the lock at ``path`` (best effort)."""
    try:
        info = json.loads(Path(path).read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError):
        info = {}
    pid, argv = info.get("pid"), info.get("argv") or []
    command = " ".join(str(a) for a in argv) or "command unknown"
    return f"pid {pid if pid is not None else 'unknown'} ({command})"


def _open(path: Path) -> IO[str]:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return open(path, "a+", encoding="utf-8")
    except OSError as exc:
        raise LockFileError(f"cannot create the lock file {path}: {exc.strerror or exc}; "
                            f"is {path.parent} writable?") from exc


def _record_holder(handle: IO[str]) -> None:
    handle.seek(0)
    handle.truncate()
    handle.write(json.dumps({"pid": os.getpid(), "argv": [sys.executable, *sys.argv]}))
    handle.flush()


@contextlib.contextmanager
def file_lock(path: str | os.PathLike, *, blocking: bool = True, shared: bool = False) -> Iterator[bool]:
    """Hold an advisory lock on ``path`` (created if missing) for the ``with`` block.

    ``blocking=False`` yields ``False`` instead of waiting when another process holds it (the caller skips the
    work); otherwise yields ``True`` once held. ``shared`` locks may be held by several processes at once and
    exclude exclusive ones. The holder's pid and command are written into the file.
    """
    path = Path(path).absolute()
    key = (os.getpid(), path)
    if key in _HELD:  # nested use in the same process
        handle, depth = _HELD[key]
        _HELD[key] = (handle, depth + 1)
        try:
            yield True
        finally:
            handle, depth = _HELD[key]
            _HELD[key] = (handle, depth - 1)
        return
    handle = _open(path)
    try:
        if fcntl is not None:
            mode = (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | (0 if blocking else fcntl.LOCK_NB)
            try:
                fcntl.flock(handle.fileno(), mode)
            except BlockingIOError:
                yield False
                return
        _record_holder(handle)  # shared holders overwrite each other: one of them is named
        _HELD[key] = (handle, 1)
        try:
            yield True
        finally:
            _HELD.pop(key, None)
    finally:
        handle.close()  # releases the flock


@contextlib.contextmanager
def directory_lock(directory: str | os.PathLike, *, purpose: str = "write", name: str = LOCK_NAME,
                   shared: bool = False) -> Iterator[Path]:
    """Hold ``<directory>/<name>`` for the block or raise `DirectoryInUse` naming the holder.

    ``purpose`` completes the message (``"train into it"``). The directory is created if needed.
    """
    path = Path(directory).expanduser() / name
    with file_lock(path, blocking=False, shared=shared) as mine:
        if not mine:
            raise DirectoryInUse(f"{Path(directory).expanduser()} is in use by {lock_holder(path)}; wait for it to "
                                 f"finish or choose another directory to {purpose}")
        yield path


def is_primary_process() -> bool:
    """True unless launcher variables say this is a non-zero rank (DDP children, torchrun, SLURM tasks).

    Only the primary process of a multi-process run takes directory locks: its other ranks share the directory.
    """
    for key in ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK"):
        value = os.environ.get(key)
        if value not in (None, "") and value.strip() != "0":
            return False
    return True
