"""Write a REFER-layout dataset one image at a time, so a dataset of any size is written in bounded memory.

The files are the ones `write_refer_dataset` writes (``instances.json``, ``dataset_info.json``,
``refs(<split_by>).p``) and read back identically: ``instances.json`` is byte-identical to ``json.dumps`` of the
whole dict; the refs pickle is one protocol-2 list built from per-ref pickles (``EMPTY_LIST``, then batches of
``MARK <refs> APPENDS``), which unpickles to the same list. Everything goes to temporary files in the dataset
directory (``.<name>.*.tmp``) and is renamed into place at `close`, instances first and refs last, so a reader that
finds the refs file finds a complete dataset; a killed writer leaves only temporary files, which
`pseudo_ris.generation.store.remove_stale_temps` cleans at the next start.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import tempfile
from pathlib import Path
from typing import IO, Any

from .io import _umask, atomic_write_json
from .refer import DATASET_INFO, _check_refs, _refer_annotation

_PROTO2 = b"\x80\x02"
_EMPTY_LIST, _MARK, _APPENDS, _STOP = b"]", b"(", b"e", b"."


def refer_file_names(split_by: str) -> list[str]:
    """The files of a REFER dataset written with ``split_by`` (for cleaning their temporary files)."""
    return ["instances.json", DATASET_INFO, f"refs({split_by}).p"]


def _pickle_body(obj: Any) -> bytes:
    """Opcodes that push ``obj`` (a protocol-2 pickle without its PROTO header and STOP)."""
    data = pickle.dumps(obj, protocol=2)
    assert data.startswith(_PROTO2) and data.endswith(_STOP)
    return data[2:-1]


class ReferStreamWriter:
    """``add(images, annotations, refs)`` per image (refs complete: file_name and category_id set), then ``close``.

    Annotations are checked and normalised exactly as `write_refer_dataset` does (``_refer_annotation``)."""

    def __init__(self, root: str | Path, name: str, *, split_by: str, categories: list[dict],
                 image_dir: str | Path | None = None, refs_per_batch: int = 1000) -> None:
        self.out = Path(root) / name
        self.out.mkdir(parents=True, exist_ok=True)
        self.split_by = split_by
        self.name = name
        self.categories = categories
        self.image_dir = image_dir
        self.refs_per_batch = refs_per_batch
        self._images = self._temp("instances.json")
        self._anns = self._temp("instances.json")
        self._refs = self._temp(f"refs({split_by}).p")
        self._refs[1].write(_PROTO2 + _EMPTY_LIST)
        self._batch: list[bytes] = []
        self._n_images = self._n_anns = self.n_refs = 0

    def _temp(self, name: str) -> tuple[str, IO[bytes]]:
        fd, path = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=self.out)
        return path, os.fdopen(fd, "wb")

    @staticmethod
    def _json_items(handle: IO[bytes], items: list[dict], count: int) -> int:
        for item in items:
            handle.write((", " if count else "").encode() + json.dumps(item).encode("utf-8"))
            count += 1
        return count

    def add(self, images: list[dict], annotations: list[dict], refs: list[dict]) -> None:
        """Append one image's records (its annotations lie on ``images``; checked as `write_refer_dataset` does)."""
        image_by_id = {int(i["id"]): i for i in images}
        annotations = [_refer_annotation(a, image_by_id, str(self.out)) for a in annotations]
        _check_refs(refs, {int(a["id"]): a for a in annotations}, str(self.out))
        self._n_images = self._json_items(self._images[1], images, self._n_images)
        self._n_anns = self._json_items(self._anns[1], annotations, self._n_anns)
        for ref in refs:
            self._batch.append(_pickle_body(ref))
            self.n_refs += 1
            if len(self._batch) >= self.refs_per_batch:
                self._flush_refs()

    def _flush_refs(self) -> None:
        if self._batch:
            self._refs[1].write(_MARK + b"".join(self._batch) + _APPENDS)
            self._batch = []

    def close(self, extra_info: dict | None = None) -> Path:
        """Assemble and rename the files into place (instances, info, refs last); returns the dataset directory."""
        self._flush_refs()
        self._refs[1].write(_STOP)
        for _, handle in (self._images, self._anns):
            handle.flush()
        fd, inst_tmp = tempfile.mkstemp(prefix=".instances.json.", suffix=".tmp", dir=self.out)
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(b'{"images": [')
                with open(self._images[0], "rb") as part:
                    shutil.copyfileobj(part, out, 1 << 20)
                out.write(b'], "annotations": [')
                with open(self._anns[0], "rb") as part:
                    shutil.copyfileobj(part, out, 1 << 20)
                out.write(b'], "categories": ' + json.dumps(self.categories).encode("utf-8") + b"}")
                out.flush()
                os.fsync(out.fileno())
            os.chmod(inst_tmp, 0o666 & ~_umask())
            os.replace(inst_tmp, self.out / "instances.json")
        except BaseException:
            if os.path.exists(inst_tmp):
                os.unlink(inst_tmp)
            raise
        info = {"name": self.name, "split_by": self.split_by, **(extra_info or {})}
        if self.image_dir is not None:
            info["image_dir"] = str(self.image_dir)
        atomic_write_json(self.out / DATASET_INFO, info, indent=2)
        refs_tmp, handle = self._refs
        handle.flush()
        os.fsync(handle.fileno())
        handle.close()
        os.chmod(refs_tmp, 0o666 & ~_umask())
        os.replace(refs_tmp, self.out / f"refs({self.split_by}).p")
        self.abort()  # removes the two fragment files
        return self.out

    def abort(self) -> None:
        """Close and delete every temporary file still present (nothing half-written is left behind)."""
        for path, handle in (self._images, self._anns, self._refs):
            if not handle.closed:
                handle.close()
            if os.path.exists(path):
                os.unlink(path)
