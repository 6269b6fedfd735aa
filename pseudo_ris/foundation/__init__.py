"""SynthRef foundation models: the stand-ins for SAM and CoCa/CLIP that cannot be downloaded here.

- `train_sam(cfg) -> path`: tiny SAM from segment_anything's modules, prompts on generated scenes;
- `train_coca(cfg) -> path`: tiny open_clip CoCa on object crops with generic captions; its contrastive
  head is the CLIP scorer of DoC filtering;
- `train_clip(cfg) -> path`: the CLIP stand-in (the tiny CRIS's encoders, trained contrastively), also usable as
  the DoC scorer;
- `ensure_foundation_models(cache_dir, retrain=False) -> {"sam": path, "coca": path, "clip": path}`: the weights shipped in
  ``pseudo_ris/assets/foundation`` or, with ``retrain=True``, weights trained anew into ``cache_dir`` (cached by
  recipe hash, resumable);
- `evaluate_sam` / `evaluate_coca`: quality reports on held-out scenes.
"""

from __future__ import annotations

from .config import ClipTrainConfig, CocaTrainConfig, GenericCaptionConfig, SamTrainConfig
from .evaluate import evaluate_coca, evaluate_sam
from .registry import SHIPPED_DIR, ensure_foundation_models, shipped_paths
from .sam_training import train_sam


def train_coca(*args, **kwargs):
    """Lazy wrapper (the CoCa trainer imports open_clip)."""
    from .coca_training import train_coca as _train
    return _train(*args, **kwargs)


def train_clip(*args, **kwargs):
    """Lazy wrapper (the CLIP trainer imports open_clip)."""
    from .clip_training import train_clip as _train
    return _train(*args, **kwargs)


__all__ = ["ClipTrainConfig", "CocaTrainConfig", "GenericCaptionConfig", "SHIPPED_DIR", "SamTrainConfig", "ensure_foundation_models",
           "evaluate_coca", "evaluate_sam", "shipped_paths", "train_clip", "train_coca", "train_sam"]
