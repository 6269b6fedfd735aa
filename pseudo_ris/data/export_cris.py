"""Export a REFER-layout dataset (ours: SynthRef, pseudo labels; or RefCOCO) to the layout CRIS-style code reads.

CRIS (DerrickWang005/CRIS.pytorch, ``tools/data_process.py``) and the official Pseudo-RIS code (its copy) turn
REFER data into::

    <out>/anns/<dataset>/<split>.json    list of {bbox: [x0, y0, x1, y1] (ints), cat, segment_id (= ref_id),
                                           img_name, sentences: [{idx, sent_id, sent}], sentences_num}
    <out>/masks/<dataset>/<ref_id>.png   image-sized grayscale mask, 0 / 255

after which their ``folder2lmdb.py -j anns/<dataset>/<split>.json -i <image dir> -m masks/<dataset>`` packs it.
``cat`` is the 0-based rank of the ref's category id among the dataset's category ids, which for COCO's 80
categories is exactly the remapping ``data_process`` applies. Masks are our reader's (the union of the parts;
``data_process`` writes 254 where two polygons overlap, read as foreground by CRIS's loader too).

Written into a temporary directory under ``<out>`` and renamed into place at the end (masks first, then the
annotation files, so a present ``anns/<dataset>`` always has its masks).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from .errors import PseudoRISError, ReferDataError
from .io import atomic_write_text
from .refer import ReferDataset


class ExportError(PseudoRISError):
    """The export cannot be written (existing destination, unknown split, undecodable mask)."""


def cris_record(ds: ReferDataset, ref: dict, cat_index: dict[int, int]) -> dict[str, Any]:
    """One entry of a CRIS ``anns/<dataset>/<split>.json`` file."""
    ann = ds.anns[int(ref["ann_id"])]
    x, y, w, h = (int(v) for v in ann["bbox"])  # data_process truncates each value, then adds
    sentences = [{"idx": i, "sent_id": int(s["sent_id"]), "sent": str(s.get("sent") or s.get("raw", "")).strip()}
                 for i, s in enumerate(ref["sentences"])]
    category = int(ref.get("category_id", ann.get("category_id", 0)))
    return {"bbox": [x, y, x + w, y + h], "cat": cat_index.get(category, category),
            "segment_id": int(ref["ref_id"]), "img_name": ds.images[int(ref["image_id"])]["file_name"],
            "sentences": sentences, "sentences_num": len(sentences)}


def export_cris(ds: ReferDataset, out: str | Path, name: str | None = None, splits: Sequence[str] | None = None,
                overwrite: bool = False) -> dict[str, int]:
    """Write ``ds`` in CRIS's ``anns`` + ``masks`` layout under ``out``; returns refs per split."""
    out, name = Path(out), name or ds.name
    splits = list(splits) if splits else ds.splits
    unknown = [s for s in splits if s not in ds.splits]
    if unknown:
        raise ExportError(f"split(s) {unknown} not in {ds.refs_path} (splits: {ds.splits})")
    targets = {"masks": out / "masks" / name, "anns": out / "anns" / name}
    existing = [str(p) for p in targets.values() if p.exists()]
    if existing and not overwrite:
        raise ExportError(f"{', '.join(existing)} already exist(s); choose another out= or pass overwrite=true")
    ds.check_image_files([r for r in ds.refs if r["split"] in splits])
    cat_index = {cid: rank for rank, cid in enumerate(sorted(ds.categories))}
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.export-", dir=out))
    try:
        (staging / "masks").mkdir()
        (staging / "anns").mkdir()
        counts = {}
        for split in splits:
            records = []
            for ref in ds.refs_in_split(split):
                try:
                    mask = ds.ref_mask(ref)
                except ReferDataError as exc:
                    raise ExportError(f"cannot export ref {ref['ref_id']}: {exc}") from None
                Image.fromarray(mask.astype(np.uint8) * 255).save(staging / "masks" / f"{int(ref['ref_id'])}.png")
                records.append(cris_record(ds, ref, cat_index))
            atomic_write_text(staging / "anns" / f"{split}.json", json.dumps(records))
            counts[split] = len(records)
        for key in ("masks", "anns"):
            _replace_dir(staging / key, targets[key])
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return counts


def _replace_dir(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    old = None
    if target.exists():
        old = target.parent / f".{target.name}.old-{os.getpid()}"
        os.replace(target, old)
    os.replace(source, target)
    if old is not None:
        shutil.rmtree(old)


def lmdb_commands(out: str | Path, name: str, image_dir: str | Path, splits: Sequence[str]) -> list[str]:
    """The ``folder2lmdb.py`` lines a CRIS user runs next (printed by the export tool)."""
    out = Path(out)
    return [f"python tools/folder2lmdb.py -j {out / 'anns' / name / f'{s}.json'} -i {image_dir} "
            f"-m {out / 'masks' / name} -o {out / 'lmdb' / name}" for s in splits]
