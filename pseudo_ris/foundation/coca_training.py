"""Train the tiny CoCa captioner / CLIP scorer on object crops with generic captions.

Losses (CoCa, Yu et al. 2022; open_clip's CoCaLoss): captioning cross-entropy with teacher forcing, plus a
contrastive image-text loss. Generic captions repeat a lot ("a circle" is true of every circle), so plain InfoNCE
would push apart an image and a caption that describes it correctly; the contrastive target is therefore
multi-positive: caption j is a positive of crop i when it states nothing false about i's object (uniform target
over the positives, both directions). That is what the DoC filter asks of the scorer: for a fixed text, score the
objects it fits above the others (arXiv 2407.07412, Sec. 3.3).

Crops are the generator's own four views (`pseudo_ris.crops.make_views`), one random view per object, so training
and pseudo-labelling see the same pixels. The contrastive text is sometimes rewritten to the DoC correctness prompt
"a photo of a {noun phrase}" so the scorer understands the prompt it is queried with. With ``sam_like_prob`` > 0
some crops are cut from imperfect, SAM-like masks (`pseudo_ris.foundation.data.sam_like_mask`), which is what the
captioner sees during pseudo-labelling, and with ``sam_bank_share`` > 0 that share of every batch is cut from the
shipped tiny SAM's own automatic masks (`pseudo_ris.foundation.sam_bank`), which is what the shipped recipe's second
stage does. ``init`` makes a run a fine-tune of a parent recipe, trained first in a sub-folder, so a two-stage
recipe stays one command and one hash.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from .config import (CocaTrainConfig, FoundationConfigError, GenericCaptionConfig, config_dict, config_hash,
                     make_config)
from .data import caption_vocabulary, coca_batch, compatible, scene_at, scene_rng
from .loop import adamw_without_norm_decay, clamp_logit_scale, cosine_lr, run_loop, write_recipe
from .sam_bank import BANK_NAME, concat_batches, load_or_build_sam_bank, sam_bank_batch

WEIGHTS_NAME = "{arch}.pt"
CONTEXT_LENGTH = 32


def synthref_tokenizer(context_length: int = CONTEXT_LENGTH):
    """The word tokenizer of the SynthRef captioner: every caption/prompt word, all concepts included."""
    from ..captioning.tokenizer import WordTokenizer
    return WordTokenizer(caption_vocabulary(), context_length=context_length)


def multi_positive_contrastive(image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor,
                               positives: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE with a uniform target over each row's positives (``positives [B_img, B_txt]`` bool)."""
    logits = logit_scale * image_features @ text_features.t()
    pos = positives.float()
    i2t = -(pos / pos.sum(1, keepdim=True) * F.log_softmax(logits, dim=1)).sum(1).mean()
    t2i = -(pos.t() / pos.t().sum(1, keepdim=True) * F.log_softmax(logits.t(), dim=1)).sum(1).mean()
    return 0.5 * (i2t + t2i)


def coca_step_loss(bundle: Any, images: torch.Tensor, captions: list[str], texts: list[str],
                   positives: torch.Tensor, caption_weight: float, clip_weight: float) -> dict[str, torch.Tensor]:
    """Caption CE (pads ignored) + multi-positive contrastive loss of one batch."""
    model, tok = bundle.model, bundle.tokenizer
    pixels = bundle.preprocess(images)
    cap_ids = tok.encode(captions)
    out = model(pixels, cap_ids)
    caption_loss = F.cross_entropy(out["logits"].permute(0, 2, 1), out["labels"], ignore_index=tok.pad_id)
    if texts == captions:
        text_features = out["text_features"]
    else:
        text_features = model.encode_text(tok.encode(texts), normalize=True)
    clip_loss = multi_positive_contrastive(out["image_features"], text_features, out["logit_scale"], positives)
    loss = caption_weight * caption_loss + clip_weight * clip_loss
    return {"loss": loss, "caption": caption_loss.detach(), "contrastive": clip_loss.detach(),
            "logit_scale": out["logit_scale"].detach()}


