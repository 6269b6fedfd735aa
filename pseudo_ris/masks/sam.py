"""SAM builders: the official ViT-H/L/B from a checkpoint, and small project configs built from the same modules.

The official names are built by `segment_anything.sam_model_registry` itself; we load their weights (CPU map, clear
errors on a missing or mismatched file). Why a config at all: `segment_anything.sam_model_registry` hard-codes 1024 px / patch 16 / prompt dim 256, which is
far too slow for the CPU-trained SynthRef foundation models. `SamConfig` exposes every size knob, the
`tiny` entry is the project default (ViT width 128, depth 4, patch 8, 128 px, prompt dim 64), and a checkpoint may
carry its own config so that a model trained with different sizes loads without code changes.

Usage::

    sam = build_sam("tiny")                                # random init (tests, before training)
    sam = build_sam("tiny", checkpoint="tiny_sam.pt")      # state dict, or {"model": sd, "config": {...}}
    sam = build_sam("vit_h", checkpoint="sam_vit_h_4b8939.pth")
    save_sam_checkpoint(sam, "tiny_sam.pt", config=SAM_CONFIGS["tiny"])
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable

import torch
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

from pseudo_ris.data.errors import PseudoRISError


class SamCheckpointError(PseudoRISError):
    """A SAM checkpoint is missing, unreadable or does not match the requested architecture."""


@dataclass(frozen=True)
class SamConfig:
    """Every architecture knob of SAM (defaults = the official ViT-B)."""

    encoder_embed_dim: int = 768
    encoder_depth: int = 12
    encoder_num_heads: int = 12
    encoder_global_attn_indexes: tuple[int, ...] = (2, 5, 8, 11)
    encoder_window_size: int = 14
    encoder_use_rel_pos: bool = True
    encoder_mlp_ratio: float = 4.0
    image_size: int = 1024
    patch_size: int = 16
    prompt_embed_dim: int = 256
    mask_in_chans: int = 16
    decoder_depth: int = 2
    decoder_mlp_dim: int = 2048
    decoder_num_heads: int = 8
    iou_head_depth: int = 3
    iou_head_hidden_dim: int = 256
    pixel_mean: tuple[float, float, float] = (123.675, 116.28, 103.53)
    pixel_std: tuple[float, float, float] = (58.395, 57.12, 57.375)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SamConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown SamConfig keys {sorted(unknown)}; known: {sorted(known)}")
        kw = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
        return cls(**kw)

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


SAM_CONFIGS: dict[str, SamConfig] = {
    "vit_h": SamConfig(encoder_embed_dim=1280, encoder_depth=32, encoder_num_heads=16,
                       encoder_global_attn_indexes=(7, 15, 23, 31)),
    "vit_l": SamConfig(encoder_embed_dim=1024, encoder_depth=24, encoder_num_heads=16,
                       encoder_global_attn_indexes=(5, 11, 17, 23)),
    "vit_b": SamConfig(),
    # Project config for SynthRef / tests: 16 x 16 tokens, global attention everywhere (window 0), ~1.1 M params.
    "tiny": SamConfig(encoder_embed_dim=128, encoder_depth=4, encoder_num_heads=4, encoder_global_attn_indexes=(),
                      encoder_window_size=0, encoder_use_rel_pos=True, image_size=128, patch_size=8,
                      prompt_embed_dim=64, mask_in_chans=16, decoder_depth=2, decoder_mlp_dim=256,
                      decoder_num_heads=4, iou_head_depth=3, iou_head_hidden_dim=64),
}

# Checkpoint is required for the official names: random-init ViT-H is never what a user wants.
_REQUIRES_CHECKPOINT = {"vit_h", "vit_l", "vit_b"}


def sam_from_config(cfg: SamConfig) -> Sam:
    """Assemble a randomly initialised `Sam` from segment_anything's own modules."""
    emb = cfg.image_size // cfg.patch_size
    sam = Sam(
        image_encoder=ImageEncoderViT(
            depth=cfg.encoder_depth,
            embed_dim=cfg.encoder_embed_dim,
            img_size=cfg.image_size,
            mlp_ratio=cfg.encoder_mlp_ratio,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            num_heads=cfg.encoder_num_heads,
            patch_size=cfg.patch_size,
            qkv_bias=True,
            use_rel_pos=cfg.encoder_use_rel_pos,
            global_attn_indexes=tuple(cfg.encoder_global_attn_indexes),
            window_size=cfg.encoder_window_size,
            out_chans=cfg.prompt_embed_dim,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=cfg.prompt_embed_dim,
            image_embedding_size=(emb, emb),
            input_image_size=(cfg.image_size, cfg.image_size),
            mask_in_chans=cfg.mask_in_chans,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(
                depth=cfg.decoder_depth,
                embedding_dim=cfg.prompt_embed_dim,
                mlp_dim=cfg.decoder_mlp_dim,
                num_heads=cfg.decoder_num_heads,
            ),
            transformer_dim=cfg.prompt_embed_dim,
            iou_head_depth=cfg.iou_head_depth,
            iou_head_hidden_dim=cfg.iou_head_hidden_dim,
        ),
        pixel_mean=list(cfg.pixel_mean),
        pixel_std=list(cfg.pixel_std),
    )
    return sam.eval()


