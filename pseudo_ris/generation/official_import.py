"""Import the outputs of the official Pseudo-RIS code (Seonghoon-Yu/Pseudo-RIS) as our pseudo-label dataset.

The official pipeline writes

* masks: ``<masks>/<img_id>/<j>.png``, j = 0..N-1, grayscale 0/255, image-sized;
* captions: one JSON object per line (``distinctive_captions_*.json``), or the same rows as CSV
  (``pandas.to_csv``: list fields as Python literals), with ``img_name, img_id, seg_id, num_sent,
  pseudo_caption[], doc[], one_mask``.

Its reader's semantics, which the import reproduces: ``seg_id`` indexes the image's masks that are not constant
(a PNG with a single value is skipped), in file order 0..N-1; for ``one_mask == 0`` the captions with
``doc > 1`` are the candidates, and when none passes it draws a random caption; for ``one_mask == 1`` (an image
with a single mask, where ``doc`` holds the CLIP score) the top ``num_sent // 2`` captions by that score are
kept. The official reader draws a new random caption each time the mask is drawn; here the fallback is one
seeded random caption per mask (``filter.fallback``), exactly as our own generation filter does, through the same
``select_candidates``. Masks are binarised at 128 (the official loader uses ``png / 255`` as a soft target).

Everything is validated before anything is written (bad lines, missing or wrongly sized masks, DoC lists whose
length differs from the captions: one error naming the line or file); the dataset is written into a temporary
directory next to the destination and renamed into place at the end.
"""

from __future__ import annotations

import ast
import csv
import dataclasses
import json
import os
import re
import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from PIL import Image, UnidentifiedImageError

from pseudo_ris.data.errors import PseudoRISError
from pseudo_ris.data.masks import mask_to_bbox, mask_to_rle
from pseudo_ris.data.refer import make_sentence, write_refer_dataset
from pseudo_ris.filtering.doc import FilterPolicy, select_candidates

FIELDS = ("img_name", "img_id", "seg_id", "num_sent", "pseudo_caption", "doc")
CATEGORY = {"id": 1, "name": "object", "supercategory": "object"}


class OfficialImportError(PseudoRISError):
    """The official files are malformed or inconsistent (named line or file)."""


@dataclass(frozen=True)
class CaptionRow:
    """One validated line of the official captions file (one mask of one image)."""

    line: int
    img_name: str
    img_id: int
    seg_id: int
    captions: list[str]
    doc: list[float]
    one_mask: bool


