"""Pretrain the tiny LAVT's Swin on SynthRef foundation scenes: name the shape, colour and size of every object.

LAVT starts from an ImageNet-classification Swin; here the stand-in for ImageNet is attribute classification on
generated scenes (the ``swin_train`` stream of `pseudo_ris.foundation.data`, disjoint from every SynthRef image).
The network is exactly the preset's Swin (its patch embedding and stages, built by the RIS model itself), fed whole
scenes at the preset's input size. Each object's features are averaged inside its visible mask at every stage
(area-downsampled mask as weights) and concatenated; three linear heads name shape, colour and size. Pooling inside
the mask, rather than over the image, makes the features say *where* each attribute is, which is what a
segmentation model needs from its backbone.

The exported file is a Swin checkpoint in Swin's own key layout (``patch_embed.*``, ``layers.i.blocks.j.*``,
``layers.i.downsample.*`` with patch merging at the start of a stage) plus the classifier under ``head.*``, so the
RIS model loads it through its ordinary Swin loader, which skips ``head.*`` as it skips an ImageNet classifier.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pseudo_ris.data.io import atomic_write_bytes
from pseudo_ris.data.safe_load import load_torch_file
from pseudo_ris.foundation.config import config_dict, config_hash, make_config
from pseudo_ris.foundation.data import scene_at
from pseudo_ris.foundation.loop import adamw_without_norm_decay, cosine_lr, run_loop, write_recipe
from pseudo_ris.synthref.scene import Scene
from pseudo_ris.synthref.vocab import COLOURS, SHAPES, SIZES
from ris_models.pretraining.config import SwinPretrainConfig

ATTRIBUTES: dict[str, tuple[str, ...]] = {"shape": SHAPES, "colour": COLOURS, "size": SIZES}


def weights_name(preset: str) -> str:
    return f"{preset}_swin.pt"


class SwinBackbone(nn.Module):
    """The Swin part of a LAVT encoder (the very modules, so parameter names match): images -> 4 maps [B,C,h,w]."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.patch_embed = encoder.patch_embed
        self.stages = encoder.stages
        self.channels = tuple(encoder.channels)

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        x = self.patch_embed(images)
        outs = []
        for stage in self.stages:
            x = stage(x)
            outs.append(x.permute(0, 3, 1, 2))
        return outs


class AttributeClassifier(nn.Module):
    """Swin + mask-pooled multi-scale features + one linear head per attribute (see module docstring)."""

    def __init__(self, backbone: SwinBackbone) -> None:
        super().__init__()
        self.backbone = backbone
        width = sum(backbone.channels)
        self.head = nn.ModuleDict({"norm": nn.LayerNorm(width),
                                   **{k: nn.Linear(width, len(v)) for k, v in ATTRIBUTES.items()}})

    def forward(self, images: torch.Tensor, masks: torch.Tensor, owner: torch.Tensor) -> dict[str, torch.Tensor]:
        """``masks [N, S, S]`` float visible masks of N objects, ``owner [N]`` their image -> logits per attribute."""
        pooled = []
        for feat in self.backbone(images):
            weight = F.adaptive_avg_pool2d(masks[:, None], feat.shape[-2:])  # share of each cell the object covers
            pooled.append((feat[owner] * weight).sum((2, 3)) / weight.sum((2, 3)).clamp_min(1e-6))
        z = self.head["norm"](torch.cat(pooled, 1))
        return {k: self.head[k](z) for k in ATTRIBUTES}


def build_classifier(preset: str) -> tuple[AttributeClassifier, Any]:
    """A fresh classifier around the preset's own (randomly initialised) Swin, and the RIS model it came from."""
    from ris_models.registry import build_model

    model = build_model(preset, pretrained=False, load_pretrained=False)
    if model.model_type != "lavt":
        raise ValueError(f"preset {preset!r} is not a LAVT model")
    return AttributeClassifier(SwinBackbone(model.encoder)), model


