"""Training recipes of the SynthRef foundation models as plain dataclasses.

The defaults here are the recipe that produced the weights shipped in ``pseudo_ris/assets/foundation`` (the exact
values used are also stored next to the weights), so ``ensure_foundation_models(retrain=True)`` reproduces the
shipped recipe without reading any file outside the package. ``conf/foundation.yaml`` mirrors these values for the
command line; a test keeps the two in sync.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Mapping, TypeVar

from ..data.errors import PseudoRISError
from ..data.plain import to_plain as _plain


class FoundationConfigError(PseudoRISError):
    """A foundation-model config has an unknown key or an invalid value."""


@dataclass
class SamTrainConfig:
    """Tiny SAM trained with point/box prompts on generated scenes."""

    arch: str = "tiny"                 # key of pseudo_ris.masks.sam.build_sam
    steps: int = 1500
    seed: int = 0
    batch_images: int = 8
    prompts_per_image: int = 8
    background_prob: float = 0.15      # points off every object: target empty mask, predicted IoU 0
    box_prob: float = 0.2              # box prompts (trained on the single-mask output)
    box_jitter: float = 0.1            # box corners moved by up to this fraction of the box side
    lr: float = 8e-4
    min_lr_frac: float = 0.05          # cosine decay ends at lr * min_lr_frac
    weight_decay: float = 0.01
    warmup_steps: int = 150
    balanced_bce_frac: float = 0.35    # first fraction of steps: class-balanced BCE + dice, then plain BCE + dice
    iou_loss_weight: float = 1.0
    grad_clip: float = 1.0
    checkpoint_every: int = 100
    stop_after: int | None = None      # stop early (export weights) after this many steps of the schedule
    scene: dict = field(default_factory=dict)  # overrides of the SynthRef scene config


#: the first stage of the shipped CoCa recipe: 1,500 steps from random init on crops of exact object masks (the keys
#: it sets differ from `CocaTrainConfig`'s defaults, the second stage; every other key is shared)
COCA_BASE_STAGE: dict[str, Any] = {"steps": 1500, "lr": 1e-3, "warmup_steps": 100, "sam_bank_share": 0.0, "init": {}}


@dataclass
class CocaTrainConfig:
    """Tiny CoCa trained on object crops with generic captions (the defaults: the shipped recipe, a fine-tune of
    `COCA_BASE_STAGE` in which half of every batch is cut from the shipped SAM's own masks)."""

    arch: str = "coca_tiny"            # project model config name for pseudo_ris.captioning.coca.load_coca
    steps: int = 1200
    seed: int = 0
    batch_size: int = 48
    objects_per_scene: int = 4         # crops drawn from one scene per batch slot group
    lr: float = 5e-4
    min_lr_frac: float = 0.05
    weight_decay: float = 0.05
    warmup_steps: int = 30
    caption_loss_weight: float = 1.0
    clip_loss_weight: float = 1.0
    prompt_text_prob: float = 0.3      # contrastive text rewritten as "a photo of a {phrase}" (the DoC prompt)
    sam_like_prob: float = 0.0         # crops cut from imperfect, SAM-like masks of the object (0: exact masks only)
    sam_bank_share: float = 0.5        # share of each batch cut from the shipped tiny SAM's own masks (sam_bank.py)
    sam_bank_scenes: int = 2000        # scenes the bank's masks come from (built once into <out>/sam_bank.npz)
    grad_clip: float = 1.0
    checkpoint_every: int = 100
    stop_after: int | None = None
    captions: dict = field(default_factory=dict)  # overrides of GenericCaptionConfig
    scene: dict = field(default_factory=dict)
    # fine-tuning: a parent recipe (CocaTrainConfig keys) trained first, into <out>/init-<its hash>; this run starts
    # from its weights and continues its scene stream after the parent's last step ({}: random init). Stored in full
    # (every key of the parent), so two spellings of one parent are one recipe with one hash.
    init: dict = field(default_factory=lambda: dict(COCA_BASE_STAGE))

    def __post_init__(self) -> None:
        if self.init:
            self.init = config_dict(make_config(CocaTrainConfig, self.init))
        if not 0.0 <= float(self.sam_bank_share) < 1.0:
            raise FoundationConfigError(f"coca.sam_bank_share must be in [0, 1), got {self.sam_bank_share}")
        if int(self.sam_bank_scenes) < 1:
            raise FoundationConfigError(f"coca.sam_bank_scenes must be >= 1, got {self.sam_bank_scenes}")


@dataclass
class ClipTrainConfig:
    """The CLIP stand-in (tiny CRIS's encoders, also a DoC scorer) trained contrastively on generated scenes."""

    arch: str = "clip_synthref"        # project open_clip config (pseudo_ris/configs)
    steps: int = 1200
    seed: int = 0
    batch_size: int = 32
    objects_per_scene: int = 4
    scene_prob: float = 0.25           # whole scenes (as CRIS sees them) besides object views
    lr: float = 1e-3
    min_lr_frac: float = 0.05
    weight_decay: float = 0.05
    warmup_steps: int = 100
    prompt_text_prob: float = 0.3      # text rewritten as the DoC prompt "a photo of a {phrase}"
    grad_clip: float = 1.0
    checkpoint_every: int = 100
    stop_after: int | None = None
    captions: dict = field(default_factory=dict)
    scene: dict = field(default_factory=dict)


@dataclass
class GenericCaptionConfig:
    """How generic (non-distinctive) captions are drawn: attributes kept independently of the scene."""

    size_prob: float = 0.3
    colour_prob: float = 0.4
    # template -> weight; {np} is the noun phrase "[size] [colour] shape"; every template keeps the shape as head noun
    templates: dict = field(default_factory=lambda: {
        "{a} {np}": 0.7,
        "the {np}": 0.15,
        "{a} {np} in the picture": 0.15,
    })


C = TypeVar("C")


def make_config(cls: type[C], cfg: Any = None, **overrides: Any) -> C:
    """Build ``cls`` from None / a dataclass / a mapping (DictConfig included), rejecting unknown keys by name."""
    if cfg is None:
        values: dict = {}
    elif dataclasses.is_dataclass(cfg):
        values = dataclasses.asdict(cfg)
    elif isinstance(cfg, Mapping) or hasattr(cfg, "items"):
        values = {str(k): _plain(v) for k, v in cfg.items()}
    else:
        raise FoundationConfigError(f"cannot build {cls.__name__} from {type(cfg).__name__}")
    values.update(overrides)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise FoundationConfigError(f"unknown {cls.__name__} key(s) {unknown}; known: {sorted(known)}")
    return cls(**values)


def config_dict(cfg: Any) -> dict:
    return json.loads(json.dumps(dataclasses.asdict(cfg), sort_keys=True))


def config_hash(cfg: Any, ignore: tuple[str, ...] = ("checkpoint_every", "stop_after")) -> str:
    """Stable short hash of a recipe; keys that do not change the trained weights are ignored."""
    values = {k: v for k, v in config_dict(cfg).items() if k not in ignore}
    return hashlib.sha1(json.dumps(values, sort_keys=True).encode()).hexdigest()[:12]
