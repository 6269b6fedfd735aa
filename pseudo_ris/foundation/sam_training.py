"""Train the tiny SAM (``pseudo_ris.masks.sam.build_sam("tiny")``) with point and box prompts on generated scenes.

Recipe:
- per step ``batch_images`` scenes x ``prompts_per_image`` prompts: foreground clicks (uniform inside an object's
  visible mask), ~15% background clicks whose target is the empty mask with predicted IoU 0 (so the automatic mask
  generator's ``pred_iou_thresh`` removes background blobs), and jittered boxes;
- clicks are ambiguous, so the loss is the best of the 3 multimask outputs; boxes train the single-mask output;
- the IoU head regresses the true IoU of each trained output (MSE);
- mask loss: SAM's focal + dice collapsed to empty masks from a cold start (dice's gradient vanishes once all logits
  are negative), so the first ``balanced_bce_frac`` of the steps use class-balanced BCE (object and background
  pixels carry half of the weight each) + dice, then plain BCE + dice refines the boundaries from that warm start;
- losses are computed on the decoder's own output grid (4x the embedding grid, 64 x 64 for the 128 px tiny SAM)
  against area-averaged targets, which is what inference upsamples, and costs a fraction of full resolution.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from .config import SamTrainConfig, config_dict, config_hash, make_config
from .data import SamImageBatch, sam_image_batch, scene_at, scene_rng
from .loop import cosine_lr, run_loop, write_recipe

WEIGHTS_NAME = "sam_{arch}.pt"


def dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Soft dice per mask over the last two dims (+1 smoothing, so an empty target asks for an empty mask)."""
    p = logits.sigmoid().flatten(-2)
    t = target.flatten(-2)
    return 1.0 - (2.0 * (p * t).sum(-1) + 1.0) / (p.sum(-1) + t.sum(-1) + 1.0)


def bce_loss(logits: torch.Tensor, target: torch.Tensor, balanced: bool) -> torch.Tensor:
    """BCE per mask; ``balanced`` gives object and background pixels half of the weight each (empty: all bg)."""
    per_pixel = F.binary_cross_entropy_with_logits(logits, target, reduction="none").flatten(-2)
    if not balanced:
        return per_pixel.mean(-1)
    t = target.flatten(-2)
    n_pos = t.sum(-1, keepdim=True)
    n_neg = t.shape[-1] - n_pos
    pos_w = torch.where(n_pos > 0, 0.5 / n_pos.clamp(min=1), torch.zeros_like(n_pos))
    neg_w = torch.where(n_pos > 0, 0.5, 1.0) / n_neg.clamp(min=1)
    weights = t * pos_w + (1 - t) * neg_w
    return (per_pixel * weights).sum(-1)


