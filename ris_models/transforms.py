"""Geometry for RIS samples: resize to the model's square input, and warp predictions back.

Two resize modes:

* ``letterbox`` (default, as CRIS): keep the aspect ratio, scale the long side to ``size`` and pad the rest (the
  image with the normalisation mean, i.e. 0 after normalising; the mask with background). Spatial words
  ("left", "tall", "wide") keep their meaning.
* ``stretch`` (as LAVT): plain resize of both sides to ``size``.

``ResizeMeta`` records the mapping so a prediction at input resolution is cut out of the padding and resized back
to the original image size; evaluation scores there by default (CRIS protocol).

Horizontal flips mirror "left" and "right", so a flipped image is only correct if the words are swapped too:
``swap_left_right`` does that and the datamodule applies both together (off by default).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

RESIZE_MODES = ("letterbox", "stretch")


@dataclass(frozen=True)
class ResizeMeta:
    """Where the resized image sits inside the ``size x size`` input: ``[top:top+height, left:left+width]``."""

    orig_h: int
    orig_w: int
    top: int
    left: int
    height: int
    width: int

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def resize_meta(orig_h: int, orig_w: int, size: int, mode: str = "letterbox") -> ResizeMeta:
    if mode not in RESIZE_MODES:
        raise ValueError(f"unknown resize mode {mode!r}; expected one of {RESIZE_MODES}")
    if mode == "stretch":
        return ResizeMeta(orig_h, orig_w, 0, 0, size, size)
    scale = size / max(orig_h, orig_w)
    height = max(1, min(size, round(orig_h * scale)))
    width = max(1, min(size, round(orig_w * scale)))
    top, left = (size - height) // 2, (size - width) // 2
    return ResizeMeta(orig_h, orig_w, top, left, height, width)


def resize_image(image: np.ndarray, meta: ResizeMeta, size: int, mean: tuple[float, float, float],
                 std: tuple[float, float, float]) -> torch.Tensor:
    """uint8 ``[H, W, 3]`` -> normalised float ``[3, size, size]``; padding is the mean colour (0 after norm)."""
    resized = np.array(Image.fromarray(image).resize((meta.width, meta.height), Image.BILINEAR))
    chw = torch.from_numpy(resized).permute(2, 0, 1).float().div_(255.0)
    mean_t = torch.tensor(mean, dtype=torch.float32)[:, None, None]
    std_t = torch.tensor(std, dtype=torch.float32)[:, None, None]
    out = torch.zeros(3, size, size)
    out[:, meta.top:meta.top + meta.height, meta.left:meta.left + meta.width] = (chw - mean_t) / std_t
    return out


def resize_mask(mask: np.ndarray, meta: ResizeMeta, size: int) -> torch.Tensor:
    """bool ``[H, W]`` -> bool ``[size, size]`` (bilinear on {0, 255}, then >= 128; padding is background)."""
    img = Image.fromarray(mask.astype(np.uint8) * 255).resize((meta.width, meta.height), Image.BILINEAR)
    out = torch.zeros(size, size, dtype=torch.bool)
    out[meta.top:meta.top + meta.height, meta.left:meta.left + meta.width] = torch.from_numpy(np.asarray(img) >= 128)
    return out


def warp_back(prob: torch.Tensor, meta: ResizeMeta | dict) -> torch.Tensor:
    """Foreground probability at input resolution ``[S, S]`` -> ``[orig_h, orig_w]`` (crop padding, bilinear)."""
    if isinstance(meta, dict):
        meta = ResizeMeta(**meta)
    crop = prob[meta.top:meta.top + meta.height, meta.left:meta.left + meta.width]
    return F.interpolate(crop[None, None].float(), size=(meta.orig_h, meta.orig_w), mode="bilinear",
                         align_corners=False)[0, 0]


_LR_WORD = re.compile(r"\b(left|right)(?=(?:most|side|wards?|hand)?\b)", re.IGNORECASE)


def swap_left_right(sentence: str) -> str:
    """Mirror a sentence for a horizontally flipped image: left <-> right (also leftmost, left-hand, ...).

    Case is kept ("Left" -> "Right"); words that merely contain the letters (e.g. "copyright", "bright") are untouched.
    """
    def repl(match: re.Match) -> str:
        word = match.group(1)
        new = "right" if word.lower() == "left" else "left"
        if word.isupper():
            return new.upper()
        if word[0].isupper():
            return new.capitalize()
        return new

    return _LR_WORD.sub(repl, sentence)
