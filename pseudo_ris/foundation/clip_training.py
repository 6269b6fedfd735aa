"""Train the SynthRef CLIP stand-in: a tiny open_clip ResNet CLIP, the image/text encoders the tiny CRIS starts from.

CRIS starts from OpenAI CLIP RN50, and the paper's DoC filter scores with the same kind of model. Neither can be
downloaded here, so this trains a CLIP with exactly the tiny CRIS encoders' architecture (``clip_synthref``, a
project open_clip config: ModifiedResNet width 16, one bottleneck per stage, 128 px; 2-layer text transformer with
CLIP's BPE and 17 tokens) contrastively on generated scenes that no evaluation dataset contains (the foundation
scene streams). Its file loads as ``model.pretrained`` of ``cris_tiny`` and as an open_clip DoC scorer.

Pairs: an object view (the generator's four crops, so the scorer sees the pixels it is queried with) or, with
probability ``scene_prob``, the whole scene, with a generic caption of one object. The target is multi-positive, as
for the CoCa stand-in: a caption is a positive of every image it states nothing false about (for a scene, about any
of its objects).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .coca_training import multi_positive_contrastive
from .config import ClipTrainConfig, GenericCaptionConfig, config_dict, config_hash, make_config
from .data import coca_batch, compatible, generic_caption, prompt_text, scene_at, scene_rng
from .loop import adamw_without_norm_decay, clamp_logit_scale, cosine_lr, run_loop, write_recipe

ARCH = "clip_synthref"
WEIGHTS_NAME = "clip_synthref.pt"
#: CRIS normalises with OpenAI CLIP's statistics; the stand-in is trained with the same ones
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def build_clip(arch: str = ARCH) -> torch.nn.Module:
    """The random-init stand-in (open_clip; the project configs are registered on import of the CoCa loader)."""
    import open_clip

    from ..captioning.coca import register_project_configs

    register_project_configs()
    return open_clip.create_model(arch, pretrained=None)


def _letterbox(image: np.ndarray, size: int) -> torch.Tensor:
    """Whole scene as a ``[3, size, size]`` square in [0, 1] (the tiny CRIS letterboxes its inputs the same way)."""
    t = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float() / 255.0
    h, w = t.shape[1:]
    scale = size / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    t = F.interpolate(t[None], size=(nh, nw), mode="bilinear", align_corners=False, antialias=True)[0]
    out = torch.full((3, size, size), 0.5)
    out[:, :nh, :nw] = t
    return out


def clip_batch(step: int, cfg: ClipTrainConfig, size: int, caption_cfg: GenericCaptionConfig
               ) -> tuple[torch.Tensor, list[str], torch.Tensor]:
    """Images ``[B, 3, S, S]`` in [0, 1], texts, and the ``[B, B]`` positives of one step (a pure function of step)."""
    rng = scene_rng("clip_sampling", cfg.seed, step)
    n_scene = int(rng.binomial(cfg.batch_size, cfg.scene_prob))
    scenes = (scene_at("clip_train", cfg.seed, step * 1000 + i, cfg.scene) for i in range(1000))
    crops = coca_batch(scenes, rng, size, cfg.batch_size - n_scene, cfg.objects_per_scene, caption_cfg,
                       cfg.prompt_text_prob)
    images, texts = list(crops.images), list(crops.texts)
    image_objects = [[o] for o in crops.objects]
    stated = list(crops.stated)
    for i in range(n_scene):
        scene = scene_at("clip_scenes", cfg.seed, step * 1000 + i, cfg.scene)
        obj = scene.objects[int(rng.integers(len(scene.objects)))]
        caption, said = generic_caption(obj.shape, obj.colour, obj.size, rng, caption_cfg)
        images.append(_letterbox(scene.image, size))
        texts.append(prompt_text(said) if rng.random() < cfg.prompt_text_prob else caption)
        stated.append(said)
        image_objects.append([{"shape": o.shape, "colour": o.colour, "size": o.size} for o in scene.objects])
    positives = torch.stack([compatible(stated, objs).any(0) for objs in image_objects])
    return torch.stack(images), texts, positives


def half_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The weights as float16: CLIP's 49,408-word embedding table alone is 12.6 MB in float32, twice the size of the
    rest; half precision keeps the shipped file small (loading casts back to the model's float32)."""
    return {k: (v.detach().to(torch.float16) if v.is_floating_point() else v.detach()).contiguous()
            for k, v in model.state_dict().items()}


