"""Resumable candidate store: one JSON-lines pair of files per shard.

``candidates.shard{i}of{n}.jsonl``  one row per caption candidate (text, noun, view, setting, M/C vectors, DoC, ...)
``images.shard{i}of{n}.jsonl``      the done-list: one row per finished image (status, size, its masks as COCO RLE)

A candidate row names its mask by ``mask_index``; the image's done row holds every mask once, as COCO RLE (a
mask that got no candidate is still recorded). Repeating the RLE in each of a mask's ~44 candidate rows would make
the store (and the merged copy) about 40 % larger at COCO size for no reader's benefit. An image's
candidate rows are appended first, its done row last, each append one write + fsync. Opening a shard compacts it:
torn trailing lines and candidate rows of images without a done row (a kill between the two appends) are dropped,
atomically (temp file + ``os.replace``). So a killed run restarts with exactly the finished images, redoes the
unfinished one, and never duplicates rows.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from pseudo_ris.data.errors import PseudoRISError
from pseudo_ris.data.io import append_jsonl, atomic_write_json

META_FILE = "meta.json"


class StoreError(PseudoRISError):
    """The candidate store is inconsistent with the requested run (other source, other shard layout)."""


def remove_stale_temps(directory: str | os.PathLike, names: list[str]) -> list[Path]:
    """Delete temporary files (``.<name>.*.tmp``, see `_rewrite`) left by a killed writer of the given files.

    Only call it for files this process alone writes (its own shard, or the merge), so a live writer's temp
    file is never removed."""
    removed = []
    directory = Path(directory)
    if not directory.is_dir():
        return removed
    for name in names:
        for tmp in directory.glob(f".{name}.*.tmp"):
            try:
                tmp.unlink()
                removed.append(tmp)
            except FileNotFoundError:
                pass
    return removed


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
        self.stale_temps = remove_stale_temps(self.out_dir, [self.candidates_path.name, self.images_path.name])
        if meta is not None:
            check_meta(self.out_dir, meta, write=True)
        self.done: dict[str, dict] = {}
        self.recovered = self._compact()
        self.images_path.touch()  # an empty shard (no images of its own) still shows up as present to the merge

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


def has_finished_images(out_dir: str | os.PathLike) -> bool:
    """Whether any shard of ``out_dir`` holds a finished image (a non-empty done-list)."""
    return any(images.stat().st_size > 0 for images, _ in shard_files(out_dir))


def check_meta(out_dir: str | os.PathLike, meta: dict[str, Any], *, write: bool) -> None:
    """A store belongs to one source + model setup: resuming with another would mix incomparable rows.

    A ``meta.json`` that differs is refused only when the store holds finished images; a failed start (meta
    written, nothing generated) never blocks the corrected rerun: its meta is replaced. ``write=False`` checks
    only (before models are built); ``write=True`` records ``meta`` when it is new."""
    path = Path(out_dir) / META_FILE
    if path.exists():
        try:
            old = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            old = None
        if not isinstance(old, dict):
            if has_finished_images(out_dir):
                raise StoreError(f"{path} is unreadable but the store holds finished images; use another out_dir")
        else:
            diff = {k: (old.get(k), v) for k, v in meta.items() if k in old and old.get(k) != v}
            if not diff:
                return
            if has_finished_images(out_dir):
                raise StoreError(f"{path} was written by a different run configuration {diff}; use another out_dir "
                                 "or delete it")
    if write:
        atomic_write_json(path, meta, indent=2)


def shard_files(out_dir: str | os.PathLike) -> list[tuple[Path, Path]]:
    """(images, candidates) file pairs of every shard present in ``out_dir``."""
    out_dir = Path(out_dir)
    pairs = []
    for images in sorted(out_dir.glob("images.shard*of*.jsonl")):
        suffix = images.name[len("images."):-len(".jsonl")]
        pairs.append((images, out_dir / f"candidates.{suffix}.jsonl"))
    return pairs


def load_all(out_dir: str | os.PathLike) -> tuple[list[dict], list[dict]]:
    """Merge every shard in memory: (image rows, candidate rows of finished images), deduplicated by image key.

    For small stores and analysis; the filter stage streams with `StoreIndex` instead. Read-only: a shard still
    being written contributes its finished images only."""
    images: list[dict] = []
    candidates: list[dict] = []
    for image_row, rows in StoreIndex.build(out_dir).iter_images():
        images.append(image_row)
        candidates.extend(rows)
    return images, candidates


_KEY_TAIL = b'"key": '
_DECODER = json.JSONDecoder()
_PLAIN_KEY = re.compile(rb'"[\x20\x21\x23-\x5b\x5d-\x7f]*"')  # a JSON string without escapes, ASCII only


def _parse_line(line: bytes) -> tuple[Any, str | None]:
    """``json.loads(line)`` of one stored line (the same value, or the same ValueError) and, when the line is a UTF-8
    object (every row the store writes), its text: decoded once, without json's per-call encoding detection."""
    if line[:1] == b"{" and line[1:2] != b"\x00":
        text = line.decode("utf-8", "surrogatepass")
        return _DECODER.decode(text), text
    return json.loads(line), None


