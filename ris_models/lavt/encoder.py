"""Language-aware Swin encoder: Swin stages with PWAM + language gate after each stage (LAVT Fig. 2).

Stage i: (patch merging) -> Swin blocks -> F_i; F_i' = PWAM(F_i, words) is normalised and handed to the decoder;
F_i + gate(F_i') * F_i' feeds stage i+1. Language is thus fused inside the encoder, not only at the end.
The Swin stages are ``ris_models.lavt.swin`` (LAVT's padding/shift behaviour at every input size).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from ris_models.lavt.pwam import PWAM, LanguageGate
from pseudo_ris.data.errors import PseudoRISError
from pseudo_ris.data.safe_load import load_torch_file
from ris_models.lavt.swin import PatchEmbed, SwinStage, init_swin_weights, original_swin_key
from ris_models.registry import ModelConfigError


class LanguageAwareSwin(nn.Module):
    """Swin with per-stage pixel-word fusion; returns 4 maps [B, C*2^i, S/2^(i+2), S/2^(i+2)] (any input side)."""

    def __init__(
        self,
        lang_dim: int,
        embed_dim: int = 128,
        depths: Sequence[int] = (2, 2, 18, 2),
        num_heads: Sequence[int] = (4, 8, 16, 32),
        window_size: int = 12,
        mlp_ratio: float = 4.0,
        drop_path_rate: float = 0.3,
        pwam_heads: int | Sequence[int] = 1,
        pretrained: str | None = None,
    ) -> None:
        super().__init__()
        dims = [embed_dim * 2**i for i in range(len(depths))]
        rates = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()  # stochastic depth grows
        starts = [sum(depths[:i]) for i in range(len(depths))]
        self.patch_embed = PatchEmbed(embed_dim)
        self.stages = nn.ModuleList(
            SwinStage(d, depth, heads, window_size, mlp_ratio, rates[s:s + depth], downsample=i > 0)
            for i, (d, depth, heads, s) in enumerate(zip(dims, depths, num_heads, starts)))
        self.channels = tuple(dims)
        heads = [pwam_heads] * len(dims) if isinstance(pwam_heads, int) else list(pwam_heads)
        self.fusions = nn.ModuleList(PWAM(d, lang_dim, h) for d, h in zip(dims, heads))
        # No gate after the last stage: nothing consumes its output (LAVT builds one there, never uses it, and hence
        # needs DDP's find_unused_parameters).
        self.gates = nn.ModuleList(LanguageGate(d) for d in dims[:-1])
        self.out_norms = nn.ModuleList(nn.LayerNorm(d) for d in dims)
        init_swin_weights(self.patch_embed)
        init_swin_weights(self.stages)
        if pretrained is not None:
            _load_swin_weights(self, pretrained)

    def forward(self, images: torch.Tensor, words: torch.Tensor, word_mask: torch.Tensor) -> list[torch.Tensor]:
        x = self.patch_embed(images)  # [B,H,W,C]
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


def _load_swin_weights(encoder: LanguageAwareSwin, path: str) -> None:
    """Load an ImageNet Swin checkpoint (original Swin or timm key names) into the Swin part of ``encoder``.

    As LAVT: the classifier head, the final norm and the constant buffers are not used; every Swin parameter
    must be filled with the right shape (a window-7 checkpoint does not fit window 12: use a window-12 one).
    """
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
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ModelConfigError(f"Swin checkpoint {file} holds no state dict")
    state = {k[len("backbone."):] if k.startswith("backbone.") else k: v for k, v in state.items()}
    merge_at_end = any(k.startswith("layers.0.downsample.") for k in state)  # original layout; timm's starts at 1
    ours = {k: v for k, v in encoder.state_dict().items() if k.startswith(("patch_embed.", "stages."))}
    mapped, unknown = {}, []
    for key, value in state.items():
        if key.startswith(("head.", "norm.")) or key.endswith(("relative_position_index", "attn_mask")):
            continue
        name = original_swin_key(key, merge_at_end)
        if name is None or name not in ours:
            unknown.append(key)
        elif tuple(value.shape) != tuple(ours[name].shape):
            raise ModelConfigError(f"Swin checkpoint {file}: {key} has shape {list(value.shape)}, our {name} "
                                   f"{list(ours[name].shape)} (window size / width must match the preset)")
        else:
            mapped[name] = value
    missing = sorted(set(ours) - set(mapped))
    if missing or unknown:
        raise ModelConfigError(f"Swin checkpoint {file} does not match: missing {missing[:5]}, unexpected {unknown[:5]}")
    encoder.load_state_dict(mapped, strict=False)
