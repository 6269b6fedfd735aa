"""Training data of the SynthRef foundation models: scene streams, SAM prompt batches, object crops, generic captions.

Scenes are generated on the fly from a seed stream that is disjoint from every evaluation dataset: each scene's
rng is ``default_rng([FOUNDATION_TAG, stream, seed, index])``, a SeedSequence entropy that SynthRef's dataset
builder never uses (it seeds with its own dataset seed), so no evaluation image is ever drawn here. The stream is a
pure function of (stream, seed, index), which makes training resumable bit for bit: step ``s`` always sees the same
scenes.

Captions are GENERIC: the shape with a random subset of its own attributes, each attribute kept
independently of the scene, so they never tell an object apart from the others on purpose. They use no location,
relation or comparative word, which is what a CC3M-style captioner gives and what distinctive sampling must fix.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..synthref.scene import Scene, SceneConfig, render_scene
from ..synthref.vocab import COLOURS, SHAPES, SIZES
from .config import GenericCaptionConfig

FOUNDATION_TAG = 0x5EED_F0DA  # entropy word that marks foundation-model streams
# scenes of each purpose, plus the per-step sampling rngs (prompts, crops, captions) of the two trainers
STREAMS = {"sam_train": 1, "coca_train": 2, "sam_eval": 3, "coca_eval": 4, "test": 5, "sam_sampling": 6,
           "coca_sampling": 7, "clip_train": 8, "clip_scenes": 9, "clip_sampling": 10, "clip_eval": 11,
           # the LAVT stand-ins (trained in ris_models.pretraining): Swin attribute classification, BERT MLM
           "swin_train": 12, "swin_eval": 13, "bert_train": 14, "bert_eval": 15, "bert_sampling": 16,
           "bert_eval_sampling": 17,
           # scenes of the CoCa's bank of automatic SAM masks (pseudo_ris.foundation.sam_bank)
           "coca_sam_bank": 18}

# Words generic captions may contain; everything else (locations, relations, comparatives) is distinctive.
CAPTION_FILLER_WORDS: tuple[str, ...] = ("a", "an", "the", "in", "picture", "photo", "of")


# ---------------------------------------------------------------------------------------------------------------
# scene streams
# ---------------------------------------------------------------------------------------------------------------

def scene_rng(stream: str, seed: int, index: int) -> np.random.Generator:
    """The rng of scene ``index`` of a named stream (see module docstring for why this is disjoint)."""
    if stream not in STREAMS:
        raise KeyError(f"unknown foundation scene stream {stream!r}; known: {sorted(STREAMS)}")
    return np.random.default_rng([FOUNDATION_TAG, STREAMS[stream], int(seed), int(index)])


def scene_at(stream: str, seed: int, index: int, scene_cfg: SceneConfig | dict | None = None) -> Scene:
    return render_scene(scene_rng(stream, seed, index), SceneConfig.from_any(scene_cfg or None))


def scene_stream(stream: str, seed: int, start: int = 0,
                 scene_cfg: SceneConfig | dict | None = None) -> Iterator[Scene]:
    index = start
    while True:
        yield scene_at(stream, seed, index, scene_cfg)
        index += 1


# ---------------------------------------------------------------------------------------------------------------
# generic captions
# ---------------------------------------------------------------------------------------------------------------

def _article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"


def generic_caption(shape: str, colour: str, size: str, rng: np.random.Generator,
                    cfg: GenericCaptionConfig | None = None) -> tuple[str, dict]:
    """One generic caption of an object and the attributes it states (``{"shape", "colour"?, "size"?}``).

    Size is kept with probability ``size_prob`` and colour with ``colour_prob``, independently of each other and
    of the scene, so a caption is never chosen to single its object out.
    """
    cfg = cfg or GenericCaptionConfig()
    stated = {"shape": shape}
    words = []
    if rng.random() < cfg.size_prob:
        words.append(size)
        stated["size"] = size
    if rng.random() < cfg.colour_prob:
        words.append(colour)
        stated["colour"] = colour
    np_text = " ".join(words + [shape])
    templates = list(cfg.templates)
    weights = np.asarray([cfg.templates[t] for t in templates], dtype=float)
    template = templates[int(rng.choice(len(templates), p=weights / weights.sum()))]
    return template.format(a=_article(np_text), np=np_text), stated


def prompt_text(stated: dict) -> str:
    """The DoC correctness prompt form "a photo of a {noun phrase}" of the stated attributes."""
    np_text = " ".join([stated[k] for k in ("size", "colour") if k in stated] + [stated["shape"]])
    return f"a photo of {_article(np_text)} {np_text}"


def caption_vocabulary() -> list[str]:
    """Every word a generic caption or the DoC prompt can contain: all concepts, held-out ones included."""
    return sorted(set(CAPTION_FILLER_WORDS) | set(SHAPES) | set(COLOURS) | set(SIZES))


def compatible(stated: Sequence[dict], objects: Sequence[dict]) -> torch.Tensor:
    """``[n_objects, n_texts]`` bool: text j states nothing false about object i (multi-positive contrastive target)."""
    out = torch.zeros(len(objects), len(stated), dtype=torch.bool)
    for i, obj in enumerate(objects):
        for j, st in enumerate(stated):
            out[i, j] = all(obj[k] == v for k, v in st.items())
    return out


# ---------------------------------------------------------------------------------------------------------------
# crops (the generator's own view function, so training and use match)
# ---------------------------------------------------------------------------------------------------------------

def object_views(image: np.ndarray, masks: np.ndarray, size: int) -> torch.Tensor:
    """``[N, 4, 3, size, size]`` in [0, 1]: the exact views the pseudo-label generator captions and scores."""
    from ..crops import make_views
    return make_views(image, masks, size=size)


# ---------------------------------------------------------------------------------------------------------------
# SAM prompt batches
# ---------------------------------------------------------------------------------------------------------------

@dataclass
class SamImageBatch:
    """Prompts and targets of one image, all in the model's input frame (``img_size`` square, padded)."""

    image: torch.Tensor         # float [3, S, S] in 0..255, resized, not normalised (Sam.preprocess does that)
    points: torch.Tensor        # float [P, 1, 2] (x, y) in the input frame
    point_labels: torch.Tensor  # long [P, 1] (all 1: a foreground click)
    point_targets: torch.Tensor  # float [P, S, S] (all-zero for background clicks)
    boxes: torch.Tensor         # float [B, 4] (x0, y0, x1, y1) in the input frame
    box_targets: torch.Tensor   # float [B, S, S]


