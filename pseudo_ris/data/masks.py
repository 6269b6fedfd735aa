"""Binary masks <-> COCO segmentation (polygons, compressed RLE, uncompressed RLE, lists of RLEs), via pycocotools.

Reading accepts every form COCO and REFER files use; writing (``refer_segmentation``) emits the form the official
REFER ``getMask`` decodes: polygons unchanged, any RLE as a *list holding one compressed RLE dict with string
counts* (a bare RLE dict makes REFER index ``segmentation[0]`` and fail). Overlapping parts of one annotation
(several polygons or RLEs) are merged as their union, i.e. REFER's per-part sum read as ``sum > 0``; see
docs/data_format.md for how LAVT's and CRIS's loaders treat the overlap.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils

#: polygons with fewer coordinates enclose no area (fewer than 3 points); they are skipped when decoding
MIN_POLYGON_COORDS = 6


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


def is_rle(obj: Any) -> bool:
    return isinstance(obj, dict) and "counts" in obj and "size" in obj


def _compressed(rle: dict, height: int, width: int) -> dict:
    """A pycocotools-ready compressed RLE (bytes counts) of any RLE dict, checked against the image size."""
    size = [int(v) for v in rle["size"]]
    if size != [int(height), int(width)]:
        raise ValueError(f"RLE size {size[0]}x{size[1]} differs from the image size {height}x{width}")
    counts = rle["counts"]
    if isinstance(counts, list):  # uncompressed RLE (column-major run lengths)
        return mask_utils.frPyObjects(rle, size[0], size[1])
    return {"size": size, "counts": counts.encode("ascii") if isinstance(counts, str) else counts}


def decode_segmentation(segmentation: Any, height: int, width: int) -> np.ndarray:
    """Decode any COCO segmentation to bool ``[H, W]``: a list of polygons, an RLE dict (compressed or not),
    or a list of RLE dicts (REFER's form). Parts are merged as their union.

    Raises ``ValueError`` for a polygon with an odd number of coordinates or an RLE of another size than the
    image; polygons of fewer than 3 points are skipped (they enclose nothing; COCO has a few such fragments).
    """
    if is_rle(segmentation):
        return mask_utils.decode(_compressed(segmentation, height, width)).astype(bool)
    if not isinstance(segmentation, list):
        raise ValueError(f"unsupported segmentation type {type(segmentation).__name__}")
    if segmentation and all(is_rle(part) for part in segmentation):
        rles = [_compressed(part, height, width) for part in segmentation]
        return mask_utils.decode(mask_utils.merge(rles)).astype(bool)
    polygons = []
    for part in segmentation:
        if not isinstance(part, (list, tuple)):
            raise ValueError(f"a segmentation list must hold polygons or RLE dicts, found {type(part).__name__}")
        if len(part) % 2:
            raise ValueError(f"polygon with an odd number of coordinates ({len(part)})")
        if len(part) >= MIN_POLYGON_COORDS:
            polygons.append([float(v) for v in part])
    if not polygons:
        return np.zeros((height, width), dtype=bool)
    return mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))).astype(bool)


def refer_segmentation(segmentation: Any, height: int, width: int) -> Any:
    """The form of ``segmentation`` that REFER's ``getMask`` decodes (and every COCO reader accepts).

    Polygon lists are returned unchanged; an RLE dict (compressed or not) or a list of RLE dicts becomes a list
    holding one compressed RLE with string counts (several RLEs are merged into their union).
    """
    if is_rle(segmentation):
        parts = [segmentation]
    elif isinstance(segmentation, list) and segmentation and all(is_rle(p) for p in segmentation):
        parts = list(segmentation)
    else:
        return segmentation
    rles = [_compressed(p, height, width) for p in parts]
    merged = rles[0] if len(rles) == 1 else mask_utils.merge(rles)
    counts = merged["counts"]
    return [{"size": [int(height), int(width)],
             "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts}]


def segmentation_problem(segmentation: Any, height: int, width: int) -> str | None:
    """Why ``segmentation`` cannot describe a mask of an ``height x width`` image (``None`` when it can).

    Structural checks only (no decoding): cheap enough to run on every annotation when a dataset is opened.
    """
    if is_rle(segmentation):
        parts: list = [segmentation]
    elif isinstance(segmentation, list):
        parts = segmentation
    else:
        return f"segmentation is a {type(segmentation).__name__}, expected polygons or RLE"
    if not parts:
        return "segmentation is empty"
    usable = 0
    for k, part in enumerate(parts):
        if is_rle(part):
            size = part.get("size")
            if not (isinstance(size, (list, tuple)) and len(size) == 2):
                return f"RLE #{k} has a malformed size {size!r}"
            if [int(size[0]), int(size[1])] != [int(height), int(width)]:
                return (f"RLE size {int(size[0])}x{int(size[1])} differs from its image's {height}x{width} "
                        "(height x width)")
            usable += 1
        elif isinstance(part, (list, tuple)):
            if len(part) % 2:
                return f"polygon #{k} has an odd number of coordinates ({len(part)})"
            if not all(isinstance(v, (int, float)) for v in part):
                return f"polygon #{k} holds non-numeric coordinates"
            usable += len(part) >= MIN_POLYGON_COORDS
        else:
            return f"segmentation part #{k} is a {type(part).__name__}, expected a polygon or an RLE dict"
    if not usable:
        return f"no polygon has {MIN_POLYGON_COORDS // 2} or more points"
    return None


def rasterize_polygons_pil(polygons: list, height: int, width: int) -> np.ndarray:
    """Union of COCO-style ``[x0, y0, x1, y1, ...]`` polygons drawn with PIL: vertices truncated to int,
    outline and interior filled.

    This is how the VGPhraseCut API rasterizes its ground truth (its boundary pixels differ from pycocotools').
    Polygons with fewer than 2 points are skipped, as there.
    """
    canvas = Image.new("L", (int(width), int(height)), 0)
    draw = ImageDraw.Draw(canvas)
    for polygon in polygons:
        if len(polygon) < 4:
            continue
        points = [(int(polygon[i]), int(polygon[i + 1])) for i in range(0, len(polygon) - 1, 2)]
        draw.polygon(points, outline=1, fill=1)
    return np.asarray(canvas) > 0


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
