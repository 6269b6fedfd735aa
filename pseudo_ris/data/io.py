"""Atomic file writes: a crash or a kill never leaves a half-written file behind.

Every writer goes through a temporary file in the destination directory followed by ``os.replace``, which is
atomic on POSIX and Windows, so readers see either the old complete file or the new complete file.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_with(path: str | os.PathLike, write: Callable[[BinaryIO], Any]) -> Path:
    """Atomically replace ``path`` by what ``write(handle)`` writes (parent directories are created).

    A temp file in the same directory is written, flushed and fsynced, then renamed over ``path``, and the
    directory is fsynced so the rename survives a power cut. On any error the temp file is removed and ``path``
    keeps its old content. The file gets the usual ``0666 & ~umask`` mode (``mkstemp`` alone would leave it private
    to its owner). Streaming through ``write`` avoids holding large files (checkpoints) in memory twice.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)
    return path


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory file descriptors
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (see `atomic_write_with`)."""
    return atomic_write_with(path, lambda handle: handle.write(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int | None = None,
                      default: Any = None) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=indent, default=default))


def atomic_write_pickle(path: str | os.PathLike, obj: Any) -> Path:
    # protocol 2 keeps files readable by the Python 2 era REFER tooling as well as by us
    return atomic_write_bytes(path, pickle.dumps(obj, protocol=2))


def append_jsonl(path: str | os.PathLike, rows: list[dict]) -> None:
    """Append rows to a JSON-lines file and fsync. A torn last line (kill mid-write) is skipped by `read_jsonl`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = "".join(json.dumps(row) + "\n" for row in rows)
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(payload)
        handle.flush()
        os.fsync(handle.fileno())


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Read a JSON-lines file, ignoring a trailing partial line left by an interrupted append."""
    rows: list[dict] = []
    path = Path(path)
    if not path.exists():
        return rows
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if not line.endswith("\n"):
                break  # torn write at the end of the file
            line = line.strip()
            if line:
                rows.append(json.loads(line))
    return rows


def file_digest(path: str | os.PathLike) -> str:
    """SHA-1 of a file's bytes (hex), read in 1 MiB blocks: identifies weights by content, not by name."""
    digest = hashlib.sha1()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