def _resize_image(image: np.ndarray, img_size: int) -> tuple[torch.Tensor, float]:
    """Longest side to ``img_size`` (SAM's ResizeLongestSide), bottom/right padding left to Sam.preprocess."""
    h, w = image.shape[:2]
    scale = img_size / max(h, w)
    t = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float()
    if scale != 1.0:
        nh, nw = int(round(h * scale)), int(round(w * scale))
        t = F.interpolate(t[None], size=(nh, nw), mode="bilinear", align_corners=False, antialias=True)[0]
    return t, scale


def _resize_masks(masks: np.ndarray, scale: float, img_size: int) -> torch.Tensor:
    """Masks into the padded input frame (bilinear then > 0.5, so thin parts survive downscaling)."""
    t = torch.from_numpy(masks.astype(np.float32))
    if scale != 1.0:
        h, w = masks.shape[1:]
        t = F.interpolate(t[:, None], size=(int(round(h * scale)), int(round(w * scale))), mode="bilinear",
                          align_corners=False)[:, 0]
        t = (t > 0.5).float()
    out = torch.zeros(len(masks), img_size, img_size)
    out[:, : t.shape[1], : t.shape[2]] = t
    return out


def sam_image_batch(scene: Scene, rng: np.random.Generator, img_size: int, n_prompts: int,
                    background_prob: float, box_prob: float, box_jitter: float) -> SamImageBatch:
    """Sample ``n_prompts`` prompts of one scene: foreground clicks, background clicks and jittered boxes."""
    masks = np.stack([o.mask for o in scene.objects]).astype(bool)  # visible masks, disjoint
    h, w = masks.shape[1:]
    image, scale = _resize_image(scene.image, img_size)
    targets = _resize_masks(masks, scale, img_size)
    background = ~masks.any(0)
    fg_pix = [np.argwhere(m) for m in masks]  # (y, x)
    bg_pix = np.argwhere(background)

    pts, pt_targets, boxes, box_targets = [], [], [], []
    for _ in range(n_prompts):
        u = rng.random()
        if u < background_prob and len(bg_pix):
            y, x = bg_pix[int(rng.integers(len(bg_pix)))]
            pts.append(((x + 0.5) * scale, (y + 0.5) * scale))
            pt_targets.append(torch.zeros(img_size, img_size))
            continue
        k = int(rng.integers(len(masks)))
        if u < background_prob + box_prob:
            x, y, bw, bh = scene.objects[k].bbox
            jit = box_jitter * np.array([bw, bh, bw, bh]) * rng.uniform(-1, 1, size=4)
            x0, y0, x1, y1 = np.array([x, y, x + bw, y + bh]) + jit
            x0, x1 = np.clip(sorted((x0, x1)), 0, w)
            y0, y1 = np.clip(sorted((y0, y1)), 0, h)
            boxes.append(np.array([x0, y0, x1, y1]) * scale)
            box_targets.append(targets[k])
        else:
            y, x = fg_pix[k][int(rng.integers(len(fg_pix[k])))]
            pts.append(((x + 0.5) * scale, (y + 0.5) * scale))
            pt_targets.append(targets[k])

    def stack(items: list, shape: tuple) -> torch.Tensor:
        return torch.stack(items) if items else torch.zeros(shape)

    return SamImageBatch(
        image=image,
        points=torch.tensor(np.asarray(pts, dtype=np.float32).reshape(-1, 1, 2)),
        point_labels=torch.ones(len(pts), 1, dtype=torch.long),
        point_targets=stack(pt_targets, (0, img_size, img_size)),
        boxes=torch.tensor(np.asarray(boxes, dtype=np.float32).reshape(-1, 4)),
        box_targets=stack(box_targets, (0, img_size, img_size)),
    )


