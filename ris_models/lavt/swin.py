"""Swin Transformer stages that compute exactly what LAVT's backbone (Swin's detection/segmentation code) computes.

Why not timm's Swin: LAVT pads a feature map to whole windows *before* the cyclic shift and keeps window 12 and
shift 6 at every stage and input size, whatever the map size. timm shifts before padding and shrinks the window
(or drops the shift) when a map is not larger than the window; both agree only when the padding is zero or equals
the shift. At LAVT's 480 px input the stage-4 map is 15x15 (window 12: 9 rows of padding), where timm's blocks
give different features, and below 384 px timm's position tables change shape so LAVT weights no longer load.

Layout: ``[B, H, W, C]`` between modules; parameter names follow timm (``stages.i.downsample`` merges patches at the
start of stage i; the original Swin code does it at the end of stage i-1) so checkpoints keep their keys.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from timm.layers import DropPath, Mlp, trunc_normal_
from torch import nn


def relative_position_index(window: int) -> torch.Tensor:
    """Index of each (query, key) pair of a ``window x window`` window into the ``(2w-1)^2`` bias table."""
    coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window - 1)
    return rel[..., 0] * (2 * window - 1) + rel[..., 1]


def shift_mask(hp: int, wp: int, window: int, shift: int, device: torch.device | None = None) -> torch.Tensor:
    """Attention mask [nW, w*w, w*w] (0 or -100) of the shifted windows of a padded ``hp x wp`` map.

    After rolling by ``-shift``, the last window row/column holds pixels from three regions along each axis:
    ``[0, L-w)``, ``[L-w, L-shift)``, ``[L-shift, L)`` of the padded length L; pixels attend only within a region.
    """
    def regions(length: int) -> torch.Tensor:
        pos = torch.arange(length, device=device)
        return (pos >= length - window).long() + (pos >= length - shift).long()

    label = regions(hp)[:, None] * 3 + regions(wp)[None, :]  # [hp, wp]
    windows = label.reshape(hp // window, window, wp // window, window).transpose(1, 2).reshape(-1, window * window)
    diff = windows[:, None, :] != windows[:, :, None]
    return torch.zeros(diff.shape, device=device).masked_fill(diff, -100.0)


def window_partition(x: torch.Tensor, window: int) -> torch.Tensor:
    """[B, H, W, C] -> [B * nW, w*w, C] (row-major windows; H and W multiples of w)."""
    b, h, w, c = x.shape
    x = x.reshape(b, h // window, window, w // window, window, c).transpose(2, 3)
    return x.reshape(-1, window * window, c)


def window_reverse(windows: torch.Tensor, window: int, h: int, w: int) -> torch.Tensor:
    """Inverse of ``window_partition``: [B * nW, w*w, C] -> [B, H, W, C]."""
    c = windows.shape[-1]
    x = windows.reshape(-1, h // window, w // window, window, window, c).transpose(2, 3)
    return x.reshape(-1, h, w, c)


class WindowAttention(nn.Module):
    """Multi-head self-attention inside a window, with Swin's learned relative-position bias."""

    def __init__(self, dim: int, num_heads: int, window: int) -> None:
        super().__init__()
        self.num_heads, self.window = num_heads, window
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, num_heads))
        self.register_buffer("relative_position_index", relative_position_index(window), persistent=False)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """x [B * nW, N, C]; mask [nW, N, N] or None -> [B * nW, N, C]."""
        bw, n, c = x.shape
        q, k, v = self.qkv(x).reshape(bw, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        bias = self.relative_position_bias_table[self.relative_position_index.reshape(-1)]
        bias = bias.reshape(n, n, -1).permute(2, 0, 1).to(q.dtype)  # [heads, N, N]
        if mask is not None:
            nw = mask.shape[0]
            q, k, v = (t.reshape(bw // nw, nw, self.num_heads, n, -1) for t in (q, k, v))
            bias = bias[None] + mask[:, None].to(q.dtype)  # [nW, heads, N, N]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        return self.proj(out.reshape(bw, self.num_heads, n, -1).transpose(1, 2).reshape(bw, n, c))


class SwinBlock(nn.Module):
    """(Shifted-)window attention + MLP, both pre-norm residual. Pads to whole windows, *then* shifts."""

    def __init__(self, dim: int, num_heads: int, window: int, shift: int, mlp_ratio: float = 4.0,
                 drop_path: float = 0.0) -> None:
        super().__init__()
        if not 0 <= shift < window:
            raise ValueError(f"shift {shift} must be in [0, window {window})")
        self.window, self.shift = window, shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, num_heads, window)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """x [B, H, W, C]; ``mask``: ``shift_mask`` of the padded size (used only when this block shifts)."""
        b, h, w, c = x.shape
        y = self.norm1(x)
        pad_h, pad_w = (-h) % self.window, (-w) % self.window
        y = F.pad(y, (0, 0, 0, pad_w, 0, pad_h))  # zeros after norm1, right and bottom
        hp, wp = h + pad_h, w + pad_w
        if self.shift:
            y = torch.roll(y, shifts=(-self.shift, -self.shift), dims=(1, 2))
        y = self.attn(window_partition(y, self.window), mask if self.shift else None)
        y = window_reverse(y, self.window, hp, wp)
        if self.shift:
            y = torch.roll(y, shifts=(self.shift, self.shift), dims=(1, 2))
        x = x + self.drop_path(y[:, :h, :w, :])
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchMerging(nn.Module):
    """2x2 neighbourhoods concatenated (odd sizes zero-padded right/bottom), normalised, projected to 2C."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[1:3]
        x = F.pad(x, (0, 0, 0, w % 2, 0, h % 2))
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
        return self.reduction(self.norm(x))


class PatchEmbed(nn.Module):
    """Image -> [B, H/p, W/p, C]: zero-pad to a multiple of the patch, strided convolution, LayerNorm."""

    def __init__(self, dim: int, patch: int = 4, in_chans: int = 3) -> None:
        super().__init__()
        self.patch = patch
        self.proj = nn.Conv2d(in_chans, dim, patch, stride=patch)
        self.norm = nn.LayerNorm(dim)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        h, w = images.shape[-2:]
        images = F.pad(images, (0, (-w) % self.patch, 0, (-h) % self.patch))
        return self.norm(self.proj(images).permute(0, 2, 3, 1))


class SwinStage(nn.Module):
    """(Patch merging) + ``depth`` blocks alternating shift 0 and ``window // 2``, at any map size."""

    def __init__(self, dim: int, depth: int, num_heads: int, window: int, mlp_ratio: float,
                 drop_paths: Sequence[float], downsample: bool) -> None:
        super().__init__()
        self.window = window
        self.downsample = PatchMerging(dim // 2) if downsample else nn.Identity()
        self.blocks = nn.ModuleList(
            SwinBlock(dim, num_heads, window, 0 if j % 2 == 0 else window // 2, mlp_ratio, drop_paths[j])
            for j in range(depth))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x)
        h, w = x.shape[1:3]
        shift = self.window // 2
        mask = None
        if len(self.blocks) > 1 and shift:
            mask = shift_mask(h + (-h) % self.window, w + (-w) % self.window, self.window, shift, x.device)
        for block in self.blocks:
            x = block(x, mask)
        return x


def init_swin_weights(module: nn.Module) -> None:
    """Swin's initialisation: linear weights truncated normal (std 0.02) with zero bias, LayerNorm 1 / 0,
    position-bias tables truncated normal (std 0.02); the patch convolution keeps PyTorch's default."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, WindowAttention):
            trunc_normal_(m.relative_position_bias_table, std=0.02)


_BLOCK = re.compile(r"layers\.(\d+)\.blocks\.(\d+)\.(.+)")
_DOWN = re.compile(r"layers\.(\d+)\.downsample\.(.+)")


def original_swin_key(key: str, merge_at_end: bool = True) -> str | None:
    """Our name for a parameter of the original Swin code (``patch_embed.*``, ``layers.i.blocks.j.*``,
    ``layers.i.downsample.*``); None for anything else. ``merge_at_end``: the original layout, where stage i's
    ``downsample`` feeds stage i+1 (timm's own files already put it at the start of stage i: pass False)."""
    if key.startswith("patch_embed."):
        return key
    if m := _BLOCK.fullmatch(key):
        return f"stages.{m[1]}.blocks.{m[2]}.{m[3]}"
    if m := _DOWN.fullmatch(key):
        return f"stages.{int(m[1]) + int(merge_at_end)}.downsample.{m[2]}"
    return None
