"""Recipes of the LAVT stand-ins (tiny Swin, tiny BERT) as plain dataclasses.

The defaults are the recipes of the files shipped in ``ris_models/assets/pretrained`` (the exact values are also
stored next to them); ``conf/foundation.yaml`` mirrors them for the command line and a test keeps the two in sync.
Building, hashing and validation reuse the foundation-model helpers (`pseudo_ris.foundation.config`).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class SwinPretrainConfig:
    """lavt_tiny's Swin trained to name the shape, colour and size of every object of a generated scene."""

    preset: str = "lavt_tiny"          # RIS preset whose Swin (patch embedding + stages) is trained
    steps: int = 1400
    seed: int = 0
    batch_scenes: int = 16             # whole scenes per step; every object of a scene is classified
    lr: float = 1e-3
    min_lr_frac: float = 0.05
    weight_decay: float = 0.05
    warmup_steps: int = 100
    grad_clip: float = 1.0
    checkpoint_every: int = 100
    stop_after: int | None = None      # stop early (weights exported) after this many steps of the schedule
    scene: dict = field(default_factory=dict)  # overrides of the SynthRef scene config


@dataclass
class BertPretrainConfig:
    """lavt_tiny's BERT trained with masked-language modelling on SynthRef-style referring expressions."""

    preset: str = "lavt_tiny"          # RIS preset whose BERT (config and WordPiece vocabulary) is trained
    steps: int = 1500
    seed: int = 0
    batch_size: int = 64               # expressions per step
    mask_prob: float = 0.15            # BERT: 15 % of the word pieces; of those 80 % [MASK], 10 % random, 10 % kept
    lr: float = 1e-3
    min_lr_frac: float = 0.05
    weight_decay: float = 0.01
    warmup_steps: int = 100
    grad_clip: float = 1.0
    checkpoint_every: int = 100
    stop_after: int | None = None
    scene: dict = field(default_factory=dict)