def _registry_builder(name: str) -> Callable[..., Sam]:
    def build(checkpoint: str | os.PathLike | None = None, **overrides: Any) -> Sam:
        return build_sam(name, checkpoint=checkpoint, **overrides)
    build.__name__ = f"build_sam_{name}"
    return build


# Same shape as segment_anything.sam_model_registry: name -> builder(checkpoint=None).
sam_model_registry: dict[str, Callable[..., Sam]] = {name: _registry_builder(name) for name in SAM_CONFIGS}


def load_sam_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """Read a checkpoint: a bare state dict, or ``{"model": state_dict, "config": {...}}``."""
    path = Path(path)
    if not path.is_file():
        raise SamCheckpointError(f"SAM checkpoint not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt file, pickle of arbitrary objects, ...
        raise SamCheckpointError(f"cannot read SAM checkpoint {path}: {exc}") from exc
    if isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
        return obj["model"], obj.get("config")
    if isinstance(obj, dict) and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj, None
    raise SamCheckpointError(f"SAM checkpoint {path} is neither a state dict nor a dict with a 'model' key")


def build_sam(name: str = "tiny", checkpoint: str | os.PathLike | None = None, *,
              device: str | torch.device = "cpu", **overrides: Any) -> Sam:
    """Build SAM ``name`` (``vit_h|vit_l|vit_b|tiny``), optionally loading ``checkpoint``.

    ``overrides`` replace `SamConfig` fields of the named config. A checkpoint holding a ``"config"`` entry takes
    precedence over the named config (the trainer saved what it trained); explicit ``overrides`` still win.
    """
    if name not in SAM_CONFIGS:
        raise KeyError(f"unknown SAM model {name!r}; available: {sorted(SAM_CONFIGS)}")
    if checkpoint is None and name in _REQUIRES_CHECKPOINT:
        raise SamCheckpointError(f"SAM {name!r} needs a checkpoint path (the official .pth file)")
    cfg = SAM_CONFIGS[name]
    state = None
    if checkpoint is not None:
        state, saved_cfg = load_sam_checkpoint(checkpoint)
        if saved_cfg:
            cfg = SamConfig.from_dict({**cfg.to_dict(), **saved_cfg})
    if overrides:
        cfg = dataclasses.replace(cfg, **{k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()})
    if name in _REQUIRES_CHECKPOINT and cfg == SAM_CONFIGS[name]:
        # the official architecture exactly as segment_anything builds it (weights loaded below, with our checks)
        from segment_anything import sam_model_registry as official_registry

        sam = official_registry[name](checkpoint=None)
    else:
        sam = sam_from_config(cfg)
    if state is not None:
        try:
            sam.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            first = str(exc).splitlines()[0:6]
            raise SamCheckpointError(
                f"SAM checkpoint {checkpoint} does not match config {name!r} "
                f"({cfg.encoder_embed_dim=}, {cfg.encoder_depth=}, {cfg.image_size=}, {cfg.patch_size=}, "
                f"{cfg.prompt_embed_dim=}): " + " ".join(first)) from exc
    sam.config = cfg  # type: ignore[attr-defined]  # keep what was built, for saving
    return sam.to(device).eval()


def save_sam_checkpoint(sam: Sam, path: str | os.PathLike, config: SamConfig | None = None) -> Path:
    """Save ``{"model": state_dict, "config": ...}`` atomically, loadable by `build_sam(name, checkpoint=path)`."""
    import io

    from pseudo_ris.data.io import atomic_write_bytes

    cfg = config or getattr(sam, "config", None)
    buf = io.BytesIO()
    torch.save({"model": sam.state_dict(), "config": cfg.to_dict() if cfg is not None else None}, buf)
    return atomic_write_bytes(path, buf.getvalue())
