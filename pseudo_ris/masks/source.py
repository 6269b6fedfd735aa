"""Mask sources for pseudo-labelling: SAM automatic masks, ground-truth instances, external detections.

Every source is a callable ``source(image, image_id) -> list[ObjectMask]`` returning object-level masks after the
shared selection filters (`SelectionConfig`: drop empty, area range, mask-IoU dedup, cap on the count). The paper keeps
SAM's masks that best overlap CutLER instances so that masks are objects, not parts (arXiv 2407.07412, Sec. 4.1
implementation details); `ExternalMaskSource` does the same with any detector's COCO-results JSON.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Protocol

import numpy as np

from pseudo_ris.data.errors import PseudoRISError
from pseudo_ris.data.masks import decode_segmentation, mask_iou_matrix, mask_to_bbox, mask_to_rle


class MaskSourceError(PseudoRISError):
    """A mask source cannot be built or cannot serve an image (bad detection file, unknown image id, ...)."""


@dataclass
class ObjectMask:
    """One object mask of an image; ``score`` orders masks for dedup (SAM predicted IoU, detector score, 1 for GT)."""

    mask: np.ndarray  # bool [H, W]
    score: float = 1.0
    source: str = "sam"
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def area(self) -> int:
        return int(np.count_nonzero(self.mask))

    @property
    def bbox(self) -> list[float]:
        return mask_to_bbox(self.mask)

    @property
    def rle(self) -> dict:
        return mask_to_rle(self.mask)


@dataclass(frozen=True)
class SelectionConfig:
    """Object-level selection. Areas: ``min_area`` in pixels, ``min_area_frac``/``max_area_frac`` of the image."""

    min_area: int = 16
    min_area_frac: float = 0.0
    max_area_frac: float = 0.95
    nms_iou: float = 0.7  # mask IoU above which the lower-scored mask is a duplicate
    max_masks: int | None = None


def select_objects(masks: list[ObjectMask], image_shape: tuple[int, int], cfg: SelectionConfig) -> list[ObjectMask]:
    """Drop empty / too small / too large masks, then greedy mask-IoU NMS by score, then cap the count."""
    h, w = image_shape[:2]
    total = float(h * w)
    kept = [m for m in masks
            if m.area > 0 and m.area >= cfg.min_area and m.area >= cfg.min_area_frac * total
            and m.area <= cfg.max_area_frac * total]
    kept.sort(key=lambda m: -m.score)
    if kept and cfg.nms_iou < 1.0:
        ious = mask_iou_matrix(np.stack([m.mask for m in kept]), np.stack([m.mask for m in kept]))
        chosen: list[int] = []
        for i in range(len(kept)):
            if all(ious[i, j] <= cfg.nms_iou for j in chosen):
                chosen.append(i)
        kept = [kept[i] for i in chosen]
    if cfg.max_masks is not None:
        kept = kept[: cfg.max_masks]
    return kept


class MaskSource(Protocol):
    def __call__(self, image: np.ndarray, image_id: Any = None, file_name: str | None = None) -> list[ObjectMask]: ...


class SamMaskSource:
    """`SamAutomaticMaskGenerator` + object-level selection. Thresholds are explicit: SAM's defaults (0.88 / 0.95)
    return nothing from a small CPU-trained SAM; the paper uses pred_iou_thresh 0.5."""

    def __init__(self, sam: Any, *, points_per_side: int = 16, points_per_batch: int = 64,
                 pred_iou_thresh: float = 0.5, stability_score_thresh: float = 0.8,
                 stability_score_offset: float = 1.0, box_nms_thresh: float = 0.7, crop_n_layers: int = 0,
                 min_mask_region_area: int = 0, selection: SelectionConfig = SelectionConfig()) -> None:
        from segment_anything import SamAutomaticMaskGenerator

        self.generator = SamAutomaticMaskGenerator(
            sam, points_per_side=points_per_side, points_per_batch=points_per_batch,
            pred_iou_thresh=pred_iou_thresh, stability_score_thresh=stability_score_thresh,
            stability_score_offset=stability_score_offset, box_nms_thresh=box_nms_thresh,
            crop_n_layers=crop_n_layers, min_mask_region_area=min_mask_region_area, output_mode="binary_mask")
        self.selection = selection

    def raw(self, image: np.ndarray) -> list[ObjectMask]:
        """All SAM masks before object-level selection."""
        import torch

        with torch.inference_mode():
            records = self.generator.generate(np.ascontiguousarray(image))
        return [ObjectMask(np.asarray(r["segmentation"], dtype=bool), float(r["predicted_iou"]), "sam",
                           {"stability_score": float(r["stability_score"])}) for r in records]

    def __call__(self, image: np.ndarray, image_id: Any = None, file_name: str | None = None) -> list[ObjectMask]:
        return select_objects(self.raw(image), image.shape, self.selection)


class GtMaskSource:
    """Ground-truth instances of a REFER dataset (``masks=gt`` separates caption from mask quality)."""

    def __init__(self, dataset: Any, selection: SelectionConfig = SelectionConfig(min_area=1, max_area_frac=1.0,
                                                                                  nms_iou=1.0)) -> None:
        self.dataset = dataset
        self.selection = selection
        self._by_image: dict[Any, list[int]] = {}
        for ann_id, ann in dataset.anns.items():
            self._by_image.setdefault(ann["image_id"], []).append(ann_id)

    def __call__(self, image: np.ndarray, image_id: Any = None, file_name: str | None = None) -> list[ObjectMask]:
        if image_id not in self.dataset.images:
            name = getattr(self.dataset, "name", "")
            raise MaskSourceError(f"masks=gt: image id {image_id!r} is not in dataset {name}")
        h, w = image.shape[:2]
        out = []
        for ann_id in sorted(self._by_image.get(image_id, [])):
            ann = self.dataset.anns[ann_id]
            if ann.get("iscrowd", 0):
                continue  # COCO crowd regions are not single objects
            m = decode_segmentation(ann["segmentation"], h, w)
            out.append(ObjectMask(m, 1.0, "gt", {"ann_id": ann_id, "category_id": ann.get("category_id")}))
        return select_objects(out, image.shape, self.selection)


def load_detections(path: str | os.PathLike, score_thresh: float = 0.0) -> dict[Any, list[dict]]:
    """COCO results JSON (list of ``{image_id, bbox [x,y,w,h], score, segmentation?, category_id?}``) grouped by
    image id; a ``file_name`` key, where present, is indexed as well so folder sources can match by name."""
    path = Path(path)
    try:
        rows = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise MaskSourceError(f"cannot read detection file {path}: {exc}") from exc
    if isinstance(rows, dict) and "annotations" in rows:  # a COCO instances file also works
        rows = rows["annotations"]
    if not isinstance(rows, list):
        raise MaskSourceError(f"detection file {path}: expected a list of COCO result dicts")
    out: dict[Any, list[dict]] = {}
    for i, r in enumerate(rows):
        if not isinstance(r, dict) or ("bbox" not in r and "segmentation" not in r) or (
                "image_id" not in r and "file_name" not in r):
            raise MaskSourceError(f"detection file {path}: entry {i} needs image_id/file_name and bbox or segmentation")
        if float(r.get("score", 1.0)) < score_thresh:
            continue
        for key in ("image_id", "file_name"):
            if key in r:
                out.setdefault(r[key], []).append(r)
    return out


def _box_iou(a: list[float], b: list[float]) -> float:
    ax0, ay0, aw, ah = a
    bx0, by0, bw, bh = b
    iw = max(0.0, min(ax0 + aw, bx0 + bw) - max(ax0, bx0))
    ih = max(0.0, min(ay0 + ah, by0 + bh) - max(ay0, by0))
    inter = iw * ih
    union = aw * ah + bw * bh - inter
    return inter / union if union > 0 else 0.0


class ExternalMaskSource:
    """For each external instance keep the SAM mask with the largest overlap (mask IoU when the detection has a
    segmentation, box IoU otherwise), as the official code does with CutLER. A SAM mask picked by two detections is
    kept once; a detection with overlap <= ``min_overlap`` with every SAM mask yields nothing, or its own mask when
    ``use_detection_mask_if_unmatched`` and it has one."""

    def __init__(self, sam_source: SamMaskSource, detections: str | os.PathLike | dict[Any, list[dict]], *,
                 score_thresh: float = 0.0, min_overlap: float = 0.0, use_detection_mask_if_unmatched: bool = False,
                 selection: SelectionConfig = SelectionConfig()) -> None:
        self.sam_source = sam_source
        self.detections = detections if isinstance(detections, dict) else load_detections(detections, score_thresh)
        self.min_overlap = min_overlap
        self.use_detection_mask_if_unmatched = use_detection_mask_if_unmatched
        self.selection = selection

    def match(self, sam_masks: list[ObjectMask], dets: list[dict], shape: tuple[int, int]) -> list[ObjectMask]:
        h, w = shape[:2]
        chosen: dict[int, ObjectMask] = {}
        extra: list[ObjectMask] = []
        stack = np.stack([m.mask for m in sam_masks]) if sam_masks else np.zeros((0, h, w), bool)
        boxes = [m.bbox for m in sam_masks]
        for det in sorted(dets, key=lambda d: -float(d.get("score", 1.0))):
            try:
                det_mask = decode_segmentation(det["segmentation"], h, w) if det.get("segmentation") else None
            except ValueError as exc:  # e.g. an RLE of another size than the image
                raise MaskSourceError(f"detection of image {det.get('image_id')!r} (bbox {det.get('bbox')}): "
                                      f"{exc}") from None
            if det_mask is not None:
                overlaps = mask_iou_matrix(det_mask[None], stack)[0] if len(stack) else np.zeros(0)
            else:
                overlaps = np.array([_box_iou(list(map(float, det["bbox"])), b) for b in boxes])
            if len(overlaps) and overlaps.max() > self.min_overlap:
                best = int(overlaps.argmax())
                if best not in chosen:
                    m = sam_masks[best]
                    chosen[best] = ObjectMask(m.mask, float(det.get("score", 1.0)), "external",
                                              {**m.meta, "overlap": float(overlaps[best]),
                                               "category_id": det.get("category_id")})
            elif self.use_detection_mask_if_unmatched and det_mask is not None:
                extra.append(ObjectMask(det_mask, float(det.get("score", 1.0)), "external_mask", {}))
        return [chosen[k] for k in sorted(chosen)] + extra

    def __call__(self, image: np.ndarray, image_id: Any = None, file_name: str | None = None) -> list[ObjectMask]:
        dets = self.detections.get(image_id) or (self.detections.get(file_name) if file_name else None) or []
        if not dets:
            return []
        return select_objects(self.match(self.sam_source.raw(image), dets, image.shape), image.shape, self.selection)


def build_mask_source(kind: str, *, sam_factory: Callable[[], Any] | None = None, dataset: Any = None,
                      detections: str | os.PathLike | None = None, sam_kwargs: dict | None = None,
                      external_kwargs: dict | None = None,
                      selection: SelectionConfig = SelectionConfig()) -> MaskSource:
    """Factory used by the entry point: ``kind`` in ``sam | gt | external``."""
    if kind == "gt":
        if dataset is None:
            raise MaskSourceError("masks=gt needs a REFER dataset as image source (source=refer or synthref)")
        return GtMaskSource(dataset)
    if kind not in ("sam", "external"):
        raise MaskSourceError(f"unknown mask source {kind!r}; choose sam, gt or external")
    if sam_factory is None:
        raise MaskSourceError(f"masks={kind} needs a SAM model")
    sam_src = SamMaskSource(sam_factory(), selection=selection, **(sam_kwargs or {}))
    if kind == "sam":
        return sam_src
    if detections is None:
        raise MaskSourceError("masks=external needs a detection file (COCO results JSON)")
    return ExternalMaskSource(sam_src, detections, selection=selection, **(external_kwargs or {}))


def masks_to_array(masks: Iterable[ObjectMask], shape: tuple[int, int]) -> np.ndarray:
    ms = [m.mask for m in masks]
    return np.stack(ms) if ms else np.zeros((0, *shape[:2]), dtype=bool)
