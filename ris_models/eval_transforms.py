"""Evaluation geometry of the protocols (``ris_models.protocol``): input resize, targets, logits -> masks.

* ``letterbox`` / ``stretch``: ``ris_models.transforms`` (PIL bilinear, whole-pixel placement); predictions go back
  by cropping the padding and resizing bilinearly (``warp_back``).
* ``letterbox_affine`` (CRIS ``utils/dataset.py``): scale ``s = min(S/h, S/w)``, offsets ``((S - w s)/2,
  (S - h s)/2)`` kept fractional; input pixel ``(x', y')`` samples the image at ``((x' - bx)/s, (y' - by)/s)``
  (OpenCV's pixel-index convention) with bicubic interpolation (a = -0.75, as OpenCV's ``INTER_CUBIC``) and the
  rounded mean colour outside; predictions come back by the inverse warp, bicubic, 0 outside. OpenCV rounds
  sampling positions to 1/32 pixel and uses fixed-point weights on uint8 images; this float version does not, so
  it can differ from OpenCV by a grey level on the image and on pixels right at the threshold.
* targets at input size: ``bilinear`` (on {0, 255}, then >= 128) or ``nearest`` (PIL ``Image.NEAREST``, LAVT).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ris_models.transforms import ResizeMeta, resize_image, resize_mask, resize_meta, warp_back


def affine_letterbox_params(orig_h: int, orig_w: int, size: int) -> tuple[float, float, float]:
    """CRIS's letterbox as an affine map: ``x' = s x + bx``, ``y' = s y + by`` -> ``(s, bx, by)``."""
    scale = min(size / orig_h, size / orig_w)
    return scale, (size - orig_w * scale) / 2.0, (size - orig_h * scale) / 2.0


def _sample_bicubic(src: torch.Tensor, xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
    """``src [C, H, W]`` sampled at pixel-index positions ``xs [W']``, ``ys [H']`` (separable grid), 0 outside."""
    c, h, w = src.shape
    gx = ((2.0 * xs + 1.0) / w - 1.0).to(torch.float32)
    gy = ((2.0 * ys + 1.0) / h - 1.0).to(torch.float32)
    grid = torch.stack(torch.meshgrid(gy, gx, indexing="ij")[::-1], dim=-1)[None]
    return F.grid_sample(src[None].float(), grid.to(src.device), mode="bicubic", padding_mode="zeros",
                         align_corners=False)[0]


def letterbox_affine_image(image: np.ndarray, size: int, border: Sequence[float]) -> np.ndarray:
    """uint8 ``[H, W, 3]`` -> uint8 ``[size, size, 3]`` by CRIS's letterbox warp (bicubic, ``border`` outside)."""
    h, w = image.shape[:2]
    scale, bx, by = affine_letterbox_params(h, w, size)
    pos = torch.arange(size, dtype=torch.float64)
    fill = torch.tensor([float(round(v)) for v in border], dtype=torch.float32)[:, None, None]
    src = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float() - fill
    out = _sample_bicubic(src, (pos - bx) / scale, (pos - by) / scale) + fill
    return out.round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()


def inverse_affine_warp(score: torch.Tensor, orig_h: int, orig_w: int) -> torch.Tensor:
    """``[S, S]`` map at input resolution -> ``[orig_h, orig_w]`` by the inverse of CRIS's letterbox warp."""
    size = int(score.shape[-1])
    scale, bx, by = affine_letterbox_params(orig_h, orig_w, size)
    xs = torch.arange(orig_w, dtype=torch.float64) * scale + bx
    ys = torch.arange(orig_h, dtype=torch.float64) * scale + by
    return _sample_bicubic(score[None], xs, ys)[0]


def resize_mask_nearest(mask: np.ndarray, meta: ResizeMeta, size: int) -> torch.Tensor:
    """bool ``[H, W]`` -> bool ``[size, size]`` with PIL NEAREST inside ``meta``'s placement (LAVT's targets)."""
    img = Image.fromarray(mask.astype(np.uint8) * 255).resize((meta.width, meta.height), Image.NEAREST)
    out = torch.zeros(size, size, dtype=torch.bool)
    out[meta.top:meta.top + meta.height, meta.left:meta.left + meta.width] = torch.from_numpy(np.asarray(img) > 0)
    return out


def prepare_eval_sample(image: np.ndarray, mask: np.ndarray, resize_mode: str, size: int,
                        mean: Sequence[float], std: Sequence[float], target_resize: str = "bilinear"
                        ) -> dict[str, Any]:
    """Model input, input-size target and the metadata to warp predictions back, for one evaluation sample."""
    h, w = image.shape[:2]
    if resize_mode == "letterbox_affine":
        warped = letterbox_affine_image(image, size, [255.0 * m for m in mean])
        meta = ResizeMeta(h, w, 0, 0, size, size)  # warping back only needs the original size
        tensor = resize_image(warped, meta, size, mean, std)  # already size x size: normalises only
        target = torch.zeros(size, size, dtype=torch.bool)  # not used: this mode scores at the original size
        return {"image": tensor, "mask": target, "meta": meta.as_dict()}
    meta = resize_meta(h, w, size, resize_mode)
    target = resize_mask_nearest(mask, meta, size) if target_resize == "nearest" else resize_mask(mask, meta, size)
    return {"image": resize_image(image, meta, size, mean, std), "mask": target, "meta": meta.as_dict()}


def decision_scores(model: Any, logits: torch.Tensor, protocol: Any, size: tuple[int, int]
                    ) -> tuple[torch.Tensor, float]:
    """``[B, S, S]`` scores at input size and the cut a pixel must exceed: foreground probability and the
    threshold, or the logit margin (foreground - background; a 1-channel model: its logit) and 0 for argmax."""
    if protocol.upsample == "logits":
        up = F.interpolate(logits.float(), size=size, mode=protocol.upsample_mode,
                           align_corners=protocol.align_corners)
        if up.shape[1] == 2:
            return up[:, 1] - up[:, 0], 0.0  # > 0 exactly when argmax picks class 1 (ties go to class 0)
        if up.shape[1] == 1:
            return up[:, 0], 0.0
        raise ValueError(f"argmax decision needs 1 or 2 logit channels, got {up.shape[1]}")
    prob = model.foreground_prob(logits).float()
    up = F.interpolate(prob[:, None], size=size, mode=protocol.upsample_mode, align_corners=protocol.align_corners)
    return up[:, 0], float(protocol.threshold)


def logits_to_masks(model: Any, logits: torch.Tensor, metas: Sequence[dict], protocol: Any,
                    size: tuple[int, int]) -> list[torch.Tensor]:
    """Boolean predictions at the protocol's scoring resolution (``protocol`` must be resolved)."""
    scores, cut = decision_scores(model, logits, protocol, size)
    if protocol.score_at == "input":
        return list(scores > cut)
    if protocol.resize_mode == "letterbox_affine":
        return [inverse_affine_warp(s, int(m["orig_h"]), int(m["orig_w"])) > cut for s, m in zip(scores, metas)]
    return [warp_back(s, m) > cut for s, m in zip(scores, metas)]
