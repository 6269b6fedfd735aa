"""Quality reports of the foundation models on held-out generated scenes (stream ``*_eval``, never trained on).

SAM: `SamAutomaticMaskGenerator` at explicit thresholds (SAM's defaults return nothing from a tiny CPU-trained model,
DESIGN 7) -> recall of ground-truth objects at mask IoU 0.5 / 0.75, precision, masks per image; plus the prompted
best-of-3 IoU of one click per object. CoCa: greedy-caption word accuracy, attribute prediction forced at the
attribute slot, and contrastive retrieval (the CLIP-scorer role in DoC filtering).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from ..data.io import atomic_write_json
from .data import scene_at, scene_rng


def _iou_matrix(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    if len(pred) == 0 or len(gt) == 0:
        return np.zeros((len(pred), len(gt)))
    p = pred.reshape(len(pred), -1).astype(np.float32)
    g = gt.reshape(len(gt), -1).astype(np.float32)
    inter = p @ g.T
    union = p.sum(1)[:, None] + g.sum(1)[None] - inter
    return inter / np.maximum(union, 1)


def evaluate_sam(checkpoint: str | Path, *, arch: str = "tiny", num_images: int = 100, seed: int = 0,
                 points_per_side: int = 16, pred_iou_thresh: float = 0.5, stability_score_thresh: float = 0.8,
                 box_nms_thresh: float = 0.7, sweep: list[tuple[float, float]] | None = None,
                 out_path: str | Path | None = None, progress: bool = True) -> dict[str, Any]:
    """Automatic-mask quality of a tiny SAM; ``sweep`` adds (pred_iou, stability) threshold pairs to the report.

    Masks are generated once at the loosest thresholds and filtered afterwards, so a sweep costs no extra model
    calls (the generator's NMS runs before thresholds would have applied, a small difference noted in the report).
    """
    from segment_anything import SamAutomaticMaskGenerator, SamPredictor

    from ..masks.sam import build_sam

    sam = build_sam(arch, checkpoint=checkpoint)
    pairs = [(pred_iou_thresh, stability_score_thresh)] + [tuple(p) for p in (sweep or [])]
    gen = {pair: SamAutomaticMaskGenerator(sam, points_per_side=points_per_side, pred_iou_thresh=pair[0],
                                           stability_score_thresh=pair[1], box_nms_thresh=box_nms_thresh)
           for pair in pairs[:1]}
    predictor = SamPredictor(sam)
    rng = scene_rng("sam_eval", seed, 10 ** 6)
    stats = {pair: {"matched50": 0, "matched75": 0, "tp50": 0, "n_pred": 0} for pair in pairs}
    n_gt, prompted, t_gen = 0, [], 0.0
    for i in tqdm(range(num_images), desc="eval sam", disable=not progress):
        scene = scene_at("sam_eval", seed, i)
        gt = np.stack([o.mask for o in scene.objects])
        n_gt += len(gt)
        t0 = time.time()
        records = gen[pairs[0]].generate(scene.image) if len(pairs) == 1 else _loose(sam, scene.image, pairs,
                                                                                     points_per_side, box_nms_thresh)
        t_gen += time.time() - t0
        for pair in pairs:
            kept = [r for r in records if r["predicted_iou"] >= pair[0] and r["stability_score"] >= pair[1]]
            pred = np.stack([r["segmentation"] for r in kept]) if kept else np.zeros((0,) + gt.shape[1:], bool)
            iou = _iou_matrix(pred, gt)
            best_gt = iou.max(0) if len(pred) else np.zeros(len(gt))
            s = stats[pair]
            s["matched50"] += int((best_gt >= 0.5).sum())
            s["matched75"] += int((best_gt >= 0.75).sum())
            s["tp50"] += int((iou.max(1) >= 0.5).sum()) if len(gt) else 0
            s["n_pred"] += len(pred)
        # prompted quality: one click inside each object, best of the 3 outputs (the training objective)
        predictor.set_image(scene.image)
        for obj in scene.objects:
            ys, xs = np.nonzero(obj.mask)
            k = int(rng.integers(len(xs)))
            masks, _, _ = predictor.predict(point_coords=np.array([[xs[k] + 0.5, ys[k] + 0.5]]),
                                            point_labels=np.array([1]), multimask_output=True)
            prompted.append(float(_iou_matrix(masks, obj.mask[None]).max()))

    def row(pair: tuple[float, float]) -> dict[str, float]:
        s = stats[pair]
        return {"pred_iou_thresh": pair[0], "stability_score_thresh": pair[1],
                "recall@0.5": s["matched50"] / max(n_gt, 1), "recall@0.75": s["matched75"] / max(n_gt, 1),
                "precision@0.5": s["tp50"] / max(s["n_pred"], 1), "masks_per_image": s["n_pred"] / num_images}

    summary = {**row(pairs[0]), "prompted_best_of_3_iou": float(np.mean(prompted)), "gt_per_image": n_gt / num_images,
               "seconds_per_image": t_gen / num_images, "points_per_side": points_per_side,
               "box_nms_thresh": box_nms_thresh, "num_images": num_images}
    report = {"summary": summary, "sweep": [row(p) for p in pairs[1:]], "checkpoint": str(checkpoint)}
    if out_path is not None:
        atomic_write_json(out_path, report, indent=1)
    return report


def _loose(sam: Any, image: np.ndarray, pairs: list, points_per_side: int, box_nms_thresh: float) -> list[dict]:
    from segment_anything import SamAutomaticMaskGenerator
    gen = SamAutomaticMaskGenerator(sam, points_per_side=points_per_side,
                                    pred_iou_thresh=min(p[0] for p in pairs),
                                    stability_score_thresh=min(p[1] for p in pairs), box_nms_thresh=box_nms_thresh)
    return gen.generate(image)


def evaluate_coca(checkpoint: str | Path, **kwargs: Any) -> dict[str, Any]:
    raise NotImplementedError
