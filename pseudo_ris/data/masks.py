"""Binary masks <-> COCO segmentation (polygon, compressed RLE, uncompressed RLE), via pycocotools."""

from __future__ import annotations

from typing import Any

import numpy as np
from pycocotools import mask as mask_utils


def mask_to_rle(mask: np.ndarray) -> dict:
    """Encode a boolean ``[H, W]`` mask as JSON-safe compressed COCO RLE (``counts`` as str)."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask_to_rle expects a 2-D mask, got shape {mask.shape}")
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    counts = rle["counts"]
    return {"size": [int(rle["size"][0]), int(rle["size"][1])],
            "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts}


def rle_to_mask(rle: dict) -> np.ndarray:
    """Decode compressed or uncompressed COCO RLE to a boolean ``[H, W]`` mask."""
    h, w = (int(v) for v in rle["size"])
    return decode_segmentation(rle, h, w)


def decode_segmentation(segmentation: Any, height: int, width: int) -> np.ndarray:
    """Decode any COCO segmentation (list of polygons, compressed RLE, uncompressed RLE) to bool ``[H, W]``."""
    if isinstance(segmentation, list):
        if len(segmentation) == 0:
            return np.zeros((height, width), dtype=bool)
        polygons = [p for p in segmentation if len(p) >= 6]
        if not polygons:
            return np.zeros((height, width), dtype=bool)
        rles = mask_utils.frPyObjects(polygons, height, width)
        rle = mask_utils.merge(rles)
    elif isinstance(segmentation, dict):
        counts = segmentation.get("counts")
        if isinstance(counts, list):  # uncompressed RLE
            rle = mask_utils.frPyObjects(segmentation, height, width)
        else:
            rle = dict(segmentation)
            if isinstance(counts, str):
                rle["counts"] = counts.encode("ascii")
    else:
        raise ValueError(f"unsupported segmentation type {type(segmentation).__name__}")
    return mask_utils.decode(rle).astype(bool)


def mask_to_bbox(mask: np.ndarray) -> list[float]:
    """COCO ``[x, y, w, h]`` box of a mask's foreground (all zeros for an empty mask)."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return [0.0, 0.0, 0.0, 0.0]
    x0, x1, y0, y1 = xs.min(), xs.max(), ys.min(), ys.max()
    return [float(x0), float(y0), float(x1 - x0 + 1), float(y1 - y0 + 1)]


def mask_area(mask: np.ndarray) -> int:
    return int(np.count_nonzero(mask))


def mask_iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of boolean masks ``a [N,H,W]`` and ``b [M,H,W]`` -> float64 ``[N, M]``.

    Computed on RLE (pycocotools), which stays cheap for large images where a dense ``N x H*W`` product would not.
    """
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))

    def rles(stack: np.ndarray) -> list:
        return mask_utils.encode(np.asfortranarray(np.moveaxis(np.asarray(stack).astype(np.uint8), 0, -1)))

    return np.asarray(mask_utils.iou(rles(a), rles(b), [0] * len(b)), dtype=np.float64).reshape(len(a), len(b))