def train_clip(cfg: ClipTrainConfig | dict | None = None, out_dir: str | Path = "outputs/foundation/clip",
               progress: bool = True, **overrides: Any) -> Path:
    """Train (or resume) the CLIP stand-in; returns a (float16) state-dict file for
    ``open_clip.create_model(ARCH, file)``."""
    import open_clip

    from ..data.io import atomic_write_bytes

    cfg = make_config(ClipTrainConfig, cfg, **overrides)
    caption_cfg = make_config(GenericCaptionConfig, cfg.captions or None)
    out_dir = Path(out_dir)
    torch.manual_seed(cfg.seed)
    # channels-last: the narrow ResNet's convolutions run ~1.5x faster on a CPU (same weights, same state-dict keys)
    model = build_clip(cfg.arch).to(memory_format=torch.channels_last)
    tokenizer = open_clip.get_tokenizer(cfg.arch)
    size = int(model.visual.image_size if isinstance(model.visual.image_size, int) else model.visual.image_size[0])
    mean = torch.tensor(OPENAI_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(OPENAI_STD).view(1, 3, 1, 1)
    optimizer, params = adamw_without_norm_decay(model, cfg.lr, cfg.weight_decay)

    def step_fn(step: int) -> dict[str, torch.Tensor]:
        images, texts, positives = clip_batch(step, cfg, size, caption_cfg)
        pixels = ((images - mean) / std).contiguous(memory_format=torch.channels_last)
        image_features = model.encode_image(pixels, normalize=True)
        text_features = model.encode_text(tokenizer(texts), normalize=True)
        loss = multi_positive_contrastive(image_features, text_features, model.logit_scale.exp(), positives)
        return {"loss": loss, "logit_scale": model.logit_scale.exp().detach()}

    summary = run_loop(name="clip", out_dir=out_dir, model=model, optimizer=optimizer, steps=cfg.steps,
                       recipe_hash=config_hash(cfg), step_fn=step_fn, checkpoint_every=cfg.checkpoint_every,
                       grad_clip=cfg.grad_clip, params=params, progress=progress, stop_after=cfg.stop_after,
                       after_step=clamp_logit_scale(model),
                       lr_at=lambda s: cosine_lr(s, cfg.steps, cfg.lr, cfg.warmup_steps, cfg.min_lr_frac))
    model.eval()
    import io

    buf = io.BytesIO()
    torch.save(half_state_dict(model), buf)
    path = atomic_write_bytes(out_dir / WEIGHTS_NAME, buf.getvalue())
    write_recipe(out_dir, "clip", config_dict(cfg), config_hash(cfg), summary, path.name)
    return path


@torch.no_grad()
def evaluate_clip(weights: str | Path, *, arch: str = ARCH, num_images: int = 40, seed: int = 0) -> dict[str, Any]:
    """Quality of a CLIP stand-in on held-out scenes (the ``clip_eval`` stream), as a zero-shot classifier and as a
    DoC scorer: shape / colour accuracy of the best prompt ``"a photo of a {colour} {shape}"`` on masked views, how
    often a full caption picks its own object among the scene's objects (margin-1.2 views), and the cosine range
    (DoC's plain ratios need positive scores)."""
    import itertools

    import open_clip

    from ..crops import make_views
    from ..synthref.vocab import COLOURS, SHAPES

    model = build_clip(arch)
    model.load_state_dict(torch.load(Path(weights), map_location="cpu", weights_only=True))
    model.eval()
    tokenizer = open_clip.get_tokenizer(arch)
    size = int(model.visual.image_size if isinstance(model.visual.image_size, int) else model.visual.image_size[0])
    mean, std = torch.tensor(OPENAI_MEAN).view(1, 3, 1, 1), torch.tensor(OPENAI_STD).view(1, 3, 1, 1)
    pairs = list(itertools.product(COLOURS, SHAPES))
    prompts = model.encode_text(tokenizer([f"a photo of a {c} {s}" for c, s in pairs]), normalize=True)
    shape_ok = colour_ok = retrieval_ok = retrieval_n = objects = 0
    cos_min, matched = 1.0, []
    for index in range(num_images):
        scene = scene_at("clip_eval", seed, index)
        masks = np.stack([o.mask for o in scene.objects])
        views = make_views(scene.image, masks, size)  # [N, 4, 3, S, S]: masked, margins 1.0 / 1.1 / 1.2
        masked = model.encode_image((views[:, 0] - mean) / std, normalize=True)
        context = model.encode_image((views[:, 3] - mean) / std, normalize=True)
        best = (masked @ prompts.T).argmax(1)
        for k, obj in enumerate(scene.objects):
            colour, shape = pairs[int(best[k])]
            shape_ok += shape == obj.shape
            colour_ok += colour == obj.colour
            objects += 1
        captions = model.encode_text(tokenizer([f"a {o.colour} {o.shape}" for o in scene.objects]), normalize=True)
        sims = context @ captions.T  # [objects, captions]
        cos_min = min(cos_min, float(sims.min()))
        matched.extend(float(sims[k, k]) for k in range(len(scene.objects)))
        for k, obj in enumerate(scene.objects):
            twins = [j for j, o in enumerate(scene.objects) if (o.colour, o.shape) == (obj.colour, obj.shape)]
            if len(scene.objects) > 1 and len(twins) == 1:  # the caption refers: does the scorer pick the object?
                retrieval_ok += int(sims[:, k].argmax()) == k
                retrieval_n += 1
    return {"weights": Path(weights).name, "num_images": num_images, "objects": objects,
            "zeroshot_shape_acc": round(shape_ok / max(objects, 1), 4),
            "zeroshot_colour_acc": round(colour_ok / max(objects, 1), 4),
            "in_scene_retrieval_acc": round(retrieval_ok / max(retrieval_n, 1), 4), "in_scene_retrieval_n": retrieval_n,
            "cosine_matched_mean": round(float(np.mean(matched)), 4) if matched else None,
            "cosine_min": round(cos_min, 4)}
