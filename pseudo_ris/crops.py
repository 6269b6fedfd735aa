"""The four per-mask views fed to the captioner and the scorer (arXiv 2407.07412, Sec. 4.1).

View 0: masked crop -- pixels outside the mask set to the mean colour, cropped to the mask's box.
Views 1-3: plain crops of the mask's box enlarged about its centre by margins 1.0 / 1.1 / 1.2, clipped to the image.
Every view is padded to a square with the mean colour (crop centred) and resized to ``size``; the result is a float
tensor in [0, 1] so the captioner's own normalisation (mean/std) is applied afterwards by the caller.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from pseudo_ris.data.errors import EmptyMaskError

VIEW_NAMES = ("masked", "box1.0", "box1.1", "box1.2")
DEFAULT_MARGINS = (1.0, 1.1, 1.2)
# CLIP / open_clip normalisation mean, the "dataset mean colour" of the official crops.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)


def mask_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """Tight box ``(x0, y0, x1, y1)`` (exclusive ends) of a non-empty mask."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        raise EmptyMaskError("cannot crop an empty mask")
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def enlarge_box(box: tuple[int, int, int, int], margin: float, width: int, height: int) -> tuple[int, int, int, int]:
    """Scale a box about its centre by ``margin`` and clip to the image; margin 1.0 returns the box itself."""
    x0, y0, x1, y1 = box
    if margin == 1.0:
        return box
    cx, cy = (x0 + x1) / 2.0, (y0 + y1) / 2.0
    hw, hh = (x1 - x0) * margin / 2.0, (y1 - y0) * margin / 2.0
    nx0, ny0 = max(0, math.floor(cx - hw)), max(0, math.floor(cy - hh))
    nx1, ny1 = min(width, math.ceil(cx + hw)), min(height, math.ceil(cy + hh))
    return nx0, ny0, nx1, ny1


def pad_to_square(crop: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
    """Centre ``crop [3, h, w]`` on a square canvas of side max(h, w) filled with ``fill [3]``."""
    _, h, w = crop.shape
    side = max(h, w)
    canvas = fill.view(3, 1, 1).expand(3, side, side).clone()
    top, left = (side - h) // 2, (side - w) // 2
    canvas[:, top:top + h, left:left + w] = crop
    return canvas


def _resize(square: torch.Tensor, size: int) -> torch.Tensor:
    if square.shape[-1] == size:
        return square
    out = F.interpolate(square[None], size=(size, size), mode="bilinear", align_corners=False,
                        antialias=square.shape[-1] > size)
    return out[0].clamp_(0.0, 1.0)


def make_views(image: np.ndarray, masks: Sequence[np.ndarray] | np.ndarray, size: int,
               fill: Sequence[float] = CLIP_MEAN, margins: Sequence[float] = DEFAULT_MARGINS) -> torch.Tensor:
    """Views of every mask: ``FloatTensor[N, 1 + len(margins), 3, size, size]`` in [0, 1].

    ``image`` is uint8 RGB ``[H, W, 3]`` (or float in [0, 1]); ``masks`` bool ``[N, H, W]``; ``fill`` the mean colour in
    [0, 1]. Empty masks raise `EmptyMaskError` (mask sources drop them first).
    """
    img = torch.tensor(np.asarray(image)).permute(2, 0, 1)  # copy: decoded images may be read-only
    img = img.float() / 255.0 if img.dtype == torch.uint8 else img.float()
    if img.shape[0] != 3:
        raise ValueError(f"make_views expects an RGB image [H, W, 3], got {tuple(image.shape)}")
    height, width = img.shape[1:]
    fill_t = torch.tensor(list(fill), dtype=torch.float32)
    n_views = 1 + len(margins)
    out = torch.empty(len(masks), n_views, 3, size, size)
    for i, mask in enumerate(masks):
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != (height, width):
            raise ValueError(f"mask {i} has shape {mask.shape}, image is {(height, width)}")
        box = mask_box(mask)
        x0, y0, x1, y1 = box
        m = torch.from_numpy(mask[y0:y1, x0:x1])
        masked = torch.where(m[None], img[:, y0:y1, x0:x1], fill_t.view(3, 1, 1))
        out[i, 0] = _resize(pad_to_square(masked, fill_t), size)
        for v, margin in enumerate(margins, start=1):
            bx0, by0, bx1, by1 = enlarge_box(box, margin, width, height)
            out[i, v] = _resize(pad_to_square(img[:, by0:by1, bx0:bx1], fill_t), size)
    return out
