"""Language-aware Swin encoder: timm's Swin stages with PWAM + language gate after each stage (LAVT Fig. 2).

Stage i: (patch merging) -> Swin blocks -> F_i; F_i' = PWAM(F_i, words) is normalised and handed to the decoder;
F_i + gate(F_i') * F_i' feeds stage i+1. Language is thus fused inside the encoder, not only at the end.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from ris_models.lavt.pwam import PWAM, LanguageGate
from pseudo_ris.data.errors import PseudoRISError
from pseudo_ris.data.safe_load import load_torch_file
from ris_models.registry import ModelConfigError


class LanguageAwareSwin(nn.Module):
    """Swin (timm modules) with per-stage pixel-word fusion; returns 4 maps [B, C*2^i, S/2^(i+2), S/2^(i+2)]."""

    def __init__(
        self,
        lang_dim: int,
        img_size: int = 480,
        embed_dim: int = 128,
        depths: Sequence[int] = (2, 2, 18, 2),
        num_heads: Sequence[int] = (4, 8, 16, 32),
        window_size: int = 12,
        mlp_ratio: float = 4.0,
        drop_path_rate: float = 0.3,
        pwam_heads: int = 1,
        pretrained: str | None = None,
    ) -> None:
        super().__init__()
        from timm.models.swin_transformer import SwinTransformer

        swin = SwinTransformer(
            img_size=img_size, patch_size=4, embed_dim=embed_dim, depths=tuple(depths), num_heads=tuple(num_heads),
            window_size=window_size, mlp_ratio=mlp_ratio, drop_path_rate=drop_path_rate, num_classes=0,
            strict_img_size=False,  # any multiple of 32 works (timm pads to whole windows)
        )
        if pretrained is not None:
            _load_swin_weights(swin, pretrained)
        self.patch_embed = swin.patch_embed
        self.stages = swin.layers
        dims = [embed_dim * 2**i for i in range(len(depths))]
        self.channels = tuple(dims)
        self.fusions = nn.ModuleList(PWAM(d, lang_dim, pwam_heads) for d in dims)
        # No gate after the last stage: nothing consumes its output (LAVT keeps one there and hence needs DDP's
        # find_unused_parameters).
        self.gates = nn.ModuleList(LanguageGate(d) for d in dims[:-1])
        self.out_norms = nn.ModuleList(nn.LayerNorm(d) for d in dims)

    def forward(self, images: torch.Tensor, words: torch.Tensor, word_mask: torch.Tensor) -> list[torch.Tensor]:
        x = self.patch_embed(images)  # [B,H,W,C] (timm's NHWC)
        outs = []
        for i, (stage, fusion, norm) in enumerate(zip(self.stages, self.fusions, self.out_norms)):
            x = stage(x)
            b, h, w, c = x.shape
            flat = x.reshape(b, h * w, c)
            fused = fusion(flat, words, word_mask)
            outs.append(norm(fused).reshape(b, h, w, c).permute(0, 3, 1, 2).contiguous())
            if i < len(self.gates):
                x = (flat + self.gates[i](fused)).reshape(b, h, w, c)
        return outs


def _load_swin_weights(swin: nn.Module, path: str) -> None:
    """Load an ImageNet Swin checkpoint (timm or original-Swin key names) from a local file; the head is ignored."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise ModelConfigError(
            f"Swin checkpoint file not found: {file} (LAVT initialises Swin-B from ImageNet-22K weights, e.g. "
            f"swin_base_patch4_window12_384_22k.pth; give its local path or swin_pretrained=None)"
        )
    try:
        state = load_torch_file(file, what="Swin checkpoint")
    except PseudoRISError as exc:
        raise ModelConfigError(str(exc)) from None
    for key in ("model", "state_dict"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    from timm.models.swin_transformer import checkpoint_filter_fn

    state = checkpoint_filter_fn(state, swin)
    state = {k: v for k, v in state.items() if not k.startswith("head")}
    missing, unexpected = swin.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith("head") and "relative_position_index" not in k
               and "attn_mask" not in k]
    if missing or unexpected:
        raise ModelConfigError(f"Swin checkpoint {file} does not match: missing {missing[:5]}, unexpected {unexpected[:5]}")