def loads_line(line: bytes) -> Any:
    """``json.loads(line)`` of one stored line, faster for the rows the store writes."""
    return _parse_line(line)[0]


def dumps_updated(line: str | None, old: dict, new: dict) -> str:
    """``json.dumps(new)`` for a row made as ``{**old, ...}`` (same keys first: values replaced, keys appended), where
    ``line`` is the stored text ``old`` was parsed from.

    The text before the first replaced value (for a candidate: its mask RLE and score vectors, most of the row) is
    reused from ``line`` instead of encoded again, once the rest of ``line`` is checked to be exactly the encoding of
    ``old``'s remaining items. The result equals ``json.dumps(new)`` byte for byte when ``line`` is
    ``json.dumps(old)`` (every line the store writes) and parses to ``new`` for any ``line`` that parses to ``old``.
    """
    keys, new_keys = list(old), list(new)
    if line is None or new_keys[:len(keys)] != keys:
        return json.dumps(new)
    j = next((i for i, k in enumerate(keys) if new[k] is not old[k]), len(keys))
    if j == 0:
        return json.dumps(new)
    new_tail = json.dumps({k: new[k] for k in new_keys[j:]})
    if j < len(keys):
        old_tail = json.dumps({k: old[k] for k in keys[j:]})[1:]
        if line.endswith(old_tail) and line[:-len(old_tail)].endswith(", "):
            return line[:-len(old_tail)] + new_tail[1:]
        return json.dumps(new)
    if not line.endswith("}"):
        return json.dumps(new)
    return line if len(new_keys) == len(keys) else line[:-1] + ", " + new_tail[1:]


def _line_key(line: bytes) -> str | None:
    """The image key of a candidate line without parsing the whole row (rows end with ``"key": "<key>"}``)."""
    i = line.rfind(_KEY_TAIL)
    if i >= 0 and line.endswith(b"}\n"):
        tail = line[i + len(_KEY_TAIL):-2]
        if _PLAIN_KEY.fullmatch(tail):
            return tail[1:-1].decode("ascii")  # a plain quoted ASCII key: what json.loads would return
        try:
            value = json.loads(tail)
            if isinstance(value, str):
                return value
        except ValueError:
            pass
    try:
        row = loads_line(line)
    except ValueError:
        return None
    key = row.get("key") if isinstance(row, dict) else None
    return key if isinstance(key, str) else None