def scene_batch(scenes: list[Scene], input_size: int, mean: torch.Tensor, std: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """Normalised images [B,3,S,S], object masks [N,S,S], owner [N] and attribute labels [N] of some scenes."""
    images, masks, owner = [], [], []
    labels: dict[str, list[int]] = {k: [] for k in ATTRIBUTES}
    for i, scene in enumerate(scenes):
        images.append(torch.from_numpy(np.ascontiguousarray(scene.image)).permute(2, 0, 1).float() / 255.0)
        for obj in scene.objects:
            masks.append(torch.from_numpy(obj.mask.astype(np.float32)))
            owner.append(i)
            for key, names in ATTRIBUTES.items():
                labels[key].append(names.index(getattr(obj, key)))
    image_t, mask_t = torch.stack(images), torch.stack(masks)
    if image_t.shape[-1] != input_size or image_t.shape[-2] != input_size:
        image_t = F.interpolate(image_t, size=(input_size, input_size), mode="bilinear", align_corners=False,
                                antialias=True)
        mask_t = F.interpolate(mask_t[:, None], size=(input_size, input_size), mode="area")[:, 0]
    return ((image_t - mean) / std, mask_t, torch.tensor(owner, dtype=torch.long),
            {k: torch.tensor(v, dtype=torch.long) for k, v in labels.items()})


def export_state(classifier: AttributeClassifier) -> dict[str, torch.Tensor]:
    """Swin's key layout (``stages.i`` -> ``layers.i``) plus ``head.*``; see module docstring."""
    state = {}
    for key, value in classifier.state_dict().items():
        if key.startswith("backbone."):
            key = key[len("backbone."):]
            key = "layers." + key[len("stages."):] if key.startswith("stages.") else key
        state[key] = value.detach().clone()
    return state


def train_swin(cfg: SwinPretrainConfig | dict | None = None, out_dir: str | Path = "outputs/foundation/swin",
               progress: bool = True, **overrides: Any) -> Path:
    """Train (or resume) the Swin stand-in; returns the exported checkpoint (``<out>/<preset>_swin.pt``)."""
    cfg = make_config(SwinPretrainConfig, cfg, **overrides)
    out_dir = Path(out_dir)
    torch.manual_seed(cfg.seed)
    classifier, _ = build_classifier(cfg.preset)
    io_args = build_model_io(cfg.preset)
    # as Swin's own training, norms, biases and relative-position tables are not decayed
    optimizer, _ = adamw_without_norm_decay(classifier, cfg.lr, cfg.weight_decay,
                                            no_decay_names=("relative_position_bias_table",))

    def step_fn(step: int) -> dict[str, torch.Tensor]:
        scenes = [scene_at("swin_train", cfg.seed, step * cfg.batch_scenes + j, cfg.scene or None)
                  for j in range(cfg.batch_scenes)]
        images, masks, owner, labels = scene_batch(scenes, *io_args)
        logits = classifier(images, masks, owner)
        terms = {f"loss_{k}": F.cross_entropy(logits[k], labels[k]) for k in ATTRIBUTES}
        acc = {f"acc_{k}": (logits[k].argmax(1) == labels[k]).float().mean() for k in ATTRIBUTES}
        return {"loss": sum(terms.values()), **terms, **acc}

    summary = run_loop(name="swin", out_dir=out_dir, model=classifier, optimizer=optimizer, steps=cfg.steps,
                       recipe_hash=config_hash(cfg), step_fn=step_fn, checkpoint_every=cfg.checkpoint_every,
                       grad_clip=cfg.grad_clip, progress=progress, stop_after=cfg.stop_after,
                       lr_at=lambda s: cosine_lr(s, cfg.steps, cfg.lr, cfg.warmup_steps, cfg.min_lr_frac))
    buf = io.BytesIO()
    torch.save(export_state(classifier), buf)
    path = atomic_write_bytes(out_dir / weights_name(cfg.preset), buf.getvalue())
    write_recipe(out_dir, "swin", config_dict(cfg), config_hash(cfg), summary, path.name)
    return path


def load_classifier(weights: str | Path, preset: str = "lavt_tiny") -> AttributeClassifier:
    """The classifier of an exported file: the Swin through the RIS model's own loader, the heads from ``head.*``."""
    from ris_models.registry import build_model

    ris = build_model(preset, pretrained=False, swin_pretrained=str(weights))
    classifier = AttributeClassifier(SwinBackbone(ris.encoder))
    state = load_torch_file(Path(weights), what="Swin stand-in")
    classifier.head.load_state_dict({k[len("head."):]: v for k, v in state.items() if k.startswith("head.")})
    return classifier.eval()


@torch.no_grad()
def evaluate_swin(weights: str | Path, *, preset: str = "lavt_tiny", num_images: int = 100, seed: int = 0,
                  scene: dict | None = None) -> dict[str, Any]:
    """Accuracy per attribute on held-out scenes (the ``swin_eval`` stream), with the majority-class rate of each
    attribute on the same objects as the chance level, and the accuracy on small objects (the hard case)."""
    classifier = load_classifier(weights, preset)
    io_args = build_model_io(preset)
    hits = {k: 0 for k in ATTRIBUTES}
    small_hits, small_n, n = {k: 0 for k in ATTRIBUTES}, 0, 0
    counts: dict[str, dict[int, int]] = {k: {} for k in ATTRIBUTES}
    for index in range(num_images):
        sc = scene_at("swin_eval", seed, index, scene or None)
        images, masks, owner, labels = scene_batch([sc], *io_args)
        logits = classifier(images, masks, owner)
        small = labels["size"] == SIZES.index("small")
        n += len(owner)
        small_n += int(small.sum())
        for k in ATTRIBUTES:
            ok = logits[k].argmax(1) == labels[k]
            hits[k] += int(ok.sum())
            small_hits[k] += int(ok[small].sum())
            for v in labels[k].tolist():
                counts[k][v] = counts[k].get(v, 0) + 1
    out: dict[str, Any] = {"weights": Path(weights).name, "preset": preset, "num_images": num_images, "objects": n}
    for k in ATTRIBUTES:
        out[f"{k}_acc"] = round(hits[k] / max(n, 1), 4)
        out[f"{k}_majority_rate"] = round(max(counts[k].values()) / max(n, 1), 4)
        out[f"{k}_acc_small_objects"] = round(small_hits[k] / max(small_n, 1), 4)
    return out


def build_model_io(preset: str) -> tuple[int, torch.Tensor, torch.Tensor]:
    """Input size and normalisation of a preset (what `scene_batch` needs besides the scenes)."""
    from ris_models.registry import MODEL_REGISTRY

    cfg = MODEL_REGISTRY[preset]
    return (int(cfg["input_size"]), torch.tensor(cfg["image_mean"]).view(1, 3, 1, 1),
            torch.tensor(cfg["image_std"]).view(1, 3, 1, 1))