def parent_run(cfg: CocaTrainConfig, out_dir: Path, progress: bool = True) -> tuple[Path, int]:
    """Weights of ``cfg.init`` (trained into ``<out_dir>/init-<hash>`` unless finished there) and its step count."""
    from .registry import finished_weights

    parent = make_config(CocaTrainConfig, cfg.init)
    if parent.arch != cfg.arch:
        raise FoundationConfigError(f"coca.init.arch={parent.arch!r} differs from coca.arch={cfg.arch!r}")
    run_dir = out_dir / f"init-{config_hash(parent)}"
    weights = finished_weights(run_dir)
    if weights is None:
        weights = train_coca(parent, out_dir=run_dir, progress=progress)
    return weights, parent.steps


def train_coca(cfg: CocaTrainConfig | dict | None = None, out_dir: str | Path = "outputs/foundation/coca",
               progress: bool = True, **overrides: Any) -> Path:
    """Train (or resume) the tiny CoCa; returns a checkpoint loadable by ``load_coca(arch, pretrained=path)``."""
    from ..captioning.coca import load_coca, save_coca_checkpoint

    cfg = make_config(CocaTrainConfig, cfg, **overrides)
    caption_cfg = make_config(GenericCaptionConfig, cfg.captions or None)
    out_dir = Path(out_dir)
    parent_weights, offset = None, 0
    if cfg.init:  # fine-tune: the parent recipe first (reused when finished, resumed when not)
        parent_weights, offset = parent_run(cfg, out_dir, progress)
    torch.manual_seed(cfg.seed)
    if parent_weights is None:
        bundle = load_coca(cfg.arch, tokenizer=synthref_tokenizer())
    else:
        bundle = load_coca(cfg.arch, pretrained=parent_weights)  # carries the parent's word tokenizer
    model = bundle.model
    optimizer, params = adamw_without_norm_decay(model, cfg.lr, cfg.weight_decay)
    from_bank = int(round(cfg.batch_size * cfg.sam_bank_share))
    bank, groups = None, {}
    if from_bank:
        bank = load_or_build_sam_bank(out_dir / BANK_NAME, scenes=cfg.sam_bank_scenes, seed=cfg.seed,
                                      scene_cfg=cfg.scene, progress=progress)
        groups = bank.by_scene()

    def step_fn(step: int) -> dict[str, torch.Tensor]:
        at = offset + step  # a fine-tune continues the parent's streams: scenes it has not seen
        rng = scene_rng("coca_sampling", cfg.seed, at)
        scenes = (scene_at("coca_train", cfg.seed, at * 1000 + i, cfg.scene) for i in range(1000))
        batch = coca_batch(scenes, rng, bundle.image_size, cfg.batch_size - from_bank, cfg.objects_per_scene,
                           caption_cfg, cfg.prompt_text_prob, cfg.sam_like_prob)
        if bank is not None:
            batch = concat_batches(batch, sam_bank_batch(bank, groups, rng, bundle.image_size, from_bank,
                                                         cfg.objects_per_scene, caption_cfg, cfg.prompt_text_prob,
                                                         cfg.seed, cfg.scene))
        positives = compatible(batch.stated, batch.objects)
        terms = coca_step_loss(bundle, batch.images, batch.captions, batch.texts, positives,
                               cfg.caption_loss_weight, cfg.clip_loss_weight)
        return terms

    summary = run_loop(name="coca", out_dir=out_dir, model=model, optimizer=optimizer, steps=cfg.steps,
                       recipe_hash=config_hash(cfg), step_fn=step_fn, checkpoint_every=cfg.checkpoint_every,
                       grad_clip=cfg.grad_clip, params=params, progress=progress, stop_after=cfg.stop_after,
                       after_step=clamp_logit_scale(model),
                       lr_at=lambda s: cosine_lr(s, cfg.steps, cfg.lr, cfg.warmup_steps, cfg.min_lr_frac))
    model.eval()
    path = out_dir / WEIGHTS_NAME.format(arch=cfg.arch)
    save_coca_checkpoint(bundle, path)
    write_recipe(out_dir, "coca", config_dict(cfg), config_hash(cfg), summary, path.name)
    return path