# ---------------------------------------------------------------------------------------------------- captions
def _literal(value: Any) -> Any:
    """CSV cells hold Python literals (``pandas.to_csv`` of lists); parse them without running anything."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    if text[:1] in "[(":
        try:
            return ast.literal_eval(text)
        except (ValueError, SyntaxError):
            return json.loads(text)
    return text


def _raw_rows(path: Path) -> Iterator[tuple[int, dict]]:
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        with open(path, encoding="utf-8") as handle:
            for number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise OfficialImportError(f"captions {path} line {number}: not a JSON object ({exc})") from None
                if not isinstance(row, dict):
                    raise OfficialImportError(f"captions {path} line {number}: expected a JSON object, got "
                                       f"{type(row).__name__}")
                yield number, row
    elif suffix == ".csv":
        with open(path, encoding="utf-8", newline="") as handle:
            reader = csv.DictReader(handle)
            missing = [f for f in FIELDS if f not in (reader.fieldnames or [])]
            if missing:
                raise OfficialImportError(f"captions {path} line 1: CSV header lacks {missing} (found {reader.fieldnames})")
            start = reader.line_num + 1
            for row in reader:
                try:
                    yield start, {k: _literal(v) for k, v in row.items() if k is not None}
                except (ValueError, SyntaxError) as exc:
                    raise OfficialImportError(f"captions {path} line {start}: cannot parse a list field ({exc})") from None
                start = reader.line_num + 1
    else:
        raise OfficialImportError(f"captions {path}: expected a .jsonl (one JSON object per line) or .csv file")


def _int(value: Any, name: str, where: str) -> int:
    if isinstance(value, bool):
        raise OfficialImportError(f"{where}: {name} must be an integer, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise OfficialImportError(f"{where}: {name} must be an integer, got {value!r}") from None
    if not number.is_integer():
        raise OfficialImportError(f"{where}: {name} must be an integer, got {value!r}")
    return int(number)


def read_captions(path: str | Path) -> list[CaptionRow]:
    """Every row of the official captions file, validated (errors name the line)."""
    path = Path(path)
    if not path.is_file():
        raise OfficialImportError(f"captions file {path} not found")
    rows: list[CaptionRow] = []
    seen: dict[tuple[int, int], int] = {}
    names: dict[int, tuple[str, int]] = {}
    for number, raw in _raw_rows(path):
        where = f"captions {path} line {number}"
        missing = [f for f in FIELDS if f not in raw or raw[f] is None or raw[f] == ""]
        if missing:
            raise OfficialImportError(f"{where}: missing field(s) {missing}")
        img_name = raw["img_name"]
        if isinstance(img_name, (list, tuple)) and len(img_name) == 1:  # refcoco+ variant: ['file.jpg']
            img_name = img_name[0]
        if not isinstance(img_name, str) or not img_name:
            raise OfficialImportError(f"{where}: img_name must be a file name, got {raw['img_name']!r}")
        img_id, seg_id = _int(raw["img_id"], "img_id", where), _int(raw["seg_id"], "seg_id", where)
        num_sent = _int(raw["num_sent"], "num_sent", where)
        captions, doc = raw["pseudo_caption"], raw["doc"]
        if not isinstance(captions, list) or not captions or not all(isinstance(c, str) for c in captions):
            raise OfficialImportError(f"{where}: pseudo_caption must be a non-empty list of strings")
        if not isinstance(doc, list) or not all(isinstance(d, (int, float)) and not isinstance(d, bool)
                                                for d in doc):
            raise OfficialImportError(f"{where}: doc must be a list of numbers")
        if len(doc) != len(captions):
            raise OfficialImportError(f"{where}: {len(doc)} DoC values for {len(captions)} captions")
        if num_sent != len(captions):
            raise OfficialImportError(f"{where}: num_sent is {num_sent} but there are {len(captions)} captions")
        one_mask = raw.get("one_mask", 0)  # absent in older files: the official reader then assumes 0
        one_mask = 0 if one_mask in (None, "") else _int(one_mask, "one_mask", where)
        if one_mask not in (0, 1):
            raise OfficialImportError(f"{where}: one_mask must be 0 or 1, got {one_mask}")
        if seg_id < 0:
            raise OfficialImportError(f"{where}: seg_id must be >= 0, got {seg_id}")
        if (img_id, seg_id) in seen:
            raise OfficialImportError(f"{where}: image {img_id} mask {seg_id} already given on line "
                               f"{seen[(img_id, seg_id)]}")
        seen[(img_id, seg_id)] = number
        if img_id in names and names[img_id][0] != img_name:
            raise OfficialImportError(f"{where}: image {img_id} is {img_name!r} here but {names[img_id][0]!r} on line "
                               f"{names[img_id][1]}")
        names.setdefault(img_id, (img_name, number))
        rows.append(CaptionRow(number, img_name, img_id, seg_id, [c.strip() for c in captions],
                               [float(d) for d in doc], bool(one_mask)))
    if not rows:
        raise OfficialImportError(f"captions {path} holds no rows")
    return rows


# ------------------------------------------------------------------------------------------------------- masks
def image_masks(mask_dir: Path, where: str) -> list[tuple[Path, np.ndarray]]:
    """The image's masks that the official code indexes with ``seg_id``: files 0..N-1.png, constant ones skipped."""
    if not mask_dir.is_dir():
        raise OfficialImportError(f"{where}: mask directory {mask_dir} not found")
    files = sorted(p for p in mask_dir.iterdir() if p.is_file())
    numbered = {int(p.stem): p for p in files if p.suffix.lower() == ".png" and re.fullmatch(r"\d+", p.stem)}
    if sorted(numbered) != list(range(len(files))):
        raise OfficialImportError(f"{where}: {mask_dir} must hold exactly 0.png .. {len(files) - 1}.png as the official "
                           f"code reads (found {[p.name for p in files][:10]})")
    masks = []
    for j in range(len(files)):
        try:
            with Image.open(numbered[j]) as img:
                pixels = np.asarray(img.convert("L"))
        except (UnidentifiedImageError, OSError) as exc:
            raise OfficialImportError(f"{where}: cannot read mask {numbered[j]} ({exc})") from None
        if pixels.min() == pixels.max():
            continue  # the official code skips constant masks: seg_id counts the others
        masks.append((numbered[j], pixels >= 128))
    return masks


