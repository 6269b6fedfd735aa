"""CRIS-style referring segmentation network (Wang et al., "CRIS: CLIP-Driven Referring Image Segmentation", 2022).

CLIP ResNet image encoder + CLIP text encoder (open_clip) -> text-gated FPN neck (stride 16) -> vision-language
transformer decoder -> dynamic-conv projector: one logit map at stride 4, trained with binary cross-entropy.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ris_models.cris.decoder import DynamicConvProjector, VLDecoder
from ris_models.cris.encoders import ClipImageEncoder, ClipTextEncoder, create_clip
from ris_models.cris.neck import TextGatedFPN
from ris_models.registry import ModelConfigError, RISModel
from ris_models.text import ClipBpeTokenizer


class CRISModel(RISModel):
    """See module docstring; constructor arguments are the ``cris_*`` preset keys of ``ris_models.registry``."""

    model_type = "cris"

    def __init__(
        self,
        clip_arch: str = "RN50",
        pretrained: bool | str | None = None,
        clip_overrides: dict[str, Any] | None = None,
        word_len: int = 17,
        fpn_in: Sequence[int] = (512, 1024, 1024),
        fpn_out: Sequence[int] = (256, 512, 1024),
        vis_dim: int = 512,
        word_dim: int = 1024,
        num_layers: int = 3,
        num_head: int = 8,
        dim_ffn: int = 2048,
        dropout: float = 0.1,
        input_size: int = 416,
        image_mean: Sequence[float] = (0.48145466, 0.4578275, 0.40821073),
        image_std: Sequence[float] = (0.26862954, 0.26130258, 0.27577711),
        threshold: float = 0.35,
        backbone_lr_mult: float = 0.1,
        load_pretrained: bool = True,
        allow_download: bool = False,
    ) -> None:
        super().__init__()
        self._set_io(input_size=input_size, image_mean=image_mean, image_std=image_std, threshold=threshold,
                     backbone_lr_mult=backbone_lr_mult, stride_reason="ResNet stride")

        clip = create_clip(clip_arch, pretrained if load_pretrained else None, clip_overrides,
                           allow_download=allow_download)
        self.image_encoder = ClipImageEncoder(clip.visual)
        self.text_encoder = ClipTextEncoder(clip)
        del clip  # logit scale etc. are not used

        channels = self.image_encoder.channels
        if tuple(fpn_in) != channels:
            raise ModelConfigError(f"fpn_in={list(fpn_in)} but the CLIP {clip_arch} image tower gives {list(channels)}")
        if self.text_encoder.embed_dim != word_dim or word_dim != fpn_in[2]:
            raise ModelConfigError(
                f"word_dim={word_dim} must equal the CLIP sentence embedding ({self.text_encoder.embed_dim}) "
                f"and fpn_in[2]={fpn_in[2]}"
            )
        if fpn_out[1] != vis_dim:
            raise ModelConfigError(f"fpn_out[1]={fpn_out[1]} must equal vis_dim={vis_dim}")
        if word_len > self.text_encoder.context_length:
            raise ModelConfigError(f"word_len={word_len} exceeds CLIP's context length {self.text_encoder.context_length}")

        self.tokenizer = ClipBpeTokenizer(word_len)
        width = self.text_encoder.width
        # CRIS's words already have the decoder width (512); a projection keeps other sizes usable.
        self.word_proj = nn.Identity() if width == vis_dim else nn.Linear(width, vis_dim)
        self.neck = TextGatedFPN(fpn_in, fpn_out)
        self.decoder = VLDecoder(num_layers, vis_dim, num_head, dim_ffn, dropout)
        self.projector = DynamicConvProjector(word_dim, vis_dim)

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        return self.tokenizer(texts)

    def forward(self, images: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        words, sentence = self.text_encoder(input_ids, attention_mask)
        feats = self.image_encoder(images)
        fused = self.neck(feats, sentence)
        fused = self.decoder(fused, self.word_proj(words), attention_mask == 0)
        return self.projector(fused, sentence)

    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """BCE at the logits' resolution; the mask is downsampled with nearest neighbour (as CRIS does)."""
        target = (target.float() > 0.5).to(logits.dtype)
        if target.dim() == 3:
            target = target[:, None]
        if target.shape[-2:] != logits.shape[-2:]:
            target = F.interpolate(target, size=logits.shape[-2:], mode="nearest")
        return F.binary_cross_entropy_with_logits(logits, target)

    def foreground_prob(self, logits: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        prob = torch.sigmoid(logits.float())
        if size is not None and tuple(size) != tuple(prob.shape[-2:]):
            prob = F.interpolate(prob, size=tuple(size), mode="bilinear", align_corners=False)
        return prob[:, 0].clamp(0.0, 1.0)

    def backbone_parameters(self) -> list[nn.Parameter]:
        """CLIP's weights except its positional embeddings, which CRIS trains at the full rate (CRIS.pytorch
        model/__init__.py build_segmenter: backbone parameters whose name holds 'positional_embedding' go to the
        head group)."""
        named = list(self.image_encoder.named_parameters()) + list(self.text_encoder.named_parameters())
        return [p for name, p in named if "positional_embedding" not in name]