# ---------------------------------------------------------------------------------------------------------------
# CoCa crop batches
# ---------------------------------------------------------------------------------------------------------------

@dataclass
class CocaBatch:
    images: torch.Tensor        # float [B, 3, S, S] in [0, 1] (normalise with the model's mean/std)
    captions: list[str]
    texts: list[str]            # contrastive text: the caption or its "a photo of a ..." prompt form
    stated: list[dict]          # attributes each text states
    objects: list[dict]         # true attributes of each crop's object
    views: list[int]            # which of the 4 views each crop is


def _grow(mask: np.ndarray, steps: int, grow: bool) -> np.ndarray:
    """4-neighbour dilation (``grow``) or erosion by ``steps`` pixels, in numpy."""
    m = mask.copy()
    for _ in range(steps):
        padded = np.pad(m, 1, constant_values=not grow)
        stack = [padded[1:-1, 1:-1], padded[:-2, 1:-1], padded[2:, 1:-1], padded[1:-1, :-2], padded[1:-1, 2:]]
        m = np.logical_or.reduce(stack) if grow else np.logical_and.reduce(stack)
    return m


def sam_like_mask(mask: np.ndarray, rng: np.random.Generator, min_keep: float = 0.4) -> np.ndarray:
    """A plausible error of an automatic mask generator on ``mask``: too loose or too tight by 1-3 px, a part cut
    off by a straight line, a background blob attached, or shifted by a few pixels. Captioners trained only on exact
    ground-truth masks misname shapes on such masks; training on them too teaches the shape from imperfect
    outlines. A result keeping less than ``min_keep`` of the object (or nothing) falls back to the exact mask."""
    h, w = mask.shape
    area = int(mask.sum())
    kind = int(rng.integers(4))
    if kind == 0:
        out = _grow(mask, int(rng.integers(1, 4)), grow=bool(rng.random() < 0.5))
    elif kind == 1:  # keep one side of a random line through a random object pixel
        ys, xs = np.nonzero(mask)
        k = int(rng.integers(len(ys)))
        angle = rng.uniform(0, 2 * np.pi)
        yy, xx = np.mgrid[:h, :w]
        side = (xx - xs[k]) * np.cos(angle) + (yy - ys[k]) * np.sin(angle)
        out = mask & (side <= rng.uniform(0.2, 1.0) * np.sqrt(area))
    elif kind == 2:  # an ellipse of background glued to the object's border
        ys, xs = np.nonzero(mask)
        k = int(rng.integers(len(ys)))
        r = max(2.0, np.sqrt(area) * rng.uniform(0.2, 0.5))
        yy, xx = np.mgrid[:h, :w]
        blob = ((yy - ys[k]) / r) ** 2 + ((xx - xs[k]) / (r * rng.uniform(0.5, 1.5))) ** 2 <= 1.0
        out = mask | blob
    else:
        dy, dx = (int(v) for v in rng.integers(-3, 4, size=2))
        out = np.zeros_like(mask)
        out[max(dy, 0): h + min(dy, 0), max(dx, 0): w + min(dx, 0)] = \
            mask[max(-dy, 0): h + min(-dy, 0), max(-dx, 0): w + min(-dx, 0)]
    return out if (out & mask).sum() >= min_keep * area and out.any() else mask


