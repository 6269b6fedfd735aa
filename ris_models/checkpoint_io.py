"""Checkpoint files that are either complete or absent, loaded without running code.

Lightning writes a checkpoint by truncating the file and streaming into it, so a full disk or a kill leaves a
half-written ``last.ckpt`` that fails every later resume. `AtomicCheckpointIO` writes a temporary file in the same
directory, fsyncs it and renames it over the old one; ``last.ckpt``'s previous version is kept as
``last.prev.ckpt`` (a hard link, no copy) so a damaged ``last.ckpt`` still leaves a consistent state to resume from.
A checkpoint that cannot be written raises `CheckpointWriteError` at once (path and OS error) instead of being
noticed at the end of the run. Loading always uses ``torch.load(weights_only=True)``: a checkpoint cannot run code.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from pseudo_ris.data.errors import PseudoRISError

#: checkpoint names whose previous version is kept next to them as ``<stem>.prev.ckpt``
KEEP_PREVIOUS = ("last.ckpt",)


class CheckpointWriteError(PseudoRISError):
    """A checkpoint could not be written (read-only directory, disk full, ...)."""


class CheckpointReadError(PseudoRISError):
    """A checkpoint file is missing, truncated or not a checkpoint."""


def previous_path(path: str | os.PathLike) -> Path:
    """Where the previous version of ``path`` is kept (``last.ckpt`` -> ``last.prev.ckpt``)."""
    path = Path(path)
    return path.with_name(f"{path.stem}.prev{path.suffix}")


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def atomic_torch_save(obj: Any, path: str | os.PathLike, keep_previous: bool = False) -> Path:
    """``torch.save`` to a temp file in ``path``'s directory, fsync, rename; errors name the path.

    ``keep_previous``: hard-link the current ``path`` to `previous_path` first (atomically replacing it).
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        if keep_previous and path.is_file():
            prev_tmp = f"{tmp}.prev"
            os.link(path, prev_tmp)
            os.replace(prev_tmp, previous_path(path))
        os.replace(tmp, path)
        tmp = None
        _fsync_dir(path.parent)
    except OSError as exc:
        raise CheckpointWriteError(f"cannot write checkpoint {path}: {exc.strerror or exc} (errno {exc.errno}); "
                                   "free space or make the directory writable, then rerun the same command to "
                                   "resume") from exc
    finally:
        if tmp is not None:
            for leftover in (tmp, f"{tmp}.prev"):
                if os.path.exists(leftover):
                    os.unlink(leftover)
    return path


def atomic_copy(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Copy a checkpoint file atomically (temp file + fsync + rename)."""
    src, dst = Path(src), Path(dst)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent)
        with os.fdopen(fd, "wb") as out, open(src, "rb") as inp:
            shutil.copyfileobj(inp, out, 1 << 20)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, dst)
        tmp = None
        _fsync_dir(dst.parent)
    except OSError as exc:
        raise CheckpointWriteError(f"cannot write checkpoint {dst}: {exc.strerror or exc} (errno {exc.errno})") from exc
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
    return dst


def load_checkpoint_file(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """``torch.load(weights_only=True)``; any failure becomes `CheckpointReadError` naming the file."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointReadError(f"checkpoint {path} not found")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - truncated zip, foreign pickle, disallowed global, ...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise CheckpointReadError(f"cannot read checkpoint {path} (truncated or not a checkpoint: "
                                  f"{type(exc).__name__}: {first[:200]})") from exc
    if not isinstance(checkpoint, dict):
        raise CheckpointReadError(f"{path} is not a checkpoint (it holds a {type(checkpoint).__name__})")
    return checkpoint


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning ``CheckpointIO``: atomic, fsynced writes (previous ``last.ckpt`` kept); weights-only loads."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        atomic_torch_save(checkpoint, path, keep_previous=Path(path).name in KEEP_PREVIOUS)

    def load_checkpoint(self, path: Any, map_location: Callable | Any = None,
                        weights_only: bool | None = None) -> dict[str, Any]:
        return load_checkpoint_file(path, map_location=map_location if map_location is not None else "cpu")