@dataclass
class StoreIndex:
    """Where each finished image's rows lie in the shard files (byte offsets only, no row is kept).

    Building it reads every line once; `iter_images` then yields one image at a time, in (image_id, key) order
    whatever the shard layout, so a merge of any store size holds one image's candidates in memory (plus this
    index, a few numbers per image). Semantics equal the in-memory merge: an image key is taken from the first
    shard (file order) that finished it, torn or corrupt lines are skipped, at most ``n_candidates`` rows per image.
    """

    pairs: list[tuple[Path, Path]]
    # (image_id, key, pair index, done-row offset, candidate runs [(start, end)], n_candidates), sorted
    entries: list[tuple[int, str, int, int, list[tuple[int, int]], int]] = field(default_factory=list)
    per_shard: dict[str, int] = field(default_factory=dict)  # shard suffix -> finished images (after dedup)
    duplicates: dict[str, list[str]] = field(default_factory=dict)  # image key -> every shard suffix holding it

    @staticmethod
    def suffix(images_path: Path) -> str:
        return images_path.name[len("images."):-len(".jsonl")]

    @classmethod
    def build(cls, out_dir: str | os.PathLike) -> "StoreIndex":
        index = cls(shard_files(out_dir))
        seen: dict[str, list[str]] = {}
        entries = []
        for p, (images_path, cand_path) in enumerate(index.pairs):
            suffix = cls.suffix(images_path)
            done: dict[str, tuple[int, int, int]] = {}  # key -> (image_id, offset, n_candidates)
            with open(images_path, "rb") as handle:
                offset = 0
                for line in handle:
                    start, offset = offset, offset + len(line)
                    if not line.endswith(b"\n"):
                        continue
                    try:
                        row = loads_line(line)
                    except ValueError:
                        continue
                    if not isinstance(row, dict) or not isinstance(row.get("key"), str) or row["key"] in done:
                        continue
                    done[row["key"]] = (int(row.get("image_id", 0)), start, int(row.get("n_candidates", 0)))
            runs: dict[str, list[tuple[int, int]]] = {}
            if cand_path.exists():
                with open(cand_path, "rb") as handle:
                    offset, run_key, run_start = 0, None, 0
                    for line in handle:
                        start, offset = offset, offset + len(line)
                        key = _line_key(line) if line.endswith(b"\n") else None
                        if key != run_key:
                            if run_key in done:
                                runs.setdefault(run_key, []).append((run_start, start))
                            run_key, run_start = key, start
                    if run_key in done:
                        runs.setdefault(run_key, []).append((run_start, offset))
            kept = 0
            for key, (image_id, start, n_cand) in done.items():
                holders = seen.setdefault(key, [])
                holders.append(suffix)
                if len(holders) == 1:
                    entries.append((image_id, key, p, start, runs.get(key, []), n_cand))
                    kept += 1
            index.per_shard[suffix] = kept
        index.duplicates = {k: v for k, v in seen.items() if len(v) > 1}
        entries.sort(key=lambda e: (e[0], e[1]))
        index.entries = entries
        return index

    def __len__(self) -> int:
        return len(self.entries)

    def iter_images(self) -> Iterator[tuple[dict, list[dict]]]:
        """(done row, candidate rows) per finished image, one image at a time."""
        for image_row, rows, _ in self.iter_images_with_text():
            yield image_row, rows

    def iter_images_with_text(self) -> Iterator[tuple[dict, list[dict], list[str | None]]]:
        """`iter_images` plus each candidate row's stored text (None where the line was not plain UTF-8), for
        `dumps_updated`."""
        handles: dict[int, tuple[Any, Any]] = {}
        try:
            for _, key, p, image_offset, runs, n_cand in self.entries:
                if p not in handles:
                    images_path, cand_path = self.pairs[p]
                    handles[p] = (open(images_path, "rb"), open(cand_path, "rb") if cand_path.exists() else None)
                img_handle, cand_handle = handles[p]
                img_handle.seek(image_offset)
                image_row = loads_line(img_handle.readline())
                rows: list[dict] = []
                texts: list[str | None] = []
                for start, end in runs:
                    if len(rows) >= n_cand or cand_handle is None:
                        break
                    cand_handle.seek(start)
                    for line in cand_handle.read(end - start).splitlines():
                        try:
                            row, text = _parse_line(line)
                        except ValueError:
                            continue
                        if isinstance(row, dict) and row.get("key") == key and len(rows) < n_cand:
                            rows.append(row)
                            texts.append(text)
                yield image_row, rows, texts
        finally:
            for pair in handles.values():
                for handle in pair:
                    if handle is not None:
                        handle.close()
