"""Checkpoint files that are either complete or absent, loaded without running code.

Lightning writes a checkpoint by truncating the file and streaming into it, so a full disk or a kill leaves a
half-written ``last.ckpt`` that fails every later resume. `AtomicCheckpointIO` writes a temporary file in the same
directory, fsyncs it and renames it over the old one (``pseudo_ris.data.io.atomic_write_with``); the previous
``last.ckpt`` is kept as ``last.prev.ckpt`` (a hard link, no copy), so a damaged ``last.ckpt`` still leaves a
consistent state to resume from.
A checkpoint that cannot be written raises `CheckpointWriteError` at once (path and OS error) instead of being
noticed at the end of the run. Loading always uses ``torch.load(weights_only=True)``: a checkpoint cannot run code.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Callable

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from pseudo_ris.data.errors import PseudoRISError
from pseudo_ris.data.io import atomic_write_with

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


def _keep_previous(path: Path) -> None:
    """Hard-link the current ``path`` to `previous_path` (atomically replacing the older one)."""
    tmp = path.with_name(f".{path.name}.prev.tmp")
    tmp.unlink(missing_ok=True)
    os.link(path, tmp)
    os.replace(tmp, previous_path(path))


def atomic_torch_save(obj: Any, path: str | os.PathLike, keep_previous: bool = False) -> Path:
    """``torch.save`` through a temp file in ``path``'s directory (fsync, rename); errors name the path.

    ``keep_previous``: first keep the current ``path`` as `previous_path` (if the write then fails, both names
    hold the old checkpoint).
    """
    path = Path(path)
    try:
        if keep_previous and path.is_file():
            _keep_previous(path)
        return atomic_write_with(path, lambda handle: torch.save(obj, handle))
    except OSError as exc:
        raise CheckpointWriteError(f"cannot write checkpoint {path}: {exc.strerror or exc} (errno {exc.errno}); "
                                   "free space or make the directory writable, then rerun the same command to "
                                   "resume") from exc


def atomic_copy(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Copy a checkpoint file atomically (temp file + fsync + rename)."""
    def copy(handle) -> None:
        with open(src, "rb") as inp:
            shutil.copyfileobj(inp, handle, 1 << 20)

    try:
        return atomic_write_with(dst, copy)
    except OSError as exc:
        raise CheckpointWriteError(f"cannot write checkpoint {dst}: {exc.strerror or exc} (errno {exc.errno})") from exc


def load_checkpoint_file(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """``torch.load(weights_only=True)``; any failure becomes `CheckpointReadError` naming the file."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointReadError(f"checkpoint {path} not found")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - truncated zip, foreign pickle, disallowed global, ...
        first = str(exc).strip().splitlines()[0].split(". ")[0][:200] if str(exc).strip() else ""
        raise CheckpointReadError(f"cannot read checkpoint {path} (truncated or not a checkpoint: "
                                  f"{type(exc).__name__}: {first})") from exc
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
