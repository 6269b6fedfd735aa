"""Read and write the REFER layout shared by RefCOCO, RefCOCO+, RefCOCOg, SynthRef and our pseudo labels.

Layout (as in lichengunc/refer)::

    <root>/<dataset>/refs(<split_by>).p    pickled list of refs
    <root>/<dataset>/instances.json        COCO images / annotations / categories
    <root>/images/...                      images (location per dataset, see ``DATASETS``)

A ref is ``{ref_id, ann_id, image_id, file_name, split, category_id, sent_ids,
sentences: [{sent_id, sent, raw, tokens}]}``. Generation writes pseudo labels through ``write_refer_dataset``
and training reads everything through ``ReferDataset``: one reader, one writer, one format.

Datasets written by this project also carry ``dataset_info.json`` naming their image directory, so pseudo-label
datasets can reference the images of another dataset (or any folder) instead of copying them.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Iterable

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import EmptyMaskError, GeometryError, ReferDataError, UnknownDatasetError
from .io import atomic_write_json, atomic_write_pickle
from .masks import decode_segmentation, rasterize_polygons_pil, refer_segmentation, segmentation_problem
from .safe_load import UnreadableFileError, UnsafeFileError, load_plain_pickle

# Order in which evaluation splits are listed (anything else sorts after these, alphabetically).
_SPLIT_ORDER = ["train", "val", "testA", "testB", "test", "unseen"]

REF_KEYS = ("ref_id", "ann_id", "image_id", "split", "sent_ids", "sentences")


@dataclass(frozen=True)
class DatasetSpec:
    """Where a known dataset lives under the data root and how it is split."""

    dirname: str
    split_by: str
    image_dir: str  # relative to the data root


DATASETS: dict[str, DatasetSpec] = {
    "refcoco": DatasetSpec("refcoco", "unc", "images/mscoco/images/train2014"),
    "refcoco+": DatasetSpec("refcoco+", "unc", "images/mscoco/images/train2014"),
    "refcocog": DatasetSpec("refcocog", "umd", "images/mscoco/images/train2014"),
    "synthref": DatasetSpec("synthref", "unc", "images/synthref"),
    "synthref+": DatasetSpec("synthref+", "unc", "images/synthref"),
    "synthrefg": DatasetSpec("synthrefg", "umd", "images/synthref"),
    "synthref_pool": DatasetSpec("synthref_pool", "unc", "images/synthref"),
}

DATASET_INFO = "dataset_info.json"


@dataclass(frozen=True)
class ReferSample:
    """One (ref, sentence) pair: the unit that RIS evaluation scores."""

    ref_id: int
    ann_id: int
    image_id: int
    sent_id: int
    sentence: str
    split: str


def _split_key(split: str) -> tuple[int, str]:
    return (_SPLIT_ORDER.index(split) if split in _SPLIT_ORDER else len(_SPLIT_ORDER), split)


def tokenize_words(text: str) -> list[str]:
    """REFER-style tokens: lower-case words, punctuation dropped."""
    return re.findall(r"[a-z0-9]+(?:'[a-z]+)?", text.lower())


def make_sentence(sent_id: int, text: str) -> dict:
    """A REFER sentence record for ``text``."""
    tokens = tokenize_words(text)
    return {"sent_id": int(sent_id), "sent": " ".join(tokens), "raw": text, "tokens": tokens}


def _load_pickle(path: Path) -> Any:
    """Refs pickles are plain data: read without running code (a payload is refused, naming the file)."""
    try:
        return load_plain_pickle(path, what="refs file")
    except (UnsafeFileError, UnreadableFileError) as exc:
        raise ReferDataError(str(exc)) from None


def _load_json(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except json.JSONDecodeError as exc:
        raise ReferDataError(f"{path} is not valid JSON (truncated?): {exc}") from exc


class ReferDataset:
    """A REFER-layout dataset (RefCOCO/+/g, SynthRef, or a generated pseudo-label set).

    Args:
        data_root: directory holding ``<dataset>/`` and ``images/``.
        dataset: a name from ``DATASETS`` or any directory name under ``data_root``.
        split_by: refs file suffix (``unc``, ``umd``, ``google``, ``pseudo``); defaults to the dataset's own.
        image_dir: override for where images live (absolute, or relative to ``data_root``).
    """

    #: how polygon annotations are rasterized: ``coco`` (pycocotools, as REFER) or ``pil`` (VGPhraseCut's API)
    polygon_raster: str = "coco"

    def __init__(self, data_root: str | Path, dataset: str, split_by: str | None = None,
                 image_dir: str | Path | None = None, check_geometry: bool = True) -> None:
        self.check_geometry = check_geometry  # False: open anyway and list problems (tools/doctor.py)
        self.data_root = Path(data_root).expanduser()
        self.name = dataset
        spec = DATASETS.get(dataset)
        self.dataset_dir = self.data_root / (spec.dirname if spec else dataset)
        if not self.dataset_dir.is_dir():
            known = sorted(DATASETS)
            present = sorted(p.name for p in self.data_root.iterdir() if p.is_dir()) if self.data_root.is_dir() else []
            if spec is None:
                raise UnknownDatasetError(
                    f"unknown dataset {dataset!r}: not a registered name ({', '.join(known)}) and no directory "
                    f"{self.dataset_dir} (found under {self.data_root}: {present or 'nothing'})")
            raise ReferDataError(f"dataset {dataset!r} not found: expected directory {self.dataset_dir} "
                                 f"(data_root={self.data_root}; found: {present or 'nothing'})")
        info_path = self.dataset_dir / DATASET_INFO
        self.info: dict = _load_json(info_path) if info_path.exists() else {}
        self.split_by = split_by or self.info.get("split_by") or (spec.split_by if spec else None)
        if self.split_by is None:
            found = sorted(p.name for p in self.dataset_dir.glob("refs(*).p"))
            if len(found) != 1:
                raise ReferDataError(f"cannot tell which refs file to use in {self.dataset_dir} "
                                     f"(found {found or 'none'}); pass split_by")
            self.split_by = found[0][len("refs("):-len(").p")]
        self.refs_path = self.dataset_dir / f"refs({self.split_by}).p"
        self.instances_path = self.dataset_dir / "instances.json"
        self.image_dir = self._resolve_image_dir(image_dir, spec)
        self._load()

    @classmethod
    def from_records(cls, name: str, *, images: list[dict], annotations: list[dict], categories: list[dict],
                     refs: list[dict], image_dir: str | Path, source: str | Path, split_by: str,
                     polygon_raster: str = "coco", check_geometry: bool = True) -> "ReferDataset":
        """A dataset from in-memory REFER records (readers of other layouts, e.g. VGPhraseCut, translate into
        these), checked exactly like a dataset read from disk; ``source`` names the file(s) in messages."""
        self = cls.__new__(cls)
        self.name = name
        self.data_root = self.dataset_dir = Path(source)
        self.info = {}
        self.split_by = split_by
        self.refs_path = self.instances_path = Path(source)
        self.image_dir = Path(image_dir)
        self.polygon_raster = polygon_raster
        self.check_geometry = check_geometry
        self._index(images, annotations, categories, refs)
        return self

    # ------------------------------------------------------------------ loading
    def _resolve_image_dir(self, image_dir: str | Path | None, spec: DatasetSpec | None) -> Path:
        if image_dir is not None:
            path = Path(image_dir).expanduser()
            return path if path.is_absolute() else self.data_root / path
        if "image_dir" in self.info:
            path = Path(self.info["image_dir"]).expanduser()
            return path if path.is_absolute() else (self.dataset_dir / path).resolve()
        return self.data_root / (spec.image_dir if spec else "images")

    def _load(self) -> None:
        if not self.refs_path.exists():
            found = sorted(p.name for p in self.dataset_dir.glob("refs(*).p"))
            raise ReferDataError(f"refs file {self.refs_path} not found (available: {found or 'none'})")
        if not self.instances_path.exists():
            raise ReferDataError(f"instances file {self.instances_path} not found")
        refs = _load_pickle(self.refs_path)
        if not isinstance(refs, list):
            raise ReferDataError(f"refs file {self.refs_path} holds a {type(refs).__name__}, expected a list of refs")
        instances = _load_json(self.instances_path)
        for key in ("images", "annotations"):
            if key not in instances:
                raise ReferDataError(f"{self.instances_path} has no {key!r} list (keys: {sorted(instances)})")
        self._index(instances["images"], instances["annotations"], instances.get("categories", []), refs)

    def _index(self, images: list[dict], annotations: list[dict], categories: list[dict], refs: list) -> None:
        """Index the records and check them (before any training or evaluation starts)."""
        self.images: dict[int, dict] = {int(img["id"]): img for img in images}
        self.anns: dict[int, dict] = {int(ann["id"]): ann for ann in annotations}
        self.categories: dict[int, dict] = {int(c["id"]): c for c in categories}
        for index, ref in enumerate(refs):
            if not isinstance(ref, dict):
                raise ReferDataError(f"refs file {self.refs_path}: ref #{index} is a {type(ref).__name__} "
                                     f"({ref!r:.40}), expected a dict with keys {list(REF_KEYS)}")
            missing = [k for k in REF_KEYS if k not in ref]
            if missing:
                raise ReferDataError(f"ref #{index} in {self.refs_path} lacks keys {missing}")
            if int(ref["ann_id"]) not in self.anns:
                raise ReferDataError(f"ref {ref['ref_id']} in {self.refs_path} points to annotation "
                                     f"{ref['ann_id']}, which is not in {self.instances_path}")
            if int(ref["image_id"]) not in self.images:
                raise ReferDataError(f"ref {ref['ref_id']} in {self.refs_path} points to image "
                                     f"{ref['image_id']}, which is not in {self.instances_path}")
        self.refs: list[dict] = refs
        problems = self.geometry_problems(limit=1) if self.check_geometry else []
        if problems:
            raise GeometryError(problems[0] + " (python tools/doctor.py lists every problem)")

    def geometry_problems(self, limit: int | None = None) -> list[str]:
        """One line per annotation or ref whose geometry cannot be right (no decoding, no file access):
        an annotation of an image missing from the images list, a ref whose annotation lies on another image,
        an RLE of another size than its image, a malformed or degenerate polygon list."""
        problems: list[str] = []
        where = self.instances_path
        for ann_id, ann in self.anns.items():
            image = self.images.get(int(ann.get("image_id", -1)))
            if image is None:
                problems.append(f"annotation {ann_id} in {where} is on image {ann.get('image_id')}, which is not "
                                "in its images list")
            elif self.polygon_raster == "coco" and "segmentation" not in ann:
                problems.append(f"annotation {ann_id} in {where} has no segmentation")
            elif self.polygon_raster == "coco":
                why = segmentation_problem(ann["segmentation"], int(image["height"]), int(image["width"]))
                if why:
                    problems.append(f"annotation {ann_id} (image {ann['image_id']}, {image.get('file_name')}) "
                                    f"in {where}: {why}")
            if limit is not None and len(problems) >= limit:
                return problems
        for ref in self.refs:
            ann = self.anns[int(ref["ann_id"])]
            if int(ann["image_id"]) != int(ref["image_id"]):
                problems.append(f"ref {ref['ref_id']} in {self.refs_path} is on image {ref['image_id']} but its "
                                f"annotation {ref['ann_id']} is on image {ann['image_id']} ({where})")
                if limit is not None and len(problems) >= limit:
                    break
        return problems

    def missing_image_files(self, refs: Iterable[dict] | None = None) -> list[Path]:
        """Image files (of ``refs``, default every ref) that do not exist; checked before training starts."""
        ids = sorted({int(r["image_id"]) for r in (self.refs if refs is None else refs)})
        return [path for path in (self.image_path(i) for i in ids) if not path.is_file()]

    def check_image_files(self, refs: Iterable[dict] | None = None) -> None:
        """Raise ``ReferDataError`` naming the first missing image file (and how many are missing)."""
        missing = self.missing_image_files(refs)
        if missing:
            more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
            raise ReferDataError(f"image file {missing[0]}{more} of {self.name} not found (image_dir "
                                 f"{self.image_dir}; python tools/doctor.py lists every problem)")

    # ------------------------------------------------------------------ indexes
    @cached_property
    def refs_by_id(self) -> dict[int, dict]:
        return {int(ref["ref_id"]): ref for ref in self.refs}

    @cached_property
    def refs_by_image(self) -> dict[int, list[dict]]:
        index: dict[int, list[dict]] = {}
        for ref in self.refs:
            index.setdefault(int(ref["image_id"]), []).append(ref)
        return index

    @cached_property
    def anns_by_image(self) -> dict[int, list[dict]]:
        index: dict[int, list[dict]] = {}
        for ann in self.anns.values():
            index.setdefault(int(ann["image_id"]), []).append(ann)
        return index

    @property
    def splits(self) -> list[str]:
        return sorted({ref["split"] for ref in self.refs}, key=_split_key)

    @property
    def eval_splits(self) -> list[str]:
        """Every split except ``train``, in the customary order (val, testA, testB, test, ...)."""
        return [s for s in self.splits if s != "train"]

    def refs_in_split(self, split: str) -> list[dict]:
        refs = [ref for ref in self.refs if ref["split"] == split]
        if not refs and split not in self.splits:
            raise ReferDataError(f"split {split!r} not in {self.refs_path} (splits: {self.splits})")
        return refs

    def samples(self, split: str) -> list[ReferSample]:
        """One sample per sentence of every ref in ``split`` (evaluation scores every sentence)."""
        return [ReferSample(int(ref["ref_id"]), int(ref["ann_id"]), int(ref["image_id"]), int(sent["sent_id"]),
                            sent["sent"] if sent.get("sent") else sent.get("raw", ""), ref["split"])
                for ref in self.refs_in_split(split) for sent in ref["sentences"]]

    # ------------------------------------------------------------------ pixels
    def image_path(self, image_id: int) -> Path:
        try:
            image = self.images[int(image_id)]
        except KeyError:
            raise ReferDataError(f"image id {image_id} not in {self.instances_path}") from None
        return self.image_dir / image["file_name"]

    def load_image(self, image_id: int) -> np.ndarray:
        """RGB uint8 ``[H, W, 3]``; a missing or corrupt file raises ``ReferDataError`` naming it."""
        return load_rgb(self.image_path(image_id), what=f"image {image_id} of {self.name}")

    def ann_mask(self, ann_id: int) -> np.ndarray:
        try:
            ann = self.anns[int(ann_id)]
        except KeyError:
            raise ReferDataError(f"annotation {ann_id} not in {self.instances_path}") from None
        image = self.images[int(ann["image_id"])]
        height, width = int(image["height"]), int(image["width"])
        try:
            if self.polygon_raster == "pil":
                mask = rasterize_polygons_pil(ann["segmentation"], height, width)
            else:
                mask = decode_segmentation(ann["segmentation"], height, width)
        except Exception as exc:  # pycocotools raises bare TypeErrors / ValueErrors on malformed input
            raise ReferDataError(f"annotation {ann_id} in {self.instances_path} has a malformed segmentation: "
                                 f"{exc}") from exc
        if not mask.any():
            raise EmptyMaskError(f"annotation {ann_id} (image {ann['image_id']}) in {self.instances_path} "
                                 "decodes to an empty mask")
        return mask

    def ref_mask(self, ref: dict | int) -> np.ndarray:
        if not isinstance(ref, dict):
            ref = self.refs_by_id[int(ref)]
        try:
            return self.ann_mask(int(ref["ann_id"]))
        except EmptyMaskError as exc:
            raise EmptyMaskError(f"ref {ref['ref_id']}: {exc}") from exc

    def __repr__(self) -> str:
        return (f"ReferDataset({self.name!r}, split_by={self.split_by!r}, refs={len(self.refs)}, "
                f"images={len(self.images)}, splits={self.splits})")


def load_rgb(path: str | Path, what: str = "image") -> np.ndarray:
    """Decode an image file to RGB uint8, with errors that name the file."""
    path = Path(path)
    if not path.exists():
        raise ReferDataError(f"{what}: file {path} not found")
    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ReferDataError(f"{what}: cannot decode {path} (corrupt or truncated?): {exc}") from exc


def _check_refs(refs: Iterable[dict], anns: dict[int, dict], name: str) -> None:
    for ref in refs:
        missing = [k for k in REF_KEYS if k not in ref]
        if missing:
            raise ReferDataError(f"cannot write {name}: ref {ref.get('ref_id')} lacks keys {missing}")
        if int(ref["ann_id"]) not in anns:
            raise ReferDataError(f"cannot write {name}: ref {ref['ref_id']} points to missing annotation "
                                 f"{ref['ann_id']}")
        if [s["sent_id"] for s in ref["sentences"]] != list(ref["sent_ids"]):
            raise ReferDataError(f"cannot write {name}: ref {ref['ref_id']} sent_ids do not match its sentences")


def _refer_annotation(ann: dict, image_by_id: dict[int, dict], name: str) -> dict:
    image = image_by_id.get(int(ann["image_id"]))
    if image is None:
        raise GeometryError(f"cannot write {name}: annotation {ann['id']} is on image {ann['image_id']}, which is "
                            "not in the images list")
    height, width = int(image["height"]), int(image["width"])
    why = segmentation_problem(ann["segmentation"], height, width)
    if why:
        raise GeometryError(f"cannot write {name}: annotation {ann['id']} (image {ann['image_id']}): {why}")
    return {**ann, "segmentation": refer_segmentation(ann["segmentation"], height, width)}


def write_refer_dataset(root: str | Path, name: str, *, split_by: str, images: list[dict],
                        annotations: list[dict], categories: list[dict], refs: list[dict],
                        image_dir: str | Path | None = None, extra_info: dict | None = None) -> Path:
    """Write ``<root>/<name>/refs(<split_by>).p``, ``instances.json`` and ``dataset_info.json`` atomically.

    ``image_dir`` (absolute, or relative to the dataset directory) is recorded so readers find the images
    without copying them. Refs get ``file_name`` and ``category_id`` filled in from images/annotations if absent.
    Segmentations are written in the form REFER's ``getMask`` decodes (``masks.refer_segmentation``).
    Returns the dataset directory.
    """
    out = Path(root) / name
    image_by_id = {int(i["id"]): i for i in images}
    annotations = [_refer_annotation(a, image_by_id, str(out)) for a in annotations]
    anns = {int(a["id"]): a for a in annotations}
    refs = [dict(ref) for ref in refs]
    for ref in refs:
        ref.setdefault("file_name", image_by_id[int(ref["image_id"])]["file_name"])
        ref.setdefault("category_id", anns[int(ref["ann_id"])]["category_id"] if int(ref["ann_id"]) in anns else 0)
    _check_refs(refs, anns, str(out))
    info = {"name": name, "split_by": split_by, **(extra_info or {})}
    if image_dir is not None:
        info["image_dir"] = str(image_dir)
    # instances first, refs last: a reader that finds the refs file finds a complete dataset
    atomic_write_json(out / "instances.json", {"images": images, "annotations": annotations,
                                               "categories": categories})
    atomic_write_json(out / DATASET_INFO, info, indent=2)
    atomic_write_pickle(out / f"refs({split_by}).p", refs)
    return out
