"""VGPhraseCut v0 (ChenyunWu/PhraseCutDataset), the paper's unseen-domain benchmark, read as a REFER dataset.

Layout (as the PhraseCut API expects, ``<clone>/data/VGPhraseCut_v0/``)::

    <dir>/image_data_split.json     [{image_id, width, height, split, coco_id, ...}]  (or image_data_split3000.json)
    <dir>/refer_<split>.json        [{task_id, image_id, phrase, phrase_structure: {name, ...},
                                      instance_boxes: [[x, y, w, h]], Polygons: [[[[x, y], ...], ...], ...]}]
    <dir>/images/<image_id>.jpg

``<dir>`` is ``<data_root>/VGPhraseCut_v0``, ``<data_root>/PhraseCutDataset/data/VGPhraseCut_v0`` or
``<data_root>`` itself. Each task (a phrase and its region, which may cover several instances) becomes one ref with
one sentence and one annotation whose polygons are every instance's polygons; masks are rasterized as the
PhraseCut API does (PIL, integer vertices, outline included, union of all polygons), not with pycocotools.

The ``unseen`` split is the subset of ``test`` whose category (``phrase_structure.name``) is none of COCO's 80
categories (the complement of the API's ``c_coco`` subset, as the official Pseudo-RIS evaluation uses it); its
refs repeat those test tasks under new ref and sentence ids. ``task_id`` is kept on every ref.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from .errors import ReferDataError
from .refer import ReferDataset, _load_json, make_sentence

NAME = "phrasecut"
FILE_SPLITS = ("train", "val", "test", "miniv")
UNSEEN = "unseen"
UNSEEN_OF = "test"
DEFAULT_SPLITS = ("val", "test", UNSEEN)
IMAGE_INFO_FILES = ("image_data_split.json", "image_data_split3000.json")
#: tasks (phrase-region pairs) per split, from the dataset's README
PUBLISHED_TASKS = {"train": 310_816, "val": 20_316, "test": 14_354, "miniv": 821}
#: COCO's 80 category names as the PhraseCut API's subset code spells them
COCO_CATEGORIES = frozenset((
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors", "teddy bear",
    "hair drier", "toothbrush"))


def find_root(data_root: str | Path) -> Path:
    """The ``VGPhraseCut_v0`` directory under ``data_root`` (see the module docstring)."""
    data_root = Path(data_root).expanduser()
    candidates = [data_root / "VGPhraseCut_v0", data_root / "PhraseCutDataset" / "data" / "VGPhraseCut_v0",
                  data_root]
    for path in candidates:
        if any((path / f).is_file() for f in IMAGE_INFO_FILES) or any(path.glob("refer_*.json")):
            return path
    raise ReferDataError(f"VGPhraseCut not found under {data_root}: expected {candidates[0]}/ holding "
                         f"{IMAGE_INFO_FILES[0]}, refer_<split>.json and images/")


def file_splits_for(splits: Iterable[str]) -> list[str]:
    """The refer_<split>.json files needed for the requested splits (``unseen`` needs ``test``)."""
    needed = []
    for split in splits:
        file_split = UNSEEN_OF if split == UNSEEN else split
        if file_split not in FILE_SPLITS:
            raise ReferDataError(f"unknown PhraseCut split {split!r}; expected one of {FILE_SPLITS + (UNSEEN,)}")
        if file_split not in needed:
            needed.append(file_split)
    return needed


def _flat_polygons(task: dict, where: str) -> list[list[float]]:
    polygons = []
    for instance in task.get("Polygons", []):
        for polygon in instance:
            try:
                polygons.append([float(v) for point in polygon for v in (point[0], point[1])])
            except (TypeError, IndexError, ValueError):
                raise ReferDataError(f"{where}: a polygon is not a list of [x, y] points") from None
    return polygons


def _union_box(boxes: list, polygons: list[list[float]]) -> list[float]:
    if boxes:
        x0 = min(b[0] for b in boxes)
        y0 = min(b[1] for b in boxes)
        x1 = max(b[0] + b[2] for b in boxes)
        y1 = max(b[1] + b[3] for b in boxes)
    else:
        xs = [p[i] for p in polygons for i in range(0, len(p), 2)] or [0.0]
        ys = [p[i] for p in polygons for i in range(1, len(p), 2)] or [0.0]
        x0, y0, x1, y1 = min(xs), min(ys), max(xs), max(ys)
    return [float(x0), float(y0), float(x1 - x0), float(y1 - y0)]


def load_phrasecut(data_root: str | Path, splits: Iterable[str] = DEFAULT_SPLITS,
                   check_geometry: bool = True) -> ReferDataset:
    """VGPhraseCut's ``splits`` (any of train / val / test / miniv / unseen) as a ``ReferDataset``."""
    root = find_root(data_root)
    info_path = next((root / f for f in IMAGE_INFO_FILES if (root / f).is_file()), None)
    if info_path is None:
        raise ReferDataError(f"image list {root / IMAGE_INFO_FILES[0]} not found")
    image_info = {int(i["image_id"]): i for i in _load_json(info_path)}
    splits = list(splits)
    images: dict[int, dict] = {}
    categories: dict[str, int] = {}
    anns, refs, unseen = [], [], []
    for file_split in file_splits_for(splits):
        path = root / f"refer_{file_split}.json"
        if not path.is_file():
            raise ReferDataError(f"PhraseCut split {file_split!r}: {path} not found")
        tasks = _load_json(path)
        if not isinstance(tasks, list):
            raise ReferDataError(f"{path} holds a {type(tasks).__name__}, expected a list of tasks")
        for index, task in enumerate(tasks):
            where = f"task #{index} ({task.get('task_id')}) of {path}"
            missing = [k for k in ("task_id", "image_id", "phrase", "Polygons") if k not in task]
            if missing:
                raise ReferDataError(f"{where} lacks {missing}")
            image_id = int(task["image_id"])
            if image_id not in image_info:
                raise ReferDataError(f"{where}: image {image_id} is not in {info_path}")
            info = image_info[image_id]
            images.setdefault(image_id, {"id": image_id, "file_name": f"{image_id}.jpg",
                                         "height": int(info["height"]), "width": int(info["width"])})
            name = str((task.get("phrase_structure") or {}).get("name", ""))
            category_id = categories.setdefault(name, len(categories) + 1)
            polygons = _flat_polygons(task, where)
            ann_id = len(anns) + 1
            anns.append({"id": ann_id, "image_id": image_id, "category_id": category_id, "segmentation": polygons,
                         "bbox": _union_box(task.get("instance_boxes") or [], polygons), "iscrowd": 0,
                         "task_id": task["task_id"]})
            ref = {"ref_id": ann_id, "ann_id": ann_id, "image_id": image_id, "file_name": f"{image_id}.jpg",
                   "split": file_split, "category_id": category_id, "task_id": task["task_id"],
                   "sent_ids": [ann_id], "sentences": [make_sentence(ann_id, str(task["phrase"]))]}
            if file_split in splits:
                refs.append(ref)
            if file_split == UNSEEN_OF and UNSEEN in splits and name not in COCO_CATEGORIES:
                unseen.append(ref)
    offset = len(anns)
    for k, ref in enumerate(unseen, 1):  # the same task again, under ids of its own
        refs.append({**ref, "ref_id": offset + k, "split": UNSEEN, "sent_ids": [offset + k],
                     "sentences": [make_sentence(offset + k, ref["sentences"][0]["raw"])]})
    cats = [{"id": cid, "name": name, "coco": name in COCO_CATEGORIES} for name, cid in categories.items()]
    return ReferDataset.from_records(NAME, images=list(images.values()), annotations=anns, categories=cats,
                                     refs=refs, image_dir=root / "images", source=root, split_by="phrasecut",
                                     polygon_raster="pil", check_geometry=check_geometry)
