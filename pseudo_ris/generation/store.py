"""Resumable candidate store: one JSON-lines pair of files per shard.

``candidates.shard{i}of{n}.jsonl``  one row per caption candidate (text, noun, view, setting, M/C vectors, DoC, ...)
``images.shard{i}of{n}.jsonl``      the done-list: one row per finished image (status, size, its masks as COCO RLE)

Each candidate row carries its mask (``mask_index`` and ``mask_rle``), so a shard file is self-contained for
analysis; the done row lists the image's masks too (a mask that got no candidate is still recorded). An image's
candidate rows are appended first, its done row last, each append one write + fsync. Opening a shard compacts it:
torn trailing lines and candidate rows of images without a done row (a kill between the two appends) are dropped,
atomically (temp file + ``os.replace``). So a killed run restarts with exactly the finished images, redoes the
unfinished one, and never duplicates rows.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

from pseudo_ris.data.errors import PseudoRISError
from pseudo_ris.data.io import append_jsonl, atomic_write_json

META_FILE = "meta.json"


class StoreError(PseudoRISError):
    """The candidate store is inconsistent with the requested run (other source, other shard layout)."""


def shard_suffix(shard: int, num_shards: int) -> str:
    return f"shard{shard}of{num_shards}"


def _iter_valid(path: Path) -> Iterator[tuple[dict | None, str]]:
    """Yield (row, raw line) for every line; row is None for a torn or corrupt line."""
    if not path.exists():
        return
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if not line.endswith("\n"):
                yield None, line
                continue
            try:
                row = json.loads(line)
                yield (row if isinstance(row, dict) else None), line
            except json.JSONDecodeError:
                yield None, line


def read_rows(path: str | os.PathLike) -> list[dict]:
    """Valid rows of a JSON-lines file (corrupt / torn lines skipped)."""
    return [row for row, _ in _iter_valid(Path(path)) if row is not None]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _rewrite(path: Path, lines: Iterator[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            for line in lines:
                handle.write(line)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; keep the usual permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


class CandidateStore:
    """One shard's candidates and done-list under ``out_dir``."""

    def __init__(self, out_dir: str | os.PathLike, shard: int = 0, num_shards: int = 1,
                 meta: dict[str, Any] | None = None) -> None:
        if not 0 <= shard < num_shards:
            raise StoreError(f"shard={shard} must satisfy 0 <= shard < num_shards={num_shards}")
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        suffix = shard_suffix(shard, num_shards)
        self.candidates_path = self.out_dir / f"candidates.{suffix}.jsonl"
        self.images_path = self.out_dir / f"images.{suffix}.jsonl"
        if meta is not None:
            self._check_meta(meta)
        self.done: dict[str, dict] = {}
        self.recovered = self._compact()

    def _check_meta(self, meta: dict[str, Any]) -> None:
        """A store belongs to one source + model setup: resuming with another would mix incomparable rows."""
        path = self.out_dir / META_FILE
        if path.exists():
            old = json.loads(path.read_text())
            diff = {k: (old.get(k), v) for k, v in meta.items() if k in old and old.get(k) != v}
            if diff:
                raise StoreError(f"{path} was written by a different run configuration {diff}; use another out_dir "
                                 "or delete it")
        else:
            atomic_write_json(path, meta, indent=2)

    def _compact(self) -> dict[str, int]:
        """Drop torn lines, duplicate done rows and candidates of unfinished images; returns what was dropped."""
        done: dict[str, dict] = {}
        bad_images = 0
        for row, _ in _iter_valid(self.images_path):
            if row is None or "key" not in row:
                bad_images += 1
            elif row["key"] in done:
                bad_images += 1  # duplicate done row
            else:
                done[row["key"]] = row
        counts: dict[str, int] = {}
        keep_lines: list[str] = []
        dropped = 0
        for row, line in _iter_valid(self.candidates_path):
            key = row.get("key") if row else None
            if key is None or key not in done or counts.get(key, 0) >= int(done[key].get("n_candidates", 0)):
                dropped += 1
                continue
            counts[key] = counts.get(key, 0) + 1
            keep_lines.append(line)
        if dropped:
            _rewrite(self.candidates_path, iter(keep_lines))
        if bad_images:
            _rewrite(self.images_path, (json.dumps(r) + "\n" for r in done.values()))
        self.done = done
        return {"dropped_candidate_rows": dropped, "dropped_image_rows": bad_images}

    def is_done(self, key: str) -> bool:
        return key in self.done

    def add_image(self, image_row: dict[str, Any], candidate_rows: list[dict[str, Any]]) -> None:
        """Record one finished image: its candidates, then its done row (the commit point)."""
        key = image_row["key"]
        if key in self.done:
            raise StoreError(f"image {key} is already in {self.images_path}")
        image_row = {**image_row, "n_candidates": len(candidate_rows)}
        if candidate_rows:
            append_jsonl(self.candidates_path, [{**r, "key": key} for r in candidate_rows])
        append_jsonl(self.images_path, [image_row])
        self.done[key] = image_row


def shard_files(out_dir: str | os.PathLike) -> list[tuple[Path, Path]]:
    """(images, candidates) file pairs of every shard present in ``out_dir``."""
    out_dir = Path(out_dir)
    pairs = []
    for images in sorted(out_dir.glob("images.shard*of*.jsonl")):
        suffix = images.name[len("images."):-len(".jsonl")]
        pairs.append((images, out_dir / f"candidates.{suffix}.jsonl"))
    return pairs


def load_all(out_dir: str | os.PathLike) -> tuple[list[dict], list[dict]]:
    """Merge every shard: (image rows, candidate rows of finished images), deduplicated by image key.

    Read-only: a shard still being written contributes its finished images only.
    """
    images: dict[str, dict] = {}
    candidates: list[dict] = []
    for images_path, cand_path in shard_files(out_dir):
        shard_images = {}
        for row in read_rows(images_path):
            if row.get("key") not in images and row.get("key") not in shard_images:
                shard_images[row["key"]] = row
        counts: dict[str, int] = {}
        for row in read_rows(cand_path):
            key = row.get("key")
            if key in shard_images and counts.get(key, 0) < int(shard_images[key].get("n_candidates", 0)):
                counts[key] = counts.get(key, 0) + 1
                candidates.append(row)
        images.update(shard_images)
    return list(images.values()), candidates