def mask_iou(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """IoU of ``logits > 0`` with ``target >= 0.5`` per mask; 0 for an empty target (background clicks: quality 0)."""
    pred = (logits > 0).flatten(-2).float()
    t = (target >= 0.5).flatten(-2).float()
    inter = (pred * t).sum(-1)
    union = pred.sum(-1) + t.sum(-1) - inter
    return torch.where(t.sum(-1) > 0, inter / union.clamp(min=1), torch.zeros_like(inter))


def _decode(sam: Any, embedding: torch.Tensor, points=None, boxes=None) -> tuple[torch.Tensor, torch.Tensor]:
    """All 4 output tokens (0 = single mask, 1-3 = multimask) at the decoder's low resolution: ``[P, 4, s, s]``."""
    sparse, dense = sam.prompt_encoder(points=points, boxes=boxes, masks=None)
    return sam.mask_decoder.predict_masks(image_embeddings=embedding, image_pe=sam.prompt_encoder.get_dense_pe(),
                                          sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense)


def _low_res(target: torch.Tensor, size: int) -> torch.Tensor:
    """Input-frame targets -> the decoder's output grid by area averaging (soft edges, thin parts kept)."""
    if target.shape[-1] == size:
        return target
    return F.adaptive_avg_pool2d(target[:, None], size)[:, 0] if len(target) else target.new_zeros(0, size, size)


def sam_step_loss(sam: Any, batches: list[SamImageBatch], balanced: bool,
                  iou_loss_weight: float) -> dict[str, torch.Tensor]:
    """Loss of one step (see module docstring); also returns the best-of-3 IoU of foreground clicks."""
    images = torch.stack([sam.preprocess(b.image) for b in batches])
    embeddings = sam.image_encoder(images)
    mask_terms, iou_terms, fg_ious = [], [], []
    low = 4 * embeddings.shape[-1]  # the mask decoder upsamples the embedding grid 4x
    for b, emb in zip(batches, embeddings):
        emb = emb[None]
        if len(b.points):
            logits, iou_pred = _decode(sam, emb, points=(b.points, b.point_labels))
            logits, iou_pred = logits[:, 1:], iou_pred[:, 1:]
            target = _low_res(b.point_targets, low)[:, None].expand_as(logits)
            per_out = bce_loss(logits, target, balanced) + dice_loss(logits, target)  # [P, 3]
            best = per_out.argmin(1)
            mask_terms.append(per_out.gather(1, best[:, None])[:, 0])
            true_iou = mask_iou(logits.detach(), target)
            iou_terms.append(((iou_pred - true_iou) ** 2).mean(1))
            has_obj = b.point_targets.flatten(1).sum(1) > 0
            fg_ious.append(true_iou.gather(1, best[:, None])[:, 0][has_obj])
        if len(b.boxes):
            logits, iou_pred = _decode(sam, emb, boxes=b.boxes)
            logits, iou_pred = logits[:, :1], iou_pred[:, :1]
            target = _low_res(b.box_targets, low)[:, None]
            mask_terms.append((bce_loss(logits, target, balanced) + dice_loss(logits, target))[:, 0])
            iou_terms.append(((iou_pred - mask_iou(logits.detach(), target)) ** 2)[:, 0])
    mask_l = torch.cat(mask_terms).mean()
    iou_l = torch.cat(iou_terms).mean()
    fg = torch.cat(fg_ious) if fg_ious else torch.zeros(0)
    return {"loss": mask_l + iou_loss_weight * iou_l, "mask": mask_l.detach(), "iou_mse": iou_l.detach(),
            "fg_iou": fg.mean() if len(fg) else torch.tensor(0.0)}


def train_sam(cfg: SamTrainConfig | dict | None = None, out_dir: str | Path = "outputs/foundation/sam",
              progress: bool = True, **overrides: Any) -> Path:
    """Train (or resume) the tiny SAM; returns the weights file, loadable by ``build_sam(arch, checkpoint=...)``."""
    from ..masks.sam import SAM_CONFIGS, build_sam, save_sam_checkpoint

    cfg = make_config(SamTrainConfig, cfg, **overrides)
    out_dir = Path(out_dir)
    torch.manual_seed(cfg.seed)
    sam = build_sam(cfg.arch)
    img_size = sam.image_encoder.img_size
    params = [p for p in sam.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    switch = int(cfg.balanced_bce_frac * cfg.steps)

    def step_fn(step: int) -> dict[str, torch.Tensor]:
        rng = scene_rng("sam_sampling", cfg.seed, step)  # prompt rng, independent of the scenes' own rngs
        scenes = [scene_at("sam_train", cfg.seed, step * cfg.batch_images + i, cfg.scene)
                  for i in range(cfg.batch_images)]
        batches = [sam_image_batch(s, rng, img_size, cfg.prompts_per_image, cfg.background_prob, cfg.box_prob,
                                   cfg.box_jitter) for s in scenes]
        return sam_step_loss(sam, batches, balanced=step < switch, iou_loss_weight=cfg.iou_loss_weight)

    summary = run_loop(name="sam", out_dir=out_dir, model=sam, optimizer=optimizer, steps=cfg.steps,
                       recipe_hash=config_hash(cfg), step_fn=step_fn, checkpoint_every=cfg.checkpoint_every,
                       grad_clip=cfg.grad_clip, params=params, progress=progress, stop_after=cfg.stop_after,
                       lr_at=lambda s: cosine_lr(s, cfg.steps, cfg.lr, cfg.warmup_steps, cfg.min_lr_frac))
    path = out_dir / WEIGHTS_NAME.format(arch=cfg.arch)
    save_sam_checkpoint(sam, path, config=SAM_CONFIGS[cfg.arch])
    write_recipe(out_dir, "sam", config_dict(cfg), config_hash(cfg), summary, path.name)
    return path