def _image_size(path: Path, where: str) -> tuple[int, int]:
    if not path.is_file():
        raise OfficialImportError(f"{where}: image {path} not found")
    try:
        with Image.open(path) as img:
            width, height = img.size
    except (UnidentifiedImageError, OSError) as exc:
        raise OfficialImportError(f"{where}: cannot read image {path} ({exc})") from None
    return height, width


# ------------------------------------------------------------------------------------------------------ import
def _policy(cfg: dict[str, Any] | None) -> FilterPolicy:
    cfg = dict(cfg or {})
    try:
        return FilterPolicy(threshold=float(cfg.get("threshold", 1.0)), key="doc",
                            fallback=str(cfg.get("fallback", "random")), topk=int(cfg.get("topk", 1)),
                            single_mask="topk", seed=int(cfg.get("seed", 0)))
    except ValueError as exc:
        raise OfficialImportError(f"filter: {exc}") from None


def select_row(row: CaptionRow, policy: FilterPolicy) -> tuple[list[int], str]:
    """Indices of ``row``'s captions kept (the official reader's candidates) and why."""
    if row.one_mask:  # doc holds CLIP scores: the top half
        single = dataclasses.replace(policy, single_mask_topk=max(1, len(row.captions) // 2))
        scored = [{"doc": None, "correctness": d} for d in row.doc]
        return select_candidates(scored, single, f"{row.img_id}:{row.seg_id}")
    scored = [{"doc": d, "correctness": None} for d in row.doc]
    return select_candidates(scored, policy, f"{row.img_id}:{row.seg_id}")


def import_official(masks: str | Path, captions: str | Path, images: str | Path, out: str | Path, *,
                    name: str = "pseudo", filter_cfg: dict[str, Any] | None = None,
                    overwrite: bool = False) -> dict[str, Any]:
    """Build ``<out>/<name>`` (REFER layout, ``refs(pseudo).p``) from official Pseudo-RIS outputs; returns a summary.

    ``python tools/train.py data=pseudo pseudo_root=<out>`` then trains on it.
    """
    masks_dir, images_dir, out = Path(masks), Path(images), Path(out)
    policy = _policy(filter_cfg)
    for what, path in (("masks", masks_dir), ("images", images_dir)):
        if not path.is_dir():
            raise OfficialImportError(f"{what} directory {path} not found")
    target = out / name
    if target.exists() and not overwrite:
        raise OfficialImportError(f"{target} already exists; choose another out= or pass overwrite=true")
    rows = read_captions(captions)
    by_image: dict[int, list[CaptionRow]] = {}
    for row in rows:
        by_image.setdefault(row.img_id, []).append(row)

    image_records, anns, refs = [], [], []
    decisions: Counter = Counter()
    counts = Counter()
    sent_id = 0
    for img_id in sorted(by_image):
        img_rows = sorted(by_image[img_id], key=lambda r: r.seg_id)
        first = img_rows[0]
        where = f"captions {captions} line {first.line}"
        image_path = images_dir / first.img_name
        height, width = _image_size(image_path, where)
        masks_here = image_masks(masks_dir / str(img_id), where)
        counts["masks_read"] += len(masks_here)
        image_records.append({"id": img_id, "file_name": first.img_name, "height": height, "width": width})
        for row in img_rows:
            where = f"captions {captions} line {row.line}"
            if row.seg_id >= len(masks_here):
                raise OfficialImportError(f"{where}: seg_id {row.seg_id} but image {img_id} has {len(masks_here)} "
                                   f"non-constant masks in {masks_dir / str(img_id)}")
            mask_path, mask = masks_here[row.seg_id]
            if mask.shape != (height, width):
                raise OfficialImportError(f"{where}: mask {mask_path} is {mask.shape[1]}x{mask.shape[0]} but image "
                                   f"{image_path} is {width}x{height} (width x height)")
            if not mask.any():
                raise OfficialImportError(f"{where}: mask {mask_path} has no pixel >= 128 (not a 0/255 mask?)")
            keep, reason = select_row(row, policy)
            decisions[reason] += 1
            counts["captions"] += len(row.captions)
            if not keep:
                continue
            ann_id = len(anns) + 1
            anns.append({"id": ann_id, "image_id": img_id, "category_id": CATEGORY["id"],
                         "segmentation": mask_to_rle(mask), "area": int(mask.sum()), "bbox": mask_to_bbox(mask),
                         "iscrowd": 0, "pseudo": {"seg_id": row.seg_id, "mask_file": mask_path.name,
                                                  "one_mask": row.one_mask}})
            sentences = []
            for index in keep:
                sent_id += 1
                sentence = make_sentence(sent_id, row.captions[index])
                sentence.update({"doc": None if row.one_mask else row.doc[index],
                                 "clip_score": row.doc[index] if row.one_mask else None, "caption_index": index})
                sentences.append(sentence)
            refs.append({"ref_id": ann_id, "ann_id": ann_id, "image_id": img_id, "file_name": first.img_name,
                         "split": "train", "category_id": CATEGORY["id"],
                         "sent_ids": [s["sent_id"] for s in sentences], "sentences": sentences})
    if not refs:
        raise OfficialImportError(f"no mask of {captions} keeps a caption (filter {dataclasses.asdict(policy)})")
    summary = {"images": len(image_records), "rows": len(rows), "refs": len(refs),
               "sentences": sum(len(r["sentences"]) for r in refs), "captions": counts["captions"],
               "masks_read": counts["masks_read"], "mask_decisions": dict(decisions),
               "filter": {"threshold": policy.threshold, "fallback": policy.fallback, "topk": policy.topk,
                          "seed": policy.seed}}
    _write_atomically(out, name, overwrite, image_records, anns, refs, images_dir, {
        "imported_from": {"format": "official Pseudo-RIS", "captions": str(Path(captions).resolve()),
                          "masks": str(masks_dir.resolve())}, "summary": summary})
    return summary


def _write_atomically(out: Path, name: str, overwrite: bool, images: list[dict], anns: list[dict],
                      refs: list[dict], images_dir: Path, info: dict) -> Path:
    """Write the dataset into a temporary directory beside ``out/name``, then rename it into place."""
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.import-", dir=out))
    try:
        write_refer_dataset(staging, name, split_by="pseudo", images=images, annotations=anns,
                            categories=[CATEGORY], refs=refs, image_dir=str(images_dir.resolve()), extra_info=info)
        target = out / name
        old = None
        if target.exists():
            if not overwrite:
                raise OfficialImportError(f"{target} already exists; choose another out= or pass overwrite=true")
            old = out / f".{name}.old-{os.getpid()}"
            os.replace(target, old)
        os.replace(staging / name, target)
        if old is not None:
            shutil.rmtree(old)
        return target
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def format_summary(summary: dict[str, Any]) -> str:
    decisions = ", ".join(f"{k} {v}" for k, v in sorted(summary["mask_decisions"].items()))
    return (f"{summary['rows']} masks of {summary['images']} images -> {summary['refs']} refs, "
            f"{summary['sentences']} of {summary['captions']} captions kept ({decisions})")