class CaptionedCrops:
    """Rows of a `CocaBatch` under construction: one random view of an object's crops, a generic caption of the
    object and its contrastive text, drawn from ``rng`` in a fixed order (so a recipe's batches never change)."""

    def __init__(self, caption_cfg: GenericCaptionConfig, prompt_prob: float) -> None:
        self.caption_cfg, self.prompt_prob = caption_cfg, prompt_prob
        self.images: list[torch.Tensor] = []
        self.captions: list[str] = []
        self.texts: list[str] = []
        self.stated: list[dict] = []
        self.objects: list[dict] = []
        self.views: list[int] = []

    def __len__(self) -> int:
        return len(self.images)

    def add(self, object_views_: torch.Tensor, obj: Any, rng: np.random.Generator) -> None:
        """``object_views_``: ``[V, 3, S, S]`` crops of ``obj`` (anything with ``shape`` / ``colour`` / ``size``)."""
        v = int(rng.integers(object_views_.shape[0]))
        caption, stated = generic_caption(obj.shape, obj.colour, obj.size, rng, self.caption_cfg)
        self.images.append(object_views_[v])
        self.captions.append(caption)
        self.texts.append(prompt_text(stated) if rng.random() < self.prompt_prob else caption)
        self.stated.append(stated)
        self.objects.append({"shape": obj.shape, "colour": obj.colour, "size": obj.size})
        self.views.append(v)

    def build(self) -> CocaBatch:
        return CocaBatch(torch.stack(self.images), self.captions, self.texts, self.stated, self.objects, self.views)


def coca_batch(scenes: Iterable[Scene], rng: np.random.Generator, size: int, batch_size: int,
               objects_per_scene: int, caption_cfg: GenericCaptionConfig, prompt_prob: float,
               sam_like_prob: float = 0.0) -> CocaBatch:
    """Crops of up to ``objects_per_scene`` random objects per scene, one random view each, with generic captions.

    ``sam_like_prob``: each object's crops are cut from a `sam_like_mask` of it with this probability (0 draws no
    extra random numbers, so recipes without it give the same batches as before)."""
    crops = CaptionedCrops(caption_cfg, prompt_prob)
    for scene in scenes:
        if len(crops) >= batch_size:
            break
        take = min(objects_per_scene, len(scene.objects), batch_size - len(crops))
        chosen = rng.choice(len(scene.objects), size=take, replace=False)
        masks = np.stack([scene.objects[int(k)].mask for k in chosen])
        if sam_like_prob > 0:
            masks = np.stack([sam_like_mask(m, rng) if rng.random() < sam_like_prob else m for m in masks])
        all_views = object_views(scene.image, masks, size)
        for row, k in enumerate(chosen):
            crops.add(all_views[row], scene.objects[int(k)], rng)
    return crops.build()
